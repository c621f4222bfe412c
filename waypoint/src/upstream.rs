//! Where requests go once routed: the [`Upstream`] trait (scripted in tests) and its HBONE
//! implementation, which speaks the client's HTTP version to the endpoint over pooled
//! connections ([`clients`]), each an HBONE tunnel opened with the waypoint's identity
//! (or plain TCP to an endpoint outside the mesh).

mod clients;
pub use clients::Clients;

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use mesh::hbone::{DirectTcpDialer, HBONE_PORT, Pool, PoolKey, Tunnel, TunnelRequest};
use mesh::{Authority, Identity};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::resilience::PoolSettings;
use crate::route::ServiceKey;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response bodies stream through; `Unsync` because hyper's incoming body is not `Sync`.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// Request bodies stream through too (an attempt's [`ReplayBody`](crate::proxy::ReplayBody),
/// or a mirror's copy).
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// One endpoint chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Target {
    /// `endpointIP:targetPort`: the tunnel's `:authority`.
    pub addr: SocketAddr,
    /// The endpoint workload's identity, which its HBONE server must prove.
    pub identity: Identity,
    pub service: ServiceKey,
    /// Speak HTTP/2 to the endpoint (the client spoke HTTP/2).
    pub http2: bool,
    /// This hop's `traceparent`, carried on the CONNECT too.
    pub traceparent: Option<String>,
    /// The endpoint is in the mesh (HBONE); `false`: plain TCP, as the agents treat workloads
    /// with `protocol: NONE`.
    pub hbone: bool,
    /// `Forwarded: for=<client>` for the CONNECT, so the destination learns the original
    /// client behind the waypoint (it trusts this only from waypoint identities).
    pub forwarded: Option<String>,
    /// How the backend's pooled connections are kept (its DestinationRule).
    pub pool: PoolSettings,
}

/// `Forwarded` (RFC 7239) naming the client address: IPv6 quoted and bracketed.
pub fn forwarded_for(client: SocketAddr) -> String {
    match client.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => format!("for={ip}"),
        std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    }
}

/// Why an attempt produced no response. Both are safe to retry while the request body is
/// still kept (see `proxy::replay`): no response byte reached the client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr} failed: {reason}; is the endpoint's agent up and the workload listening?")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr} reset the request before responding: {reason}")]
    Reset { addr: SocketAddr, reason: String },
}

#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    async fn send(
        &self,
        target: &Target,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError>;

    /// Drops the pooled connections to `addr` (an endpoint just ejected as an outlier):
    /// requests in flight finish, idle connections close, the next request dials afresh.
    fn forget(&self, _addr: SocketAddr) {}
}

/// Opens HBONE tunnels from the waypoint's identity through a shared [`Pool`].
#[derive(Clone)]
pub struct HboneUpstream {
    pub pool: Pool<DirectTcpDialer>,
    pub identity: Identity,
    /// Pool key's source: the waypoint is one "pod".
    pub src_pod: String,
    /// The endpoints' HBONE port (15008 except in tests).
    pub hbone_port: u16,
    /// Pooled HTTP connections to endpoints.
    pub clients: Clients,
}

impl HboneUpstream {
    pub fn new(pool: Pool<DirectTcpDialer>, identity: Identity, src_pod: impl Into<String>) -> Self {
        Self { pool, identity, src_pod: src_pod.into(), hbone_port: HBONE_PORT, clients: Clients::default() }
    }

    /// A raw tunnel to `addr` (also used for the L4 pass-through).
    pub async fn tunnel(
        &self,
        addr: SocketAddr,
        identity: &Identity,
        traceparent: Option<String>,
        forwarded: Option<String>,
    ) -> io::Result<Tunnel> {
        let key = PoolKey {
            src_pod: self.src_pod.clone(),
            src_identity: self.identity.clone(),
            dst_identity: identity.clone(),
            dst: SocketAddr::new(addr.ip(), self.hbone_port),
        };
        let mut req = TunnelRequest::new(Authority::parse(&addr.to_string()).map_err(io::Error::other)?);
        req.traceparent = traceparent;
        req.forwarded = forwarded;
        // The CONNECT runs to its answer on a task of its own, even when the request that
        // wanted it is cancelled (a client resetting its streams): a CONNECT reset before the
        // endpoint's agent accepted it counts against that connection's reset limit, and
        // past the limit the agent closes the pooled connection that every tenant's requests
        // share (a rapid reset by one client would fail the others). An unwanted tunnel is
        // closed once open, which costs the agent nothing more.
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.connect(key, req).await })
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)
    }
}

/// Bound on a plain-TCP connect to an endpoint outside the mesh.
const PLAIN_CONNECT_TIMEOUT: std::time::Duration = mesh::hbone::DEFAULT_CONNECT_TIMEOUT;

impl HboneUpstream {
    /// The byte stream to an endpoint: an HBONE tunnel, or plain TCP outside the mesh.
    pub async fn connect(&self, target: &Target) -> io::Result<Either<Tunnel, TcpStream>> {
        if target.hbone {
            let tunnel =
                self.tunnel(target.addr, &target.identity, target.traceparent.clone(), target.forwarded.clone());
            return Ok(Either::Left(tunnel.await?));
        }
        let tcp = tokio::time::timeout(PLAIN_CONNECT_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        tcp.set_nodelay(true)?;
        Ok(Either::Right(tcp))
    }
}

#[async_trait]
impl Upstream for HboneUpstream {
    async fn send(
        &self,
        target: &Target,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let addr = target.addr;
        let mut request = request;
        absolute_form(&mut request);
        let used = hyper_util::client::legacy::connect::capture_connection(&mut request);
        let response = self.clients.get(self, target).request(request).await.map_err(|e| {
            // The source of a client error says what failed (the dial, or the exchange).
            let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            if e.is_connect() { UpstreamError::Connect { addr, reason } } else { UpstreamError::Reset { addr, reason } }
        })?;
        if let Some(max) = target.pool.max_requests_per_connection {
            clients::count_use(&response, &used, max);
        }
        Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }

    fn forget(&self, addr: SocketAddr) {
        self.clients.forget(addr);
    }
}

/// The pooled client wants `http://<authority>/…`; it sends HTTP/1.1 in origin form again.
/// The authority is the request's own (its `Host`), never the endpoint's address.
fn absolute_form<B>(request: &mut Request<B>) {
    if request.uri().authority().is_some() {
        return;
    }
    let host = request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let pq = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("http://{host}{pq}").parse() {
        *request.uri_mut() = uri;
    }
}
