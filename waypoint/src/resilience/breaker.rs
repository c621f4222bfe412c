//! Circuit breaking per backend, with the limits of Istio's `connectionPool`: at most
//! `max_requests` in flight (`http2MaxRequests`) over at most `max_connections` tunnels
//! (`tcp.maxConnections`; the waypoint opens one tunnel per request), and at most
//! `max_pending` waiting for a slot (`http1MaxPendingRequests`). Beyond that the request
//! fails fast with 503 (`UO`) instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests: usize,
}

impl Default for BreakerLimits {
    /// Envoy's defaults.
    fn default() -> Self {
        Self { max_connections: 1024, max_pending: 1024, max_requests: 1024 }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    slots: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
}

/// Holds one in-flight slot until dropped.
#[derive(Debug)]
pub struct Permit(#[expect(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backend overflow: too many requests in flight and waiting; raise connectionPool limits or add capacity")]
pub struct Overflow;

impl CircuitBreaker {
    pub fn new(limits: BreakerLimits) -> Self {
        let slots = limits.max_connections.min(limits.max_requests).max(1);
        Self { slots: Arc::new(Semaphore::new(slots)), pending: AtomicUsize::new(0), max_pending: limits.max_pending }
    }

    /// A slot now, or after waiting in the bounded pending queue.
    pub async fn acquire(&self) -> Result<Permit, Overflow> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit(p));
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        let p = self.slots.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        p.map(Permit).map_err(|_| Overflow)
    }

    /// Whether a request arriving now would be refused: no free slot and the pending queue
    /// full. Asked before a request's body is buffered.
    pub fn would_overflow(&self) -> bool {
        self.slots.available_permits() == 0 && self.pending.load(Ordering::Acquire) >= self.max_pending
    }

    pub fn in_flight(&self, limits: &BreakerLimits) -> usize {
        limits.max_connections.min(limits.max_requests).max(1) - self.slots.available_permits()
    }
}
