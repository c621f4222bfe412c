//! The HBONE server: TLS 1.3 with a required client SVID, then HTTP/2 where each CONNECT
//! stream is authorized by the caller's hook and relayed to an upstream the caller dials.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES, HboneError, UpstreamDialer, settings,
};
use crate::certs::{CertError, CertManager};
use crate::clock::{SharedClock, SystemClock};
use crate::limits::{AcceptBackoff, ConnLimit, LimitMetrics, PerSourceLimit};
use crate::parse::{Authority, ForwardedElement, ForwardedError, Identity, parse_forwarded};
use crate::tls::{ALPN_H2, SvidClientVerifier, TrustBundle, WorkloadCert, config, identity_of};

mod handle;
mod idle;

/// Chooses the certificate to present, by the local address the client dialled (the
/// destination workload's address).
#[async_trait]
pub trait ServerCertResolver: Send + Sync + 'static {
    async fn resolve(&self, local: SocketAddr) -> Result<WorkloadCert, CertError>;
}

/// Always the same certificate (a listener per workload, tests).
#[async_trait]
impl ServerCertResolver for WorkloadCert {
    async fn resolve(&self, _local: SocketAddr) -> Result<WorkloadCert, CertError> {
        Ok(self.clone())
    }
}

/// One identity's certificate from a [`CertManager`] (the agent's per-pod listener).
#[async_trait]
impl ServerCertResolver for (CertManager, Identity) {
    async fn resolve(&self, _local: SocketAddr) -> Result<WorkloadCert, CertError> {
        self.0.fetch(&self.1).await
    }
}

#[async_trait]
impl<T: ServerCertResolver> ServerCertResolver for Arc<T> {
    async fn resolve(&self, local: SocketAddr) -> Result<WorkloadCert, CertError> {
        (**self).resolve(local).await
    }
}

/// Picks the identity for the dialled address with `lookup` (the agent: pod IP → workload
/// identity), then its certificate from a [`CertManager`], issuing on first use.
pub struct ByLocalAddress<F> {
    pub certs: CertManager,
    pub lookup: F,
}

#[async_trait]
impl<F> ServerCertResolver for ByLocalAddress<F>
where
    F: Fn(SocketAddr) -> Option<Identity> + Send + Sync + 'static,
{
    async fn resolve(&self, local: SocketAddr) -> Result<WorkloadCert, CertError> {
        let identity = (self.lookup)(local).ok_or(CertError::UnknownLocalAddress(local))?;
        self.certs.fetch(&identity).await
    }
}

/// Everything the hook and the dialer know about one CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The client's SPIFFE identity, from its verified certificate.
    pub peer_identity: Identity,
    /// The outer TCP peer (the source node's agent or a waypoint).
    pub peer_addr: SocketAddr,
    /// The address the client dialled (this workload's address on port 15008).
    pub local_addr: SocketAddr,
    /// The identity this server presented.
    pub local_identity: Identity,
    /// `:authority`: where the tunnel should lead.
    pub target: Authority,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    /// Raw `Forwarded`; trust it only from waypoints.
    pub forwarded: Option<String>,
}

impl ConnectRequest {
    /// Whether the target IP is the address the client dialled. ztunnel answers 400 when it
    /// is not; an agent hook should refuse with [`Refusal::BadTarget`] (never an open proxy).
    pub fn targets_dialled_address(&self) -> bool {
        self.target.socket_addr().is_some_and(|t| t.ip() == self.local_addr.ip())
    }

    /// The parsed `Forwarded` header, if present.
    pub fn forwarded_elements(&self) -> Option<Result<Vec<ForwardedElement>, ForwardedError>> {
        self.forwarded.as_deref().map(parse_forwarded)
    }
}

/// The hook accepted the tunnel.
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    /// `baggage` for the 200 response (the destination's workload metadata); the server's
    /// default is used when `None`.
    pub baggage: Option<String>,
}

