//! Outlier ejection (Istio `outlierDetection`): an endpoint that answers
//! `consecutive_5xx` 5xx in a row (connect failures and resets count, as Envoy counts them
//! when local and upstream errors are not split) — or `consecutive_gateway` 502/503/504 in a
//! row — is taken out of rotation for `base_ejection × times ejected`, capped, so a flapping
//! endpoint stays out longer each time. At most `max_ejection_percent` of the endpoints are
//! ejected at once (at least one); if every endpoint is ejected, all are used again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// `None` disables 5xx-based ejection (Istio: `consecutive5xxErrors: 0`).
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: f64,
}

impl Default for OutlierConfig {
    /// Envoy's defaults: 5 consecutive 5xx, 30 s base ejection, 10% of endpoints, 300 s cap.
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10.0,
        }
    }
}

/// What one attempt told us about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Status(u16),
    /// Connect failure or reset before a response: counted as a gateway error.
    LocalFailure,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    endpoints: Mutex<HashMap<SocketAddr, Health>>,
}

impl OutlierDetector {
    pub fn new(config: OutlierConfig) -> Self {
        Self { config, endpoints: Mutex::default() }
    }

    /// The endpoints not currently ejected (all of them if none is left).
    pub fn available(&self, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut state = self.lock();
        let ok: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|e| {
                let Some(h) = state.get_mut(e) else { return true };
                match h.ejected_until {
                    Some(t) if t > now => false,
                    Some(_) => {
                        h.ejected_until = None;
                        true
                    }
                    None => true,
                }
            })
            .collect();
        if ok.is_empty() { endpoints.to_vec() } else { ok }
    }

    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        let now = Instant::now();
        self.lock().get(&endpoint).and_then(|h| h.ejected_until).is_some_and(|t| t > now)
    }

    /// Records an attempt's outcome; returns the ejection time if this ejected the endpoint.
    pub fn record(&self, endpoint: SocketAddr, outcome: Outcome, endpoint_count: usize) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let ejected_now = state.values().filter(|h| h.ejected_until.is_some_and(|t| t > now)).count();
        let h = state.entry(endpoint).or_default();
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Success => (false, false),
            Outcome::Status(c) => (c >= 500, matches!(c, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        h.consecutive_5xx = if is_5xx { h.consecutive_5xx + 1 } else { 0 };
        h.consecutive_gateway = if is_gateway { h.consecutive_gateway + 1 } else { 0 };
        if h.ejected_until.is_some_and(|t| t > now) {
            return None;
        }
        let tripped = self.config.consecutive_5xx.is_some_and(|n| n > 0 && h.consecutive_5xx >= n)
            || self.config.consecutive_gateway.is_some_and(|n| n > 0 && h.consecutive_gateway >= n);
        let max_ejected = ((endpoint_count as f64 * self.config.max_ejection_percent / 100.0).floor() as usize).max(1);
        if !tripped || ejected_now >= max_ejected {
            return None;
        }
        h.times_ejected += 1;
        let time = self.config.base_ejection.saturating_mul(h.times_ejected).min(self.config.max_ejection);
        h.ejected_until = Some(now + time);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        tracing::info!(%endpoint, ejection_ms = time.as_millis() as u64, "endpoint ejected as an outlier");
        Some(time)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Health>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }
}
