//! The binary's wiring: read the configuration (the file or the Kubernetes API: model +
//! L7 objects), get the waypoint's certificate from the CA, serve HBONE, forward through
//! the pool, follow changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mesh::ca::{CaArgs, WithoutCa};
use mesh::certs::{CertManager, CertManagerConfig, CertMetrics};
use mesh::hbone::{DirectTcpDialer, HboneServer, Pool, PoolConfig};
use mesh::model::{Model, WaypointRef};
use mesh::telemetry::{HttpServer, MetricsEndpoint, Readiness, ReadinessEndpoint};
use tokio_util::sync::CancellationToken;

use crate::hbone::{WaypointDialer, WaypointHook};
use crate::proxy::{Proxy, ProxyConfig};
use crate::route::ServiceKey;
pub use crate::source::load;
use crate::source::{Follow, SELF_WAIT};
use crate::telemetry::{RequestMetrics, TcpMetrics};
use crate::upstream::HboneUpstream;
use mesh::limits::{ConnLimit, PerSourceLimit};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The YAML config file (the same one the agents read), with the L7 objects.
    #[arg(long, env = "PILLION_CONFIG", required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    pub config: Option<PathBuf>,
    /// Take the model and the L7 objects (HTTPRoute, AuthorizationPolicy,
    /// DestinationRule, XBackendTrafficPolicy, FaultInjection) from the Kubernetes API.
    #[arg(long, env = "PILLION_KUBERNETES")]
    pub kubernetes: bool,
    /// Where the waypoint's certificate comes from: `--ca-address` (a CA server; the
    /// waypoint asks for its own identity with its own token) or `--ca-dir` (the embedded
    /// CA's files, shared with the agents). One of them is required.
    #[command(flatten)]
    pub ca: CaArgs,
    /// The waypoint's Workload name in the config: its identity is the waypoint's.
    #[arg(long, env = "POD_NAME")]
    pub name: String,
    /// The namespace of the waypoint's Workload and Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The waypoint's Service (what `istio.io/use-waypoint` names); default: the Service
    /// whose endpoints include this workload.
    #[arg(long)]
    pub waypoint_service: Option<String>,
    /// Where HBONE is served (no root needed: the port is above 1024).
    #[arg(long, default_value = "[::]:15008")]
    pub listen: SocketAddr,
    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, default_value = "[::]:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,
    /// The cluster's DNS domain: service hosts are `<name>.<ns>.svc.<domain>`.
    #[arg(long, default_value = crate::proxy::DEFAULT_DOMAIN)]
    pub cluster_domain: String,
    /// On SIGTERM/SIGINT: how long open tunnels may take to finish after the listener closes
    /// and clients are told to go away (GOAWAY).
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub drain_timeout: Duration,
    /// Worker threads: 1 (the default) runs every task on one thread — no cross-thread
    /// wake-ups, 20–30 % less CPU per request here (waypoint/README.md, "Threads"); 0 one per
    /// core; more, that many. Scale past a core with replicas (the HPA) or this flag.
    #[arg(long, env = "PILLION_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// The endpoints' HBONE port (only tests change it).
    #[arg(long, default_value_t = mesh::hbone::HBONE_PORT)]
    pub hbone_port: u16,
    /// Bytes of each request body kept so that it can be retried or mirrored (Envoy's
    /// per-request buffer limit). Bodies stream whatever their size; a larger one is not
    /// retried (flag RBO) nor mirrored.
    #[arg(long, env = "PILLION_RETRY_BUFFER_BYTES", default_value_t = crate::proxy::DEFAULT_RETRY_BUFFER)]
    pub retry_buffer_bytes: usize,
    /// Bytes of request bodies kept for retries at once, in all; past it bodies still stream
    /// but are not kept (not retried).
    #[arg(long, env = "PILLION_MAX_BUFFERED_BYTES", default_value_t = crate::proxy::budget::DEFAULT_TOTAL)]
    pub max_buffered_bytes: usize,
    /// The same bound for one client identity.
    #[arg(long, env = "PILLION_MAX_BUFFERED_BYTES_PER_PEER", default_value_t = crate::proxy::budget::DEFAULT_PER_PEER)]
    pub max_buffered_bytes_per_peer: usize,
    /// How long a tunnel to a port whose protocol nothing declares may take to show its
    /// first bytes (HTTP method or HTTP/2 preface → HTTP; anything else or silence → L4).
    #[arg(long, default_value = "100ms", value_parser = crate::config::parse_duration)]
    pub protocol_detection_timeout: Duration,
    /// A request body that makes no progress for this long is cut (408).
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    pub body_idle_timeout: Duration,
    /// TLS handshakes in progress at once on 15008; the excess is closed at once.
    #[arg(long, env = "PILLION_MAX_HBONE_HANDSHAKES", default_value_t = DEFAULT_MAX_HBONE_HANDSHAKES)]
    pub max_hbone_handshakes: usize,
    /// HBONE connections held at once (agents pool one per source pod and identity, so a
    /// waypoint sees many more than a pod does).
    #[arg(long, env = "PILLION_MAX_HBONE_CONNECTIONS", default_value_t = DEFAULT_MAX_HBONE_CONNECTIONS)]
    pub max_hbone_connections: usize,
    /// An HBONE connection with no open tunnel for this long is closed.
    #[arg(long, default_value = "120s", value_parser = crate::config::parse_duration)]
    pub hbone_idle_timeout: Duration,
}

