//! Which endpoint of a backend gets a request: first the closest ones when the Service asks
//! for it (`trafficDistribution`), then the DestinationRule's load balancer among them —
//! least request (Istio's default: the less busy of two random endpoints), round robin,
//! random, or a consistent hash of a header, cookie, query parameter or the client address.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mesh::model::{Locality, TrafficDistribution};

use crate::rng::Rng;

/// DestinationRule `trafficPolicy.loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LbPolicy {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    ConsistentHash(HashKey),
}

/// What a consistent hash is taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    QueryParameter(String),
    SourceIp,
}

impl HashKey {
    /// The request's hash, or `None` when it lacks the key (it is then balanced as by least
    /// request).
    pub fn of(&self, headers: &http::HeaderMap, uri: &http::Uri, client: SocketAddr) -> Option<u64> {
        let value: String = match self {
            Self::Header(h) => headers.get(h)?.to_str().ok()?.to_owned(),
            Self::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| c.trim().strip_prefix(name.as_str())?.strip_prefix('=').map(str::to_owned))?,
            Self::QueryParameter(name) => uri
                .query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix(name.as_str())?.strip_prefix('=').map(str::to_owned))?,
            Self::SourceIp => client.ip().to_canonical().to_string(),
        };
        Some(stable_hash(&value))
    }
}

/// A hash that every replica of the waypoint (same binary) computes alike.
fn stable_hash(v: &impl Hash) -> u64 {
    // `DefaultHasher::new()` has fixed keys, unlike `RandomState`'s.
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Where an endpoint (or the waypoint itself) runs.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub node: &'a str,
    pub locality: &'a Locality,
}

impl Place<'_> {
    fn same_zone(&self, other: &Place<'_>) -> bool {
        self.locality.zone.is_some()
            && self.locality.zone == other.locality.zone
            && (self.locality.region.is_none()
                || other.locality.region.is_none()
                || self.locality.region == other.locality.region)
    }

    fn same_region(&self, other: &Place<'_>) -> bool {
        self.locality.region.is_some() && self.locality.region == other.locality.region
    }

    /// Closeness to `me` under `d`: 0 is closest.
    fn tier(&self, me: &Place<'_>, d: TrafficDistribution) -> u8 {
        match d {
            TrafficDistribution::PreferSameNode if !me.node.is_empty() && self.node == me.node => 0,
            _ if self.same_zone(me) => 1,
            _ if self.same_region(me) => 2,
            _ => 3,
        }
    }
}

/// The candidates in the closest tier that has any (all of them when nothing is known).
pub fn closest<T: Copy>(candidates: &[(T, Place<'_>)], me: &Place<'_>, d: TrafficDistribution) -> Vec<T> {
    let best = candidates.iter().map(|(_, p)| p.tier(me, d)).min().unwrap_or(3);
    candidates.iter().filter(|(_, p)| p.tier(me, d) == best).map(|(t, _)| *t).collect()
}

/// A backend's balancing state: requests in flight per endpoint, and the round-robin turn.
#[derive(Debug, Default)]
pub struct Balancer {
    inflight: Mutex<HashMap<SocketAddr, usize>>,
    turn: AtomicUsize,
}

impl Balancer {
    /// Picks one of `candidates` (not empty). `hash`: the request's consistent-hash key.
    pub fn pick(&self, policy: &LbPolicy, candidates: &[SocketAddr], hash: Option<u64>, rng: &Rng) -> SocketAddr {
        let random = || candidates[rng.below(candidates.len() as u64) as usize];
        match (policy, hash) {
            // Rendezvous hashing: each key goes to the endpoint that scores it highest, so
            // an endpoint coming or going moves only its own share of keys.
            (LbPolicy::ConsistentHash(_), Some(h)) => {
                *candidates.iter().max_by_key(|a| stable_hash(&(h, *a))).expect("candidates are not empty")
            }
            (LbPolicy::RoundRobin, _) => {
                let mut sorted = candidates.to_vec();
                sorted.sort();
                sorted[self.turn.fetch_add(1, Ordering::Relaxed) % sorted.len()]
            }
            (LbPolicy::Random, _) => random(),
            // Least request (and a hash without its key): the less busy of two random picks.
            _ => {
                let (a, b) = (random(), random());
                let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                let busy = |x: &SocketAddr| inflight.get(x).copied().unwrap_or(0);
                if busy(&b) < busy(&a) { b } else { a }
            }
        }
    }

    /// Counts a request in flight to `addr` until the guard drops.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> InFlight {
        *self.inflight.lock().unwrap_or_else(|e| e.into_inner()).entry(addr).or_default() += 1;
        InFlight { balancer: self.clone(), addr }
    }

    #[cfg(test)]
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.inflight.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }
}

/// One request in flight to one endpoint.
#[derive(Debug)]
pub struct InFlight {
    balancer: Arc<Balancer>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inflight = self.balancer.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = inflight.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                inflight.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests;
