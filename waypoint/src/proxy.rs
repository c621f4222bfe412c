//! The L7 proxy core: per request, resolve the Service the tunnel was opened for, authorize,
//! route, apply filters, then forward with retries, timeouts, circuit breaking and outlier
//! ejection. It talks to endpoints only through [`Upstream`], so tests script the backends
//! and run without TLS.

pub mod budget;
mod deadline;
mod filters;
mod forward;
pub mod replay;
mod respond;
mod serve;
#[cfg(test)]
mod tests;
mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::model::Model;
use mesh::parse::Host;
use mesh::{Authority, Identity};
use tokio::time::Instant;

pub use budget::{BodyBudget, Exhausted};
pub use replay::{DEFAULT_RETRY_BUFFER, Replay, ReplayBody};
pub use respond::ResponseFlags;
pub use serve::{ServeLimits, serve_http};

use crate::authz::{self, Decision, RequestAttrs};
use crate::config::L7Config;
use crate::resilience::Backends;
use crate::rng::Rng;
use crate::route::{Filter, ServiceKey};
use crate::telemetry::{Metered, RequestMetrics, RequestRecord, TraceContext};
use crate::upstream::{BoxError, ResponseBody, Upstream};

/// A request body that makes no progress for this long is cut (408), so a stalled sender
/// does not hold a stream, an upstream connection and its buffer for ever.
pub const DEFAULT_BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a tunnel to a port of undeclared protocol has to show its first bytes (Istio's
/// former default `protocolDetectionTimeout`); silence means a server-first protocol: L4.
pub const DEFAULT_DETECTION_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
/// Istio's cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// The configuration in force: the mesh model and the L7 objects, swapped together.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub model: Arc<Model>,
    pub l7: Arc<L7Config>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The waypoint's own Service (`namespace/name`): policies with `targetRefs` kind
    /// `Gateway` of this name bind here.
    pub waypoint: ServiceKey,
    /// Bytes of each request body kept so that it can be retried or mirrored.
    pub retry_buffer: usize,
    /// Bounds the bytes kept for retries in all and per client identity.
    pub body_budget: Arc<BodyBudget>,
    /// A request body idle for this long is cut.
    pub body_idle_timeout: std::time::Duration,
    pub domain: String,
    /// The waypoint's own workload (`namespace`, `name`): where it runs, for endpoints
    /// chosen by closeness.
    pub workload: Option<(String, String)>,
    /// How long a tunnel to a port of undeclared protocol may take to show its first bytes.
    pub detection_window: std::time::Duration,
}

impl ProxyConfig {
    pub fn new(waypoint: ServiceKey) -> Self {
        Self {
            waypoint,
            retry_buffer: DEFAULT_RETRY_BUFFER,
            body_budget: BodyBudget::new(budget::DEFAULT_TOTAL, budget::DEFAULT_PER_PEER),
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            domain: DEFAULT_DOMAIN.into(),
            workload: None,
            detection_window: DEFAULT_DETECTION_WINDOW,
        }
    }
}

/// Who opened the tunnel a request arrived on, and for what.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's verified identity (its HBONE certificate).
    pub peer_identity: Option<Identity>,
    pub peer_addr: SocketAddr,
    /// The CONNECT `:authority`: `<service>.<ns>.svc.<domain>:<port>` or `VIP:port`.
    pub target: Authority,
}

