//! Istio's TCP connection metrics and the agent's own `pillion_*` metrics.
//!
//! prometheus-client encodes OpenMetrics, where a counter family is declared without its
//! `_total` suffix and each sample carries it. So the families are registered as
//! `istio_tcp_connections_opened` etc., and scrapers see `istio_tcp_connections_opened_total`,
//! the name Istio's dashboards query.
//!
//! Byte direction follows Istio, not the reporting proxy's socket: `received` counts bytes
//! the source sent toward the destination (the request direction) and `sent` counts bytes
//! the destination sent back (the response), whichever side reports.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::ConnectionLabels;

/// The four `istio_tcp_*` counter families. Cheap to clone (shared internals).
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
}

impl ConnectionMetrics {
    /// Registers at the registry's top level: Istio's names carry no Pillion prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened (Istio standard metric)",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed (Istio standard metric)",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent by the destination to the source, i.e. the response direction (Istio standard metric)",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the source by the destination, i.e. the request direction (Istio standard metric)",
            m.received.clone(),
        );
        m
    }

    /// Counts a connection as opened and returns the guard that counts its bytes and its close.
    ///
    /// Resolves the labelled counters once here, so per-read accounting on the guard is a
    /// single atomic add with no map lookup. Series are never removed (as in Istio): label
    /// values must come from the workload model, never from raw client input.
    pub fn open(&self, labels: ConnectionLabels) -> ConnGuard {
        self.opened.get_or_create(&labels).inc();
        ConnGuard {
            sent: self.sent.get_or_create_owned(&labels),
            received: self.received.get_or_create_owned(&labels),
            closed: self.closed.get_or_create_owned(&labels),
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
        }
    }

    /// Current values for one label set: (opened, closed, received, sent).
    pub fn values(&self, labels: &ConnectionLabels) -> (u64, u64, u64, u64) {
        (
            self.opened.get_or_create(labels).get(),
            self.closed.get_or_create(labels).get(),
            self.received.get_or_create(labels).get(),
            self.sent.get_or_create(labels).get(),
        )
    }
}

/// One open connection. Share it between the two copy directions by reference (it is `Sync`);
/// dropping it counts the close.
///
/// Bytes go to the exported counters as they are added, so a long-lived connection's traffic
/// shows in `/metrics` while it runs, not only when it closes.
#[derive(Debug)]
pub struct ConnGuard {
    sent: Counter,
    received: Counter,
    closed: Counter,
    sent_total: AtomicU64,
    received_total: AtomicU64,
}

impl ConnGuard {
    /// Bytes the destination sent toward the source (the response direction).
    pub fn add_sent(&self, bytes: u64) {
        if bytes > 0 {
            self.sent.inc_by(bytes);
            self.sent_total.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes the source sent toward the destination (the request direction).
    pub fn add_received(&self, bytes: u64) {
        if bytes > 0 {
            self.received.inc_by(bytes);
            self.received_total.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// This connection's response-direction bytes so far (for the access log).
    pub fn sent(&self) -> u64 {
        self.sent_total.load(Ordering::Relaxed)
    }

    /// This connection's request-direction bytes so far (for the access log).
    pub fn received(&self) -> u64 {
        self.received_total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

/// Outcome label of `pillion_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Success,
    /// The new configuration was rejected and the last good one stays in force.
    Rejected,
}

impl prometheus_client::encoding::EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            ReloadResult::Success => "success",
            ReloadResult::Rejected => "rejected",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// The agent's own metrics, under the `pillion_` prefix. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    config_reloads: Family<ReloadLabels, Counter>,
    /// Pods currently enrolled on this node.
    pub enrolled_pods: Gauge,
    /// HBONE connections currently held by the outbound pool.
    pub hbone_pool_connections: Gauge,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("pillion");
        sub.register(
            "config_reloads",
            "Configuration reloads by result; rejected ones keep the last good configuration",
            m.config_reloads.clone(),
        );
        sub.register("enrolled_pods", "Pods enrolled on this node", m.enrolled_pods.clone());
        sub.register(
            "hbone_pool_connections",
            "HBONE connections held open by the outbound pool",
            m.hbone_pool_connections.clone(),
        );
        // Both results exist from the start so `rate()` and alerts see a zero, not a gap.
        for result in [ReloadResult::Success, ReloadResult::Rejected] {
            let _ = m.config_reloads.get_or_create(&ReloadLabels { result });
        }
        m
    }

    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::labels::{Peer, Reporter, SecurityPolicy};

    #[test]
    fn guard_is_shareable_between_copy_directions() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ConnGuard>();
    }

    #[test]
    fn hostile_label_values_cannot_forge_series() {
        let mut registry = Registry::default();
        let tcp = ConnectionMetrics::register(&mut registry);
        let src = Peer::workload("x\"} 1\nforged_total{a=\"b", "default");
        let guard =
            tcp.open(ConnectionLabels::new(Reporter::Source, &src, &Peer::unknown(), None, SecurityPolicy::Unknown));
        guard.add_sent(5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("forged_total")), "{text}");
        let opened = text.lines().filter(|l| l.starts_with("istio_tcp_connections_opened_total{")).count();
        assert_eq!(opened, 1, "{text}");
    }
}
