//! Istio's TCP metrics for tunnels the waypoint relays at L4, with `reporter="waypoint"`.
//! Bytes follow Istio's direction: `received` is what the client sent toward the
//! destination, `sent` what came back.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use mesh::telemetry::{ConnectionLabels, Peer, Reporter, SecurityPolicy, ServiceRef};

use super::REPORTER;

/// Istio's TCP label set with the waypoint as reporter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl TcpLabels {
    pub fn new(source: &Peer, destination: &Peer, service: Option<&ServiceRef>) -> Self {
        // ConnectionLabels applies Istio's defaults and escaping; the reporter is replaced.
        let c = ConnectionLabels::new(Reporter::Destination, source, destination, service, SecurityPolicy::MutualTls);
        Self {
            reporter: REPORTER.to_owned(),
            source_workload: c.source_workload,
            source_canonical_service: c.source_canonical_service,
            source_canonical_revision: c.source_canonical_revision,
            source_workload_namespace: c.source_workload_namespace,
            source_principal: c.source_principal,
            source_app: c.source_app,
            source_version: c.source_version,
            source_cluster: c.source_cluster,
            destination_service: c.destination_service,
            destination_service_namespace: c.destination_service_namespace,
            destination_service_name: c.destination_service_name,
            destination_workload: c.destination_workload,
            destination_canonical_service: c.destination_canonical_service,
            destination_canonical_revision: c.destination_canonical_revision,
            destination_workload_namespace: c.destination_workload_namespace,
            destination_principal: c.destination_principal,
            destination_app: c.destination_app,
            destination_version: c.destination_version,
            destination_cluster: c.destination_cluster,
            request_protocol: c.request_protocol,
            response_flags: c.response_flags,
            connection_security_policy: c.connection_security_policy.as_str().to_owned(),
        }
    }
}

/// The four `istio_tcp_*` families. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
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
            "Bytes sent back to the source (Istio standard metric)",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the source (Istio standard metric)",
            m.received.clone(),
        );
        m
    }

    /// Counts a connection as opened; the guard counts its bytes and, when dropped, its close.
    pub fn open(&self, labels: &TcpLabels) -> TcpGuard {
        self.opened.get_or_create(labels).inc();
        TcpGuard {
            sent: self.sent.get_or_create(labels).clone(),
            received: self.received.get_or_create(labels).clone(),
            closed: self.closed.get_or_create(labels).clone(),
        }
    }

    /// Values for one label set (tests): (opened, closed, received, sent).
    pub fn values(&self, labels: &TcpLabels) -> (u64, u64, u64, u64) {
        (
            self.opened.get_or_create(labels).get(),
            self.closed.get_or_create(labels).get(),
            self.received.get_or_create(labels).get(),
            self.sent.get_or_create(labels).get(),
        )
    }
}

#[derive(Debug)]
pub struct TcpGuard {
    sent: Counter,
    received: Counter,
    closed: Counter,
}

impl TcpGuard {
    pub fn add_sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    pub fn add_received(&self, n: u64) {
        self.received.inc_by(n);
    }
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.closed.inc();
    }
}