pub struct Proxy {
    config: ProxyConfig,
    snapshot: RwLock<Arc<Snapshot>>,
    upstream: Arc<dyn Upstream>,
    backends: Backends,
    rng: Rng,
    metrics: Option<RequestMetrics>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, snapshot: Snapshot, upstream: Arc<dyn Upstream>) -> Self {
        Self {
            config,
            snapshot: RwLock::new(Arc::new(snapshot)),
            upstream,
            backends: Backends::default(),
            rng: Rng::from_entropy(),
            metrics: None,
        }
    }

    /// Fixed random choices (weights, jitter, faults) for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Rng::new(seed);
        self
    }

    pub fn with_metrics(mut self, metrics: RequestMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Replaces the configuration; requests in flight finish on the one they started with.
    pub fn update(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The waypoint's own workload in this snapshot.
    pub(crate) fn me<'a>(&self, snapshot: &'a Snapshot) -> Option<&'a mesh::model::Workload> {
        let (ns, name) = self.config.workload.as_ref()?;
        snapshot.model.workload(ns, name)
    }

    /// The Service (and port) a tunnel target names.
    pub fn resolve_service(&self, snapshot: &Snapshot, target: &Authority) -> Option<(ServiceKey, u16)> {
        match &target.host {
            Host::Ip(ip) => {
                let t = snapshot.model.service_by_vip(SocketAddr::new(*ip, target.port))?;
                Some((ServiceKey::new(&t.service.namespace, &t.service.name), target.port))
            }
            Host::Name(name) => {
                let mut parts = name.split('.');
                let (svc, ns) = (parts.next()?, parts.next()?);
                let rest: Vec<&str> = parts.collect();
                let domain_ok = rest.is_empty() || rest.join(".") == format!("svc.{}", self.config.domain);
                let s = snapshot.model.service(ns, svc).filter(|_| domain_ok)?;
                s.port(target.port)?;
                Some((ServiceKey::new(ns, svc), target.port))
            }
        }
    }

    /// How a tunnel from a client of namespace `client` for `service:port` is served: by
    /// the HTTP proxy when HTTPRoutes for that client attach to it, or L7 policy binds to it
    /// and the port is HTTP ([`port_protocol`]); when such policy binds to a port whose
    /// protocol nothing declares, its first bytes decide ([`Handling::Detect`]). Anything
    /// else is relayed at L4 (after the L4 reading of the same policies, in `hbone`), so
    /// non-HTTP protocols keep working through a waypoint that has policies.
    pub fn handling(&self, snapshot: &Snapshot, service: &ServiceKey, port: u16, client: Option<&str>) -> Handling {
        if snapshot.l7.routes.has_routes(service, port, client) {
            return Handling::Http;
        }
        if !authz::any_applies(&snapshot.l7.authz, &self.config.waypoint, service) {
            return Handling::L4;
        }
        let protocol = snapshot
            .model
            .service(&service.namespace, &service.name)
            .and_then(|s| s.port(port))
            .map_or(PortProtocol::Unknown, port_protocol);
        match protocol {
            PortProtocol::Http => Handling::Http,
            PortProtocol::Opaque => Handling::L4,
            PortProtocol::Unknown => Handling::Detect,
        }
    }

    /// Serves one request that arrived on a tunnel from `down`.
    pub async fn handle<B>(self: &Arc<Self>, down: &Downstream, request: Request<B>) -> Response<Metered>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let snapshot = self.snapshot();
        let (mut parts, body) = request.into_parts();
        let upgrade = upgrade::requested(&mut parts);
        let trace = crate::telemetry::next_hop(&mut parts.headers, &self.rng);
        forward::append_forwarded_for(&mut parts.headers, down.peer_addr.ip());
        // Policy, routes and the backend see one spelling of the path (see `normalize`).
        let normalized = normalize_uri(&mut parts.uri);
        let mut ctx = respond::Context::new(self, &snapshot, down, &parts, start, trace);
        if let Err(e) = normalized {
            tracing::debug!(error = %e, "request path refused");
            return ctx.local(StatusCode::BAD_REQUEST, ResponseFlags::NONE, "malformed request path");
        }
        let Some((service, port)) = self.resolve_service(&snapshot, &down.target) else {
            return ctx.local(StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::NO_ROUTE, "no such service");
        };
        ctx.set_service(&self.config.domain, &service);
        let client = ctx.client_namespace.clone();
        let principal = down.peer_identity.as_ref().map(|i| i.as_str().trim_start_matches("spiffe://").to_owned());
        let source_ns = down.peer_identity.as_ref().map(|i| i.namespace().to_owned());
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
            .map(crate::normalize::host);
        let attrs = RequestAttrs {
            principal: principal.as_deref(),
            source_namespace: source_ns.as_deref(),
            method: parts.method.as_str(),
            path: parts.uri.path(),
            host: host.as_deref().unwrap_or(""),
            port,
            headers: &parts.headers,
        };
        match authz::authorize(&snapshot.l7.authz, &self.config.waypoint, &service, &attrs) {
            Decision::Allow => {}
            Decision::Denied(p) => {
                tracing::debug!(policy = %p, "request denied by L7 policy");
                return ctx.local(StatusCode::FORBIDDEN, ResponseFlags::NONE, "RBAC: access denied");
            }
            Decision::NotAllowed => {
                return ctx.local(StatusCode::FORBIDDEN, ResponseFlags::NONE, "RBAC: access denied");
            }
        }

        let default_rule;
        let (rule, matched) = if snapshot.l7.routes.has_routes(&service, port, client.as_deref()) {
            match snapshot.l7.routes.select(&service, port, client.as_deref(), &parts) {
                Some(s) => (s.rule, s.matched),
                None => return ctx.local(StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE, "no route matched"),
            }
        } else {
            default_rule = forward::default_rule(&service);
            (&default_rule, None)
        };
        ctx.route = rule.route.clone();

        // The backend is chosen before the body is read so that its breaker is consulted
        // first: a request that would overflow it reads no body at all.
        let chosen = forward::pick_backend(&rule.backends, &self.rng);
        if let Some(c) = chosen {
            let scoped = snapshot.l7.scoped_backend_policy(&c.backend.service, client.as_deref());
            if self.backends.get(&c.backend, &scoped).breaker.would_overflow() {
                return ctx.local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::UPSTREAM_OVERFLOW,
                    "upstream overflow",
                );
            }
        }
        // The body streams to the backend as it arrives (only for a request that is allowed
        // and routed), its first bytes kept for retries and mirrors within the budgets.
        // A gRPC client's `grpc-timeout` bounds the request too (Istio leaves Envoy's
        // `max_grpc_timeout` at the route's timeout, so the sooner one wins).
        let grpc_deadline = ctx.grpc.then(|| crate::grpc::timeout(&parts.headers)).flatten();
        let deadline = match (rule.timeouts.request, grpc_deadline) {
            (Some(a), Some(b)) => Some(start + a.min(b)),
            (a, b) => a.or(b).map(|t| start + t),
        };
        let peer =
            down.peer_identity.as_ref().map_or_else(|| down.peer_addr.ip().to_string(), |i| i.as_str().to_owned());
        let body = Replay::new(
            body.map_err(Into::into).boxed_unsync(),
            self.config.retry_buffer,
            self.config.body_budget.reservation(&peer),
            self.config.body_idle_timeout,
            ctx.request_bytes.clone(),
        );

        let filters: Vec<&Filter> = rule.filters.iter().collect();
        if let Some(done) = self.request_filters(&mut ctx, &filters, &mut parts, matched, &body, port).await {
            return done;
        }
        let Some(chosen) = chosen else {
            return ctx.local(StatusCode::INTERNAL_SERVER_ERROR, ResponseFlags::NO_ROUTE, "route has no backend");
        };
        let backend_filters: Vec<&Filter> = chosen.filters.iter().collect();
        if let Some(done) = self.request_filters(&mut ctx, &backend_filters, &mut parts, matched, &body, port).await {
            return done;
        }
        let to = forward::To { backend: &chosen.backend, port, upgrade: upgrade.as_ref() };
        let result = self.forward(&mut ctx, &snapshot, rule, to, parts, &body, trace, deadline).await;
        // The response head is here (or none will come): retries are over.
        body.close_retries();
        let (mut response, flags) = match result {
            Ok(r) => r,
            Err((status, flags, msg)) => return ctx.local(status, flags, msg),
        };
        for f in rule.filters.iter().chain(&chosen.filters) {
            if let Filter::ResponseHeaders(m) = f {
                m.apply(response.headers_mut());
            }
        }
        if let Some(up) = upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            return upgrade::relay(&ctx, up, response, flags);
        }
        ctx.finish_with_flags(response, flags)
    }
}

