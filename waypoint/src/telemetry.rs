//! Per-request telemetry: Istio's HTTP metrics with `reporter="waypoint"` (and its TCP
//! metrics for tunnels relayed at L4), one access-log
//! line per request (target `access`), and W3C trace-context propagation with a new span id
//! per hop. The labels are built with `mesh::telemetry`'s helpers, so they resolve exactly as
//! the agent's TCP metrics do.

mod body;
mod trace;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh::telemetry::{ConnectionLabels, Peer, Reporter, SecurityPolicy, ServiceRef};

pub use body::{Metered, RequestRecord};
/// Tunnels relayed at L4 report mesh's Istio TCP metrics as `reporter="waypoint"`.
pub use mesh::telemetry::{ConnGuard as TcpGuard, ConnectionLabels as TcpLabels, ConnectionMetrics as TcpMetrics};

/// The TCP label set of a tunnel the waypoint relays at L4.
pub fn tcp_labels(
    source: &mesh::telemetry::Peer,
    destination: &mesh::telemetry::Peer,
    service: Option<&mesh::telemetry::ServiceRef>,
) -> mesh::telemetry::ConnectionLabels {
    mesh::telemetry::ConnectionLabels::new(
        mesh::telemetry::Reporter::Waypoint,
        source,
        destination,
        service,
        mesh::telemetry::SecurityPolicy::MutualTls,
    )
}
pub use trace::{TraceContext, next_hop};

/// The `reporter` value of everything the waypoint reports.
pub const REPORTER: &str = "waypoint";

/// The client of a tunnel as Istio labels it: its workload when the model has one with that
/// identity, else just the identity and namespace.
pub fn source_peer(model: &mesh::model::Model, identity: Option<&mesh::Identity>) -> Peer {
    let Some(id) = identity else { return Peer::unknown() };
    let peer = match model.workloads().iter().find(|w| w.identity() == id) {
        Some(w) => Peer::workload(w.name(), w.namespace()).pod_labels(&w.labels),
        None => Peer { namespace: Some(id.namespace().to_owned()), ..Peer::unknown() },
    };
    peer.identity(id)
}

/// Istio's standard HTTP label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
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
    pub response_code: u16,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// gRPC's status (`0`–`16`) for gRPC requests; empty otherwise.
    pub grpc_response_status: String,
}

impl RequestLabels {
    pub fn new(
        source: &Peer,
        destination: &Peer,
        service: Option<&ServiceRef>,
        response_code: u16,
        flags: &str,
    ) -> Self {
        // ConnectionLabels applies Istio's defaults and escaping; the reporter is replaced.
        let c = ConnectionLabels::new(Reporter::Destination, source, destination, service, SecurityPolicy::MutualTls)
            .with_response_flags(flags);
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
            request_protocol: "http".to_owned(),
            response_code,
            response_flags: c.response_flags,
            connection_security_policy: c.connection_security_policy.as_str().to_owned(),
            grpc_response_status: String::new(),
        }
    }

    /// A gRPC request: `request_protocol="grpc"` and its status, when one came.
    pub fn grpc(mut self, status: Option<crate::grpc::GrpcStatus>) -> Self {
        self.request_protocol = "grpc".to_owned();
        self.grpc_response_status = status.map(|s| s.0.to_string()).unwrap_or_default();
        self
    }
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn bytes_histogram() -> Histogram {
    // 1 B to 1 GB by powers of ten, as Istio's size buckets.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 10.0, 10))
}

/// The four Istio HTTP families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
        }
    }
}

impl RequestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("istio_requests", "Requests served (Istio standard metric)", m.requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (Istio standard metric)",
            m.duration.clone(),
        );
        registry.register("istio_request_bytes", "Request body sizes (Istio standard metric)", m.request_bytes.clone());
        registry.register(
            "istio_response_bytes",
            "Response body sizes (Istio standard metric)",
            m.response_bytes.clone(),
        );
        m
    }

    pub fn record(&self, labels: &RequestLabels, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(duration_ms);
        self.request_bytes.get_or_create(labels).observe(request_bytes as f64);
        self.response_bytes.get_or_create(labels).observe(response_bytes as f64);
    }

    /// Requests counted with these labels (tests).
    pub fn requests(&self, labels: &RequestLabels) -> u64 {
        self.requests.get_or_create(labels).get()
    }
}