/// Why the hook refused; each maps to the status ztunnel uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the target is malformed or not one of this workload's addresses.
    #[error("bad target: {0}")]
    BadTarget(String),
    /// 401: identity or policy denial.
    #[error("denied: {0}")]
    Denied(String),
    /// 503: the target cannot be served (loop to 15008, workload gone).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::BadTarget(_) => http::StatusCode::BAD_REQUEST,
            Refusal::Denied(_) => http::StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Authorizes each CONNECT. The agent checks "is the target one of my pod's own addresses?"
/// (never an open proxy), then L4 policy on the peer identity.
#[async_trait]
pub trait ConnectHook: Send + Sync + 'static {
    async fn authorize(&self, request: &ConnectRequest) -> Result<Accepted, Refusal>;
}

#[async_trait]
impl<T: ConnectHook> ConnectHook for Arc<T> {
    async fn authorize(&self, request: &ConnectRequest) -> Result<Accepted, Refusal> {
        (**self).authorize(request).await
    }
}

/// A client verifier and what it was built from (bundle, accepted trust domains).
type CachedVerifier = (TrustBundle, Vec<String>, Arc<SvidClientVerifier>);

/// One source's share of a handshake cap: a quarter, at least one.
pub fn per_source_share(max: usize) -> usize {
    (max / 4).max(1)
}

pub struct HboneServer<R, H, D> {
    resolver: R,
    hook: H,
    dialer: D,
    clock: SharedClock,
    /// Covers the certificate lookup too (it may wait on a first issuance).
    handshake_timeout: Duration,
    /// Unauthenticated TLS handshakes in progress; the excess is closed at once.
    handshakes: ConnLimit,
    /// The share of `handshakes` one source address may hold (a quarter by default), so one
    /// peer cannot take them all.
    handshakes_per_source: PerSourceLimit,
    /// TCP connections held (handshaking or established).
    connections: ConnLimit,
    /// CONNECT tunnels open at once (the agent shares it with a pod's other listeners);
    /// the excess gets 503.
    tunnels: Option<ConnLimit>,
    /// An established connection with no open stream for this long gets GOAWAY.
    idle_timeout: Duration,
    /// HTTP/2 receive windows (per stream, per connection): what a peer may send ahead
    /// of what the upstream has taken, held in this process.
    windows: (u32, u32),
    /// Bound on dialling the upstream; past it the client gets 503.
    upstream_timeout: Duration,
    default_baggage: String,
    /// Peers' trust domains accepted besides the presented certificate's own (federation).
    extra_trust_domains: Vec<String>,
    /// Verifier for the last trust bundle and trust domains seen; rebuilt only on a change.
    verifier: Mutex<Option<CachedVerifier>>,
}

pub struct HboneServerBuilder<R, H, D> {
    server: HboneServer<R, H, D>,
}

