//! The waypoint's side of HBONE: which tunnels it accepts ([`WaypointHook`]) and what it
//! connects them to ([`WaypointDialer`]) — the HTTP proxy through an in-memory pipe when the
//! Service has routes or L7 policy, otherwise straight to an endpoint (L4 pass-through).
//! Tunnels addressed to a workload (`podIP:port`, as agents send pod-direct traffic for a
//! waypoint-guarded workload) are relayed at L4 to that workload. Every tunnel relayed at L4
//! is first judged by the policies bound to the waypoint and to the destination's Services,
//! read at L4 as Istio's waypoint reads them for TCP (`authz::authorize_conn`).

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use mesh::Authority;
use mesh::hbone::{Accepted, ConnectHook, ConnectRequest, Refusal, Tunnel, UpstreamDialer};
use mesh::model::WaypointRef;
use mesh::telemetry::{Peer, ServiceRef};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::authz;
use crate::proxy::{Downstream, EndpointInfo, Handling, Proxy, ServeLimits, Snapshot, serve_http};
use crate::route::ServiceKey;
use crate::telemetry::{TcpGuard, TcpLabels, TcpMetrics, tcp_labels};
use crate::upstream::{HboneUpstream, Target, forwarded_for};

#[cfg(test)]
mod tests;

pub mod sniff;

/// Bytes buffered between the tunnel and the HTTP server per direction.
const PIPE_BUFFER: usize = 64 * 1024;

/// Where an accepted tunnel leads.
enum Destination {
    /// A Service (by host name or VIP) and the port addressed.
    Service(ServiceKey, u16),
    /// A workload addressed directly (`podIP:port`), whose waypoint we are: relayed at L4.
    Workload(Box<EndpointInfo>),
}

/// The tunnel's destination, if it is one that uses this waypoint (never an open proxy).
fn destination(proxy: &Proxy, snapshot: &Snapshot, target: &Authority) -> Result<Destination, Refusal> {
    let me = &proxy.config().waypoint;
    let ours = WaypointRef { namespace: me.namespace.clone(), name: me.name.clone() };
    if let Some((service, port)) = proxy.resolve_service(snapshot, target) {
        let uses_us = snapshot
            .model
            .service(&service.namespace, &service.name)
            .is_some_and(|s| s.waypoint.as_ref() == Some(&ours));
        return if uses_us {
            Ok(Destination::Service(service, port))
        } else {
            Err(Refusal::BadTarget(format!("service {service} does not use waypoint {ours}")))
        };
    }
    if let Some(addr) = target.socket_addr()
        && let Some(w) = snapshot.model.workload_by_ip(addr.ip())
    {
        return if w.waypoint.as_ref() == Some(&ours) {
            Ok(Destination::Workload(Box::new(EndpointInfo {
                addr,
                identity: w.identity().clone(),
                peer: Peer::workload(w.name(), w.namespace()).pod_labels(&w.labels).identity(w.identity()),
                hbone: w.in_mesh(),
                node: w.node.clone(),
                locality: w.locality.clone(),
            })))
        } else {
            Err(Refusal::BadTarget(format!("workload {}/{} does not use waypoint {ours}", w.namespace(), w.name())))
        };
    }
    Err(Refusal::BadTarget(format!("{target} is neither a service nor a workload this waypoint knows")))
}

/// How a tunnel is served: by the HTTP proxy (judged per request), or relayed at L4 once
/// the L4 reading of the policies allowed it (nothing is relayed unjudged).
enum Plan {
    Http,
    L4(Relay),
    /// The first bytes decide: HTTP, or the L4 relay (already judged: its verdict here).
    Detect(Result<Relay, Refusal>),
}

/// An L4 relay the policies allowed.
struct Relay {
    to: Box<EndpointInfo>,
    service: Option<ServiceKey>,
}

/// Where the tunnel goes and how, with the policy verdict for L4 relays taken.
fn plan(proxy: &Proxy, snapshot: &Snapshot, request: &ConnectRequest) -> Result<Plan, Refusal> {
    let source_ns = request.peer_identity.namespace();
    match destination(proxy, snapshot, &request.target)? {
        Destination::Service(service, port) => match proxy.handling(snapshot, &service, port, Some(source_ns)) {
            Handling::Http => Ok(Plan::Http),
            // The tunnel is accepted either way; a relay the policies refuse is cut once
            // the bytes say it is not HTTP.
            Handling::Detect => Ok(Plan::Detect(service_l4(proxy, snapshot, request, service, port))),
            Handling::L4 => service_l4(proxy, snapshot, request, service, port).map(Plan::L4),
        },
        Destination::Workload(ep) => {
            let port = ep.addr.port();
            l4(proxy, snapshot, request, ep, None, port).map(Plan::L4)
        }
    }
}

