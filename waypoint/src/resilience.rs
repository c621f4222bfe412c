//! Resilience per backend Service: retry policy and budget, circuit breaking and outlier
//! ejection. Time comes from `tokio::time::Instant` so tests run on paused time.

mod breaker;
mod budget;
mod outlier;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::{BreakerLimits, CircuitBreaker, Overflow, Permit};
pub use budget::{BudgetConfig, RetryBudget};
pub use outlier::{Outcome, OutlierConfig, OutlierDetector};

use crate::balance::{Balancer, LbPolicy};
use crate::grpc::GrpcStatus;
use crate::rng::Rng;
use crate::route::BackendRef;

/// Gateway API `retry`: how often and on what a request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Gateway API `attempts`).
    pub attempts: u32,
    /// Response codes that are retried. Connect failures and resets before the response
    /// started are always retried: the backend never produced an answer.
    pub codes: Vec<u16>,
    /// Base of the exponential backoff.
    pub backoff: Duration,
    /// gRPC statuses that are retried, when the backend answers with the status in the
    /// response headers (a trailers-only response, as every immediate gRPC error is): a
    /// status in trailers comes after the body has gone to the client.
    pub grpc: Vec<GrpcStatus>,
}

/// Cap of one backoff pause, as Envoy's default (10 × the base) but never more than this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Default for RetryPolicy {
    /// Istio's default for mesh traffic: 2 retries of 503, gRPC `cancelled` and
    /// `unavailable`, connect failures and resets, 25 ms base.
    fn default() -> Self {
        Self {
            attempts: 2,
            codes: vec![503],
            backoff: Duration::from_millis(25),
            grpc: vec![GrpcStatus::CANCELLED, GrpcStatus::UNAVAILABLE],
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): exponential in the retry number,
    /// capped, with "equal jitter" (half fixed, half random) so retries of many clients
    /// spread out yet never retry instantly.
    pub fn backoff_for(&self, retry: u32, rng: &Rng) -> Duration {
        let cap = (self.backoff * 10).min(MAX_BACKOFF);
        let exp = self.backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(cap);
        let half = exp / 2;
        let jitter_ns = half.as_nanos() as u64;
        half + Duration::from_nanos(if jitter_ns == 0 { 0 } else { rng.below(jitter_ns + 1) })
    }

    pub fn retries_code(&self, code: u16) -> bool {
        self.codes.contains(&code)
    }

    /// Whether a response (its code, or a trailers-only gRPC status) is retried.
    pub fn retries_response(&self, code: u16, headers: &http::HeaderMap) -> bool {
        self.retries_code(code) || GrpcStatus::of(headers).is_some_and(|s| self.grpc.contains(&s))
    }
}

/// Everything configured for one backend Service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendPolicy {
    pub limits: BreakerLimits,
    pub outlier: OutlierConfig,
    pub budget: BudgetConfig,
    pub pool: PoolSettings,
    pub lb: LbPolicy,
}

/// How pooled connections to a backend's endpoints are kept (DestinationRule
/// `connectionPool.http`); `None`: the waypoint's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PoolSettings {
    /// A connection is not reused after this many requests (1: no keep-alive).
    pub max_requests_per_connection: Option<u32>,
    /// An idle connection is closed after this long.
    pub idle_timeout: Option<Duration>,
}

/// Live state of one backend: its breaker, endpoint health and retry budget.
#[derive(Debug)]
pub struct BackendState {
    pub policy: BackendPolicy,
    pub breaker: CircuitBreaker,
    pub outlier: OutlierDetector,
    pub budget: RetryBudget,
    pub balancer: Arc<Balancer>,
}

impl BackendState {
    fn new(policy: BackendPolicy) -> Self {
        Self {
            breaker: CircuitBreaker::new(policy.limits),
            outlier: OutlierDetector::new(policy.outlier.clone()),
            budget: RetryBudget::new(policy.budget),
            balancer: Arc::default(),
            policy,
        }
    }
}

/// Backend states by Service port. A state survives reloads while its policy is unchanged,
/// so a config edit elsewhere does not forget which endpoints are ejected.
#[derive(Debug, Default)]
pub struct Backends {
    /// Keyed by backend and the client namespace its policy is scoped to (`None`: shared),
    /// so that one namespace's DestinationRule never trips another's breaker.
    states: Mutex<HashMap<ScopedBackend, Arc<BackendState>>>,
}

/// A backend and the client namespace its policy is scoped to.
type ScopedBackend = (BackendRef, Option<String>);

impl Backends {
    pub fn get(&self, backend: &BackendRef, scoped: &(BackendPolicy, Option<String>)) -> Arc<BackendState> {
        let (policy, scope) = scoped;
        let key = (backend.clone(), scope.clone());
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match states.get(&key) {
            Some(s) if &s.policy == policy => s.clone(),
            _ => {
                let s = Arc::new(BackendState::new(policy.clone()));
                states.insert(key, s.clone());
                s
            }
        }
    }
}