impl<R: ServerCertResolver, H: ConnectHook, D: UpstreamDialer> HboneServerBuilder<R, H, D> {
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.server.clock = clock;
        self
    }

    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.server.handshake_timeout = t;
        self
    }

    /// Caps concurrent TLS handshakes (default [`DEFAULT_MAX_HANDSHAKES`]).
    /// (and a quarter of it per source address, uncounted unless
    /// [`Self::per_source_handshake_limit`] names a counted one).
    pub fn handshake_limit(mut self, limit: ConnLimit) -> Self {
        self.server.handshakes_per_source =
            PerSourceLimit::new("hbone_handshakes_per_source", per_source_share(limit.max()), &LimitMetrics::default());
        self.server.handshakes = limit;
        self
    }

    /// Caps the handshakes one source address may have in progress; call after
    /// [`Self::handshake_limit`].
    pub fn per_source_handshake_limit(mut self, limit: PerSourceLimit) -> Self {
        self.server.handshakes_per_source = limit;
        self
    }

    /// Caps connections held at once (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub fn connection_limit(mut self, limit: ConnLimit) -> Self {
        self.server.connections = limit;
        self
    }

    /// Caps tunnels open at once over all connections (default: only the per-connection
    /// stream limit).
    pub fn tunnel_limit(mut self, limit: ConnLimit) -> Self {
        self.server.tunnels = Some(limit);
        self
    }

    /// Also accept peers of these trust domains (default: only the trust domain of the
    /// certificate this server presents).
    pub fn allowed_trust_domains(mut self, domains: impl IntoIterator<Item = String>) -> Self {
        self.server.extra_trust_domains = domains.into_iter().collect();
        self
    }

    /// How long a connection may carry no stream before it is closed (default
    /// [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.server.idle_timeout = t;
        self
    }

    /// HTTP/2 receive windows per stream and per connection (default
    /// [`settings::INITIAL_STREAM_WINDOW`], [`settings::INITIAL_CONNECTION_WINDOW`]): the
    /// most a peer's bytes can wait here for a slow upstream.
    pub fn receive_windows(mut self, stream: u32, connection: u32) -> Self {
        self.server.windows = (stream, connection);
        self
    }

    /// How long dialling the upstream may take before the client gets 503.
    pub fn upstream_timeout(mut self, t: Duration) -> Self {
        self.server.upstream_timeout = t;
        self
    }

    /// `baggage` sent on 200 when the hook supplies none.
    pub fn default_baggage(mut self, baggage: impl Into<String>) -> Self {
        self.server.default_baggage = baggage.into();
        self
    }

    pub fn build(self) -> Arc<HboneServer<R, H, D>> {
        Arc::new(self.server)
    }
}

impl<R: ServerCertResolver, H: ConnectHook, D: UpstreamDialer> HboneServer<R, H, D> {
    pub fn builder(resolver: R, hook: H, dialer: D) -> HboneServerBuilder<R, H, D> {
        HboneServerBuilder {
            server: HboneServer {
                resolver,
                hook,
                dialer,
                clock: SystemClock::shared(),
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                handshakes: ConnLimit::new(
                    "hbone_handshakes",
                    "hbone",
                    DEFAULT_MAX_HANDSHAKES,
                    &LimitMetrics::default(),
                ),
                handshakes_per_source: PerSourceLimit::new(
                    "hbone_handshakes_per_source",
                    per_source_share(DEFAULT_MAX_HANDSHAKES),
                    &LimitMetrics::default(),
                ),
                connections: ConnLimit::new(
                    "hbone_connections",
                    "hbone",
                    DEFAULT_MAX_CONNECTIONS,
                    &LimitMetrics::default(),
                ),
                tunnels: None,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                windows: (settings::INITIAL_STREAM_WINDOW, settings::INITIAL_CONNECTION_WINDOW),
                upstream_timeout: DEFAULT_CONNECT_TIMEOUT,
                default_baggage: String::new(),
                extra_trust_domains: Vec::new(),
                verifier: Mutex::default(),
            },
        }
    }

