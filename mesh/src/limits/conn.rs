//! A cap on things held at once (connections, handshakes, tunnels), refusing the excess at
//! once instead of queueing it: a queue would only move the exhaustion somewhere less visible.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::LogGate;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit refused: `hbone_handshakes`, `hbone_connections`, `pod_connections`, …
    pub limit: String,
}

/// `pillion_limit_refusals_total{limit}`: connections or tunnels refused because a cap was
/// reached. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct LimitMetrics {
    refusals: Family<LimitLabels, Counter>,
}

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("pillion").register(
            "limit_refusals",
            "Connections or tunnels refused because a configured cap was reached",
            m.refusals.clone(),
        );
        m
    }

    /// The counter of one limit (created at zero, so alerts see it before the first refusal).
    pub fn counter(&self, limit: &str) -> Counter {
        self.refusals.get_or_create(&LimitLabels { limit: limit.to_owned() }).clone()
    }
}

/// At most `max` holders at once. Cloning shares the cap (one cap over several listeners).
#[derive(Debug, Clone)]
pub struct ConnLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    /// Whose cap this is, for the log line (a pod, a server).
    owner: String,
    max: usize,
    slots: Arc<Semaphore>,
    refused: Counter,
    log: LogGate,
}

impl ConnLimit {
    /// `name` is the metric label and says what is counted; `owner` whose cap it is.
    pub fn new(name: &'static str, owner: impl Into<String>, max: usize, metrics: &LimitMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                owner: owner.into(),
                max,
                slots: Arc::new(Semaphore::new(max)),
                refused: metrics.counter(name),
                log: LogGate::default(),
            }),
        }
    }

    /// A slot held until the permit is dropped, or `None` at the cap (counted and logged).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        let inner = &self.inner;
        match inner.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                inner.refused.inc();
                if let Some(skipped) = inner.log.admit() {
                    tracing::warn!(
                        limit = inner.name, owner = %inner.owner, max = inner.max, skipped,
                        "limit reached: refusing a connection (raise it if this load is legitimate)"
                    );
                }
                None
            }
        }
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }
}