/// An L4 relay to one of the Service's endpoints, if the policies allow it.
fn service_l4(
    proxy: &Proxy,
    snapshot: &Snapshot,
    request: &ConnectRequest,
    service: ServiceKey,
    port: u16,
) -> Result<Relay, Refusal> {
    let source_ns = request.peer_identity.namespace();
    let ep = proxy
        .pick_endpoint(snapshot, &service, port, Some(source_ns))
        .ok_or_else(|| Refusal::Unavailable(format!("service {service} has no endpoints")))?;
    l4(proxy, snapshot, request, Box::new(ep), Some(service), port)
}

/// The L4 reading of the policies for a relay to `to`.
fn l4(
    proxy: &Proxy,
    snapshot: &Snapshot,
    request: &ConnectRequest,
    to: Box<EndpointInfo>,
    service: Option<ServiceKey>,
    port: u16,
) -> Result<Relay, Refusal> {
    let source_ns = request.peer_identity.namespace();
    // Policies bound to a Service apply to its workloads addressed directly too.
    let services: Vec<ServiceKey> = match &service {
        Some(s) => vec![s.clone()],
        None => snapshot
            .model
            .workload_by_ip(to.addr.ip())
            .map(|w| {
                snapshot
                    .model
                    .services()
                    .iter()
                    .filter(|s| s.selects(w))
                    .map(|s| ServiceKey::new(&s.namespace, &s.name))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let principal = request.peer_identity.as_str().trim_start_matches("spiffe://");
    let conn = authz::ConnAttrs { principal: Some(principal), source_namespace: Some(source_ns), port };
    match authz::authorize_conn(&snapshot.l7.authz, &proxy.config().waypoint, &services, &conn) {
        authz::Decision::Allow => Ok(Relay { to, service }),
        authz::Decision::Denied(p) => Err(Refusal::Denied(format!("denied by policy {p}"))),
        authz::Decision::NotAllowed => Err(Refusal::Denied("no ALLOW policy matched".into())),
    }
}

/// Accepts tunnels only for Services and workloads that use this waypoint, and tunnels
/// relayed at L4 only when policy allows them.
pub struct WaypointHook {
    pub proxy: Arc<Proxy>,
}

#[async_trait]
impl ConnectHook for WaypointHook {
    async fn authorize(&self, request: &ConnectRequest) -> Result<Accepted, Refusal> {
        plan(&self.proxy, &self.proxy.snapshot(), request)?;
        Ok(Accepted::default())
    }
}

pub struct WaypointDialer {
    pub proxy: Arc<Proxy>,
    pub upstream: HboneUpstream,
    pub limits: ServeLimits,
    /// Counts open tunnels, so shutdown can wait for them to finish.
    pub tunnels: TaskTracker,
    /// Istio TCP metrics for tunnels relayed at L4 (HTTP ones are measured per request).
    pub tcp_metrics: Option<TcpMetrics>,
}

impl WaypointDialer {
    pub fn new(proxy: Arc<Proxy>, upstream: HboneUpstream) -> Self {
        Self { proxy, upstream, limits: ServeLimits::default(), tunnels: TaskTracker::new(), tcp_metrics: None }
    }
}

/// A tunnel's stream that counts as a task of [`WaypointDialer::tunnels`] until dropped and,
/// when relayed at L4, counts its bytes: what the server reads from it goes back to the
/// client (`sent`), what it writes came from the client (`received`).
pub struct Tracked<S> {
    inner: S,
    _token: TaskTrackerToken,
    meter: Option<TcpGuard>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(m)) = (&polled, &self.meter) {
            m.add_sent((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(m)) = (&polled, &self.meter) {
            m.add_received(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl UpstreamDialer for WaypointDialer {
    type Stream = Tracked<Either<DuplexStream, Either<Tunnel, TcpStream>>>;

    async fn dial(&self, request: &ConnectRequest) -> io::Result<Self::Stream> {
        // Judged again on the configuration in force now: it may have changed since the hook.
        let snapshot = self.proxy.snapshot();
        let refused = |r: Refusal| io::Error::new(io::ErrorKind::PermissionDenied, r.to_string());
        match plan(&self.proxy, &snapshot, request).map_err(refused)? {
            Plan::Http => {
                let (near, far) = tokio::io::duplex(PIPE_BUFFER);
                let down = downstream(request);
                tokio::spawn(serve_http(self.proxy.clone(), far, down, self.limits));
                Ok(self.track(Either::Left(near)))
            }
            Plan::L4(Relay { to, service }) => {
                let stream = self.upstream.connect(&self.l4_target(request, &to, service.as_ref())).await?;
                Ok(self.relay(Either::Right(stream), request, &snapshot, &to, service.as_ref()))
            }
            Plan::Detect(l4) => {
                let (near, far) = tokio::io::duplex(PIPE_BUFFER);
                let down = downstream(request);
                let l4 = l4.map(|Relay { to, service }| {
                    let target = self.l4_target(request, &to, service.as_ref());
                    // Opened only if the bytes say L4 (HTTP is measured per request).
                    let meter =
                        self.tcp_metrics.clone().map(|m| (m, self.labels(request, &snapshot, &to, service.as_ref())));
                    (target, meter, self.tunnels.token())
                });
                tokio::spawn(detect_then_serve(self.proxy.clone(), self.upstream.clone(), far, down, self.limits, l4));
                Ok(self.track(Either::Left(near)))
            }
        }
    }
}

/// Who opened the tunnel, for the HTTP proxy.
fn downstream(request: &ConnectRequest) -> Downstream {
    Downstream {
        peer_identity: Some(request.peer_identity.clone()),
        peer_addr: request.peer_addr,
        target: request.target.clone(),
    }
}

impl WaypointDialer {
    fn l4_target(&self, request: &ConnectRequest, ep: &EndpointInfo, service: Option<&ServiceKey>) -> Target {
        Target {
            addr: ep.addr,
            identity: ep.identity.clone(),
            service: service.cloned().unwrap_or_else(|| ServiceKey::new("", "")),
            http2: false,
            hbone: ep.hbone,
            traceparent: request.traceparent.clone(),
            forwarded: Some(forwarded_for(request.peer_addr)),
            pool: Default::default(),
        }
    }

    fn track<S>(&self, inner: S) -> Tracked<S> {
        Tracked { inner, _token: self.tunnels.token(), meter: None }
    }

    /// An L4 relay: tracked and measured.
    fn relay<S>(
        &self,
        inner: S,
        request: &ConnectRequest,
        snapshot: &Snapshot,
        to: &EndpointInfo,
        service: Option<&ServiceKey>,
    ) -> Tracked<S> {
        let meter = self.meter(request, snapshot, to, service);
        Tracked { inner, _token: self.tunnels.token(), meter }
    }

    /// Istio's TCP metrics for one relayed connection.
    fn meter(
        &self,
        request: &ConnectRequest,
        snapshot: &Snapshot,
        to: &EndpointInfo,
        service: Option<&ServiceKey>,
    ) -> Option<TcpGuard> {
        self.tcp_metrics.as_ref().map(|m| m.open(self.labels(request, snapshot, to, service)))
    }

    fn labels(
        &self,
        request: &ConnectRequest,
        snapshot: &Snapshot,
        to: &EndpointInfo,
        service: Option<&ServiceKey>,
    ) -> TcpLabels {
        let source = crate::telemetry::source_peer(&snapshot.model, Some(&request.peer_identity));
        let service = service.map(|s| ServiceRef::new(&s.name, &s.namespace, &self.proxy.config().domain));
        tcp_labels(&source, &to.peer, service.as_ref())
    }
}

/// The relay a detected tunnel gets if it is not HTTP: where to, its metrics (opened only
/// then), and its count among the open tunnels.
type DetectedL4 = (Target, Option<(TcpMetrics, TcpLabels)>, TaskTrackerToken);

/// Serves a tunnel whose protocol its first bytes decide: HTTP to the proxy, anything else
/// relayed to the endpoint chosen (if the policies allowed it; otherwise the tunnel closes).
async fn detect_then_serve(
    proxy: Arc<Proxy>,
    upstream: HboneUpstream,
    mut far: DuplexStream,
    down: Downstream,
    limits: ServeLimits,
    l4: Result<DetectedL4, Refusal>,
) {
    let window = proxy.config().detection_window;
    let (detected, seen) = match sniff::detect(&mut far, window).await {
        Ok(d) => d,
        Err(e) => return tracing::debug!(error = %e, "tunnel closed during protocol detection"),
    };
    let far = sniff::Rewind::new(seen, far);
    if detected == sniff::Detected::Http {
        return serve_http(proxy, far, down, limits).await;
    }
    let (target, meter, token) = match l4 {
        Ok(l4) => l4,
        Err(refusal) => {
            return tracing::info!(target = %down.target, %refusal, "not HTTP, and refused at L4: tunnel closed");
        }
    };
    let up = match upstream.connect(&target).await {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "relay after detection: connect failed"),
    };
    // Counted from the upstream's side: its reads went to the client, its writes came from it.
    let meter = meter.map(|(m, labels)| m.open(labels));
    let mut up = Tracked { inner: up, _token: token, meter };
    let mut far = far;
    if let Err(e) = tokio::io::copy_bidirectional(&mut far, &mut up).await {
        tracing::debug!(error = %e, "relay after detection ended with an error");
    }
}

impl WaypointDialer {}