    /// Accepts connections until `shutdown` is cancelled; then stops accepting and asks each
    /// connection to finish (GOAWAY) while its streams complete.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let mut backoff = AcceptBackoff::new("hbone");
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = backoff.accept(&listener) => accepted,
            };
            let _ = tcp.set_nodelay(true);
            let local = match tcp.local_addr() {
                Ok(l) => l,
                Err(_) => continue,
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection(tcp, peer, local, shutdown).await {
                    tracing::debug!(%peer, error = %e, "HBONE connection ended with an error");
                }
            });
        }
    }

    /// Serves one accepted connection (for callers that accept themselves).
    pub async fn serve_connection<IO>(
        self: Arc<Self>,
        io: IO,
        peer: SocketAddr,
        local: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<(), HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Dropping `io` on refusal closes it at once: nothing queues behind a full cap.
        let _connection = self.connections.try_acquire().ok_or(HboneError::Overloaded(peer, "connections"))?;
        let source_slot = self
            .handshakes_per_source
            .try_acquire(peer.ip())
            .ok_or(HboneError::Overloaded(peer, "handshakes from one source"))?;
        let handshake_slot = self.handshakes.try_acquire().ok_or(HboneError::Overloaded(peer, "handshakes"))?;
        let handshake = async {
            let cert = self.resolver.resolve(local).await?;
            let tls_config = config::server_config_with(&cert, self.verifier_for(&cert)?)?;
            let tls = TlsAcceptor::from(Arc::new(tls_config))
                .accept(io)
                .await
                .map_err(|source| HboneError::Tls { addr: peer, source })?;
            let (_, conn) = tls.get_ref();
            if conn.alpn_protocol() != Some(ALPN_H2) {
                return Err(HboneError::Alpn(peer));
            }
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or(HboneError::PeerIdentity(crate::tls::SvidError::Der))?;
            let peer_identity = identity_of(leaf)?;
            let h2 = h2::server::Builder::new()
                .max_concurrent_streams(settings::MAX_CONCURRENT_STREAMS)
                .initial_window_size(self.windows.0)
                .initial_connection_window_size(self.windows.1)
                .max_frame_size(settings::MAX_FRAME_SIZE)
                .max_header_list_size(settings::MAX_HEADER_LIST_SIZE)
                .max_pending_accept_reset_streams(settings::MAX_PENDING_ACCEPT_RESETS)
                .handshake::<_, Bytes>(tls)
                .await?;
            Ok::<_, HboneError>((h2, peer_identity, cert))
        };
        let (mut h2, peer_identity, cert) = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| HboneError::HandshakeTimeout(peer))??;
        drop((handshake_slot, source_slot));
        tracing::debug!(%peer, %peer_identity, "HBONE connection established");

        let base = Arc::new(handle::Base {
            peer_identity,
            peer_addr: peer,
            local_addr: local,
            local_identity: cert.identity().clone(),
        });
        let mut draining = false;
        let streams = idle::Streams::default();
        // After an idle GOAWAY, a peer that never acknowledges it gets this long.
        let give_up = tokio::time::sleep(self.handshake_timeout);
        tokio::pin!(give_up);
        let mut closing_idle = false;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    h2.graceful_shutdown();
                    continue;
                }
                _ = streams.idle_for(self.idle_timeout), if !draining => {
                    tracing::debug!(%peer, idle = ?self.idle_timeout, "closing idle HBONE connection");
                    draining = true;
                    closing_idle = true;
                    h2.graceful_shutdown();
                    give_up.as_mut().reset(tokio::time::Instant::now() + self.handshake_timeout);
                    continue;
                }
                _ = &mut give_up, if closing_idle => return Ok(()),
                next = h2.accept() => next,
            };
            match next {
                None => return Ok(()),
                Some(Ok((request, respond))) => {
                    let server = self.clone();
                    let base = base.clone();
                    let open = streams.open();
                    tokio::spawn(async move {
                        server.handle(base, request, respond).await;
                        drop(open);
                    });
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    fn verifier_for(&self, cert: &WorkloadCert) -> Result<Arc<SvidClientVerifier>, HboneError> {
        let bundle = cert.trust_bundle();
        let own = cert.identity().trust_domain().to_owned();
        let domains: Vec<String> = std::iter::once(own.clone())
            .chain(self.extra_trust_domains.iter().filter(|d| **d != own).cloned())
            .collect();
        let mut cached = self.verifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, d, v)) = cached.as_ref()
            && b == bundle
            && *d == domains
        {
            return Ok(v.clone());
        }
        let v = Arc::new(SvidClientVerifier::new(bundle, domains.clone(), self.clock.clone())?);
        *cached = Some((bundle.clone(), domains, v.clone()));
        Ok(v)
    }
}