/// Replaces the URI's path by its normalised form, keeping the query.
fn normalize_uri(uri: &mut http::Uri) -> Result<(), crate::normalize::PathError> {
    if uri.path().is_empty() {
        // Authority-form (CONNECT): no path to judge.
        return Ok(());
    }
    let path = crate::normalize::path(uri.path())?;
    if path == uri.path() {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| crate::normalize::PathError::BadEscape)?);
    *uri = http::Uri::from_parts(parts).map_err(|_| crate::normalize::PathError::BadEscape)?;
    Ok(())
}

/// How the waypoint serves a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Http,
    /// The first bytes decide (`hbone::sniff`).
    Detect,
    L4,
}

/// A Service port's protocol as Istio selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    Http,
    /// Declared as something else (`tcp`, `tls`, `https`, `mongo`, …).
    Opaque,
    /// Nothing says: detected from the first bytes.
    Unknown,
}

/// `appProtocol` when set (`http`, `http2`, `grpc`, `grpc-web`, `h2c`, `kubernetes.io/h2c`,
/// … are HTTP; any other value is not), otherwise the port name's prefix (`<protocol>[-…]`);
/// a name Istio does not recognise leaves the protocol to detection.
pub fn port_protocol(port: &mesh::model::ServicePort) -> PortProtocol {
    if let Some(p) = &port.app_protocol {
        return if is_http_protocol(p.strip_prefix("kubernetes.io/").unwrap_or(p)) {
            PortProtocol::Http
        } else {
            PortProtocol::Opaque
        };
    }
    if is_http_port_name(&port.name) {
        return PortProtocol::Http;
    }
    let name = port.name.to_ascii_lowercase();
    let prefix = name.split('-').next().unwrap_or("");
    if ["tcp", "tls", "https", "mongo", "mysql", "redis", "udp"].contains(&prefix) {
        PortProtocol::Opaque
    } else {
        PortProtocol::Unknown
    }
}

