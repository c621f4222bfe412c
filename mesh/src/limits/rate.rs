//! A token bucket per peer address: `burst` requests at once, refilled at `per_second`. Used
//! where every request costs someone else work (the CA: a TokenReview on the API server).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

/// Peers tracked at most; past it, full (idle) buckets are forgotten first, so memory stays
/// bounded while anyone over the limit stays remembered.
const MAX_PEERS: usize = 16_384;

#[derive(Debug)]
pub struct PeerRateLimit {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PeerRateLimit {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self { burst: f64::from(burst.max(1)), per_second, buckets: Mutex::default() }
    }

    /// Whether `peer` may make a request now (takes a token if so). Requests without a known
    /// peer share one bucket rather than going unlimited.
    pub fn admit(&self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_PEERS && !buckets.contains_key(&peer) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
        }
        let bucket = buckets.entry(peer).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst)
    }
}