/// A waypoint serves the whole namespace's clients: higher caps than a pod's.
pub const DEFAULT_MAX_HBONE_HANDSHAKES: usize = 256;
pub const DEFAULT_MAX_HBONE_CONNECTIONS: usize = 16_384;

/// The waypoint's own Service: named, or the one whose endpoints include the workload.
pub fn waypoint_service(
    model: &Model,
    namespace: &str,
    workload: &str,
    named: Option<&str>,
) -> anyhow::Result<ServiceKey> {
    if let Some(name) = named {
        model
            .service(namespace, name)
            .with_context(|| format!("--waypoint-service {namespace}/{name} is not in the config"))?;
        return Ok(ServiceKey::new(namespace, name));
    }
    model
        .services()
        .iter()
        .filter(|s| s.namespace == namespace)
        .find(|s| {
            let r = WaypointRef { namespace: s.namespace.clone(), name: s.name.clone() };
            model.waypoint_workloads(&r).any(|w| w.name() == workload)
        })
        .map(|s| ServiceKey::new(&s.namespace, &s.name))
        .with_context(|| format!("no Service in {namespace} selects workload {workload}: add the waypoint's Service or pass --waypoint-service"))
}

/// HTTP/2 receive windows of the waypoint's HBONE server (per stream, per connection).
/// Bytes a peer sends ahead of what the HTTP side has read wait in these windows, outside
/// the body budget: smaller than the agents' (4 / 16 MiB) so that a pod's stalled uploads
/// hold at most 4 MiB per connection here, still 10 GB/s per stream at a 100 µs RTT.
const RECEIVE_WINDOWS: (u32, u32) = (1024 * 1024, 4 * 1024 * 1024);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (snapshot, follow, origin) = match &args.config {
        Some(path) => {
            let snapshot = load(path, 1).with_context(|| format!("loading {}", path.display()))?;
            (snapshot, Follow::File(path.clone()), path.display().to_string())
        }
        None => {
            let named = args.waypoint_service.as_deref();
            let client = crate::source::kube_client().await?;
            let (source, snapshot) =
                crate::source::start_kube(client, &args.namespace, &args.name, named, SELF_WAIT).await?;
            (snapshot, Follow::Kube(source), "the cluster".to_owned())
        }
    };
    let Some(workload) = snapshot.model.workload(&args.namespace, &args.name) else {
        bail!(
            "workload {}/{} is not in {origin}: add the waypoint's Workload or fix --name/--namespace",
            args.namespace,
            args.name,
        );
    };
    let identity = workload.identity().clone();
    let waypoint = waypoint_service(&snapshot.model, &args.namespace, &args.name, args.waypoint_service.as_deref())?;
    let trust_domain = snapshot.model.mesh().trust_domain.clone();
    tracing::info!(%identity, %waypoint, listen = %args.listen, "starting pillion-waypoint");

    let stop = CancellationToken::new();
    let readiness = Readiness::new(["certificate", "serving"]);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RequestMetrics::register(&mut registry);
    let tcp_metrics = TcpMetrics::register(&mut registry);
    let cert_metrics = CertMetrics::register(&mut registry);
    let limit_metrics = mesh::limits::LimitMetrics::register(&mut registry);
    HttpServer::bind(args.readiness_addr, ReadinessEndpoint::new(readiness.clone())).await?.spawn(stop.clone());
    HttpServer::bind(args.metrics_addr, MetricsEndpoint::new(Arc::new(registry))).await?.spawn(stop.clone());

    // The waypoint asks for its own identity only: a CA grants that to any caller.
    let ca = args.ca.source(&trust_domain, false, WithoutCa::Refuse)?;
    let certs = CertManager::new(ca, CertManagerConfig::default(), cert_metrics);
    certs.fetch(&identity).await.context("issuing the waypoint's certificate")?;
    readiness.set("certificate", true);

    let pool = Pool::new(PoolConfig::default(), DirectTcpDialer, Arc::new(certs.clone()));
    let mut upstream = HboneUpstream::new(pool, identity.clone(), format!("{}/{}", args.namespace, args.name));
    upstream.hbone_port = args.hbone_port;
    let mut config = ProxyConfig::new(waypoint);
    config.workload = Some((args.namespace.clone(), args.name.clone()));
    config.detection_window = args.protocol_detection_timeout;
    config.domain = args.cluster_domain.clone();
    config.body_budget = crate::proxy::BodyBudget::new(args.max_buffered_bytes, args.max_buffered_bytes_per_peer);
    config.body_idle_timeout = args.body_idle_timeout;
    config.retry_buffer = args.retry_buffer_bytes;
    let proxy = Arc::new(Proxy::new(config, snapshot, Arc::new(upstream.clone())).with_metrics(metrics));
    let hook = WaypointHook { proxy: proxy.clone() };
    let mut dialer = WaypointDialer::new(proxy.clone(), upstream);
    dialer.tcp_metrics = Some(tcp_metrics);
    let tunnels = dialer.tunnels.clone();
    let me = format!("{}/{}", args.namespace, args.name);
    let server = HboneServer::builder((certs.clone(), identity), hook, dialer)
        .handshake_limit(ConnLimit::new("hbone_handshakes", me.clone(), args.max_hbone_handshakes, &limit_metrics))
        .per_source_handshake_limit(PerSourceLimit::new(
            "hbone_handshakes_per_source",
            mesh::hbone::per_source_share(args.max_hbone_handshakes),
            &limit_metrics,
        ))
        .connection_limit(ConnLimit::new("hbone_connections", me, args.max_hbone_connections, &limit_metrics))
        .idle_timeout(args.hbone_idle_timeout)
        .receive_windows(RECEIVE_WINDOWS.0, RECEIVE_WINDOWS.1)
        .build();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}: is another waypoint or agent using the port?", args.listen))?;
    tokio::spawn(server.serve(listener, stop.clone()));
    follow.spawn(proxy, stop.clone());
    readiness.set("serving", true);
    tracing::info!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    // Not ready, no new connections, GOAWAY on the open ones; then let tunnels finish.
    readiness.set("serving", false);
    stop.cancel();
    tunnels.close();
    if tokio::time::timeout(args.drain_timeout, tunnels.wait()).await.is_err() {
        tracing::warn!(open = tunnels.len(), "drain timeout reached; closing the remaining tunnels");
    }
    tracing::info!("stopped");
    Ok(())
}