fn is_http_protocol(p: &str) -> bool {
    ["http", "http2", "grpc", "grpc-web", "h2c", "ws"].iter().any(|h| p.eq_ignore_ascii_case(h))
}

/// Istio's protocol selection by port name.
pub fn is_http_port_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["http", "http2", "grpc", "grpc-web", "h2c"]
        .iter()
        .any(|p| name == *p || name.strip_prefix(p).is_some_and(|rest| rest.starts_with('-')))
}

/// A small local response body.
pub(crate) fn text_body(msg: &'static str) -> ResponseBody {
    Full::new(Bytes::from_static(msg.as_bytes())).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) type Trace = TraceContext;
pub(crate) type Record = RequestRecord;

pub(crate) use forward::{EndpointInfo, endpoints};

impl Proxy {
    /// An endpoint for an L4 pass-through tunnel: random among those not ejected.
    pub(crate) fn pick_endpoint(
        &self,
        snapshot: &Snapshot,
        service: &ServiceKey,
        port: u16,
        client: Option<&str>,
    ) -> Option<EndpointInfo> {
        let backend = crate::route::BackendRef { service: service.clone(), port: None };
        let all = endpoints(snapshot, &backend, port);
        if all.is_empty() {
            return None;
        }
        let state = self.backends.get(&backend, &snapshot.l7.scoped_backend_policy(service, client));
        let addrs: Vec<SocketAddr> = all.iter().map(|e| e.addr).collect();
        let available = state.outlier.available(&addrs);
        let spread = forward::distribution(snapshot, &backend);
        let me = spread.and_then(|_| self.me(snapshot));
        let me = me.map(|w| crate::balance::Place { node: &w.node, locality: &w.locality });
        let available = forward::nearby(&available, &all, me, spread);
        let addr = available[self.rng.below(available.len() as u64) as usize];
        all.into_iter().find(|e| e.addr == addr)
    }
}
