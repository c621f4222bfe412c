//! What operators see of a proxy: Istio's TCP metrics, readiness, and the admin endpoints.
//!
//! Reusable parts only; the agent and the waypoint wire them:
//! - [`labels`]: Istio's standard TCP label set as a typed struct, built from plain workload facts.
//! - [`metrics`]: `istio_tcp_*` counters behind a per-connection [`ConnGuard`], and the agent's
//!   own `pillion_*` metrics.
//! - [`readiness`]: named conditions ("config", "kernel", …) that must all hold before
//!   `/healthz/ready` answers 200.
//! - [`logging`]: [`LogControl`], a reloadable `EnvFilter` for `/logging`.
//! - [`batched`]: [`BatchedWriter`], log lines written in batches by a thread of their own.
//! - [`dump`]: what `/config_dump` may show, including [`CertSummary`] (never key material).
//! - [`server`]: the three HTTP/1.1 servers (metrics :15020, readiness :15021, admin
//!   127.0.0.1:15000) with bounded input and graceful stop.
//!
//! Wiring, in the agent's `main`:
//!
//! ```no_run
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mesh::telemetry::{
//!     AdminEndpoint, AgentMetrics, ConnectionMetrics, HttpServer, LogControl, MetricsEndpoint,
//!     Readiness, ReadinessEndpoint,
//! };
//! use prometheus_client::registry::Registry;
//! use tokio_util::sync::CancellationToken;
//! use tracing_subscriber::prelude::*;
//!
//! // 1. Logging: the reloadable filter must be the first layer on the `Registry`.
//! let (filter, logs) = LogControl::new("info")?;
//! tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer()).init();
//!
//! // 2. Metrics: every subsystem registers into one registry, then it is frozen behind an Arc.
//! let mut registry = Registry::default();
//! let tcp = ConnectionMetrics::register(&mut registry);
//! let agent = AgentMetrics::register(&mut registry);
//! let registry = Arc::new(registry);
//!
//! // 3. Servers, all stopped by one token.
//! let ready = Readiness::new(["config", "kernel"]);
//! let stop = CancellationToken::new();
//! let dump = || serde_json::json!({ "workloads": [] });
//! HttpServer::bind("0.0.0.0:15020".parse()?, MetricsEndpoint::new(registry)).await?.spawn(stop.clone());
//! HttpServer::bind("0.0.0.0:15021".parse()?, ReadinessEndpoint::new(ready.clone())).await?.spawn(stop.clone());
//! HttpServer::bind("127.0.0.1:15000".parse()?, AdminEndpoint::new(dump, logs)).await?.spawn(stop.clone());
//! ready.set("config", true);
//! agent.enrolled_pods.set(3);
//! # let _ = tcp;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

pub mod batched;
pub mod dump;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod server;

pub use batched::{BatchedWriter, FlushGuard};
pub use dump::{CertSummary, ConfigDump};
pub use labels::{ConnectionLabels, Peer, Reporter, SecurityPolicy, ServiceRef, UNKNOWN};
pub use logging::LogControl;
pub use metrics::{AgentMetrics, ConnGuard, ConnectionMetrics, ReloadResult};
pub use readiness::Readiness;
pub use server::{AdminEndpoint, Endpoint, HttpServer, MetricsEndpoint, ReadinessEndpoint};

/// Errors of the telemetry servers and helpers.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "cannot listen on {addr}: {source}; another process (an old agent?) may hold the port, or use another address"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the {server} server must listen on loopback only, not {addr}: it can change log levels and shows configuration; use 127.0.0.1 or [::1]"
    )]
    NotLoopback { server: &'static str, addr: SocketAddr },
    #[error("log filter {filter:?} is invalid: {reason}; use directives like `info` or `info,access=warn,mesh=debug`")]
    LogFilter { filter: String, reason: String },
    #[error("the logging subscriber is gone, so levels cannot change: build it with LogControl::new's layer")]
    LogSubscriberGone,
    #[error("certificate is not parseable DER X.509 ({0}): pass the leaf of an issued chain")]
    Certificate(String),
}
