//! A CA server speaking Istio's `CreateCertificate` API, backed by an [`EmbeddedCa`].
//!
//! Who may obtain which identity is decided by a [`CaAuthorizer`]. The Kubernetes one
//! (TokenReview plus "this identity runs on the caller's node") arrives with the Kubernetes
//! source; [`StaticAllowList`] serves tests and single-machine use.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost_types::value::Kind;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::embedded::EmbeddedCa;
use super::proto::{
    IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService, IstioCertificateServiceServer,
};
use super::{CaError, IMPERSONATED_IDENTITY};
use crate::limits::{AcceptBackoff, ConnLimit, LimitMetrics, PeerRateLimit};
use crate::parse::Identity;

#[cfg(test)]
mod tests;

/// TLS handshakes in progress at once on the CA port; the excess is closed at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Requests one peer address may make at once, then per second. An agent asks once per
/// workload of its node (110 pods by default) at start and at half-life after that.
pub const DEFAULT_RATE_BURST: u32 = 200;
pub const DEFAULT_RATE_PER_SECOND: f64 = 10.0;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server knows about a caller.
#[derive(Debug, Clone)]
pub struct CallerInfo {
    /// The bearer token from the `authorization` header, without the `Bearer ` prefix.
    pub bearer_token: Option<String>,
    /// The identity named in `ImpersonatedIdentity`, if any (already syntax-checked).
    pub impersonated: Option<Identity>,
    pub peer: Option<SocketAddr>,
}

/// Decides which identity, if any, a caller gets a certificate for.
#[async_trait]
pub trait CaAuthorizer: Send + Sync + 'static {
    /// Returns the identity to put in the certificate, or why not.
    /// Use [`CaError::Unauthenticated`] for bad credentials and
    /// [`CaError::PermissionDenied`] for a caller asking for an identity it may not have.
    async fn authorize(&self, caller: &CallerInfo) -> Result<Identity, CaError>;
}

/// Token → (the caller's own identity, identities it may impersonate).
#[derive(Debug, Default, Clone)]
pub struct StaticAllowList {
    entries: HashMap<String, (Identity, HashSet<Identity>)>,
}

impl StaticAllowList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `token` to get certificates for `own` and for every identity in `may_impersonate`.
    pub fn allow(
        mut self,
        token: impl Into<String>,
        own: Identity,
        may_impersonate: impl IntoIterator<Item = Identity>,
    ) -> Self {
        self.entries.insert(token.into(), (own, may_impersonate.into_iter().collect()));
        self
    }
}

#[async_trait]
impl CaAuthorizer for StaticAllowList {
    async fn authorize(&self, caller: &CallerInfo) -> Result<Identity, CaError> {
        let token = caller.bearer_token.as_deref().ok_or_else(|| CaError::Unauthenticated("no bearer token".into()))?;
        let (own, allowed) = self.entries.get(token).ok_or_else(|| CaError::Unauthenticated("unknown token".into()))?;
        match &caller.impersonated {
            None => Ok(own.clone()),
            Some(id) if id == own || allowed.contains(id) => Ok(id.clone()),
            Some(id) => Err(CaError::PermissionDenied(format!("{own} may not impersonate {id}"))),
        }
    }
}

/// The gRPC service. Build with [`CaServer::new`], then [`CaServer::into_service`] or
/// [`CaServer::serve`].
pub struct CaServer<A> {
    ca: Arc<EmbeddedCa>,
    authorizer: A,
    /// Lifetime when the request asks for none.
    default_lifetime: Duration,
    /// Checked before the authorizer, so a flood costs the API server no TokenReviews.
    rate: PeerRateLimit,
    max_handshakes: usize,
}

impl<A: CaAuthorizer> CaServer<A> {
    pub fn new(ca: Arc<EmbeddedCa>, authorizer: A) -> Self {
        Self {
            ca,
            authorizer,
            default_lifetime: super::embedded::DEFAULT_MAX_LIFETIME,
            rate: PeerRateLimit::new(DEFAULT_RATE_BURST, DEFAULT_RATE_PER_SECOND),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }

    /// Requests per peer address: `burst` at once, refilled at `per_second`; the excess gets
    /// RESOURCE_EXHAUSTED.
    pub fn rate_limit(mut self, burst: u32, per_second: f64) -> Self {
        self.rate = PeerRateLimit::new(burst, per_second);
        self
    }

    /// TLS handshakes in progress at once ([`CaServer::serve_tls`]).
    pub fn max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max;
        self
    }

    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), CaError> {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
            .await
            .map_err(|e| CaError::Transport { endpoint: addr, message: e.to_string() })
    }
}

impl<A: CaAuthorizer> CaServer<A> {
    /// Serves over TLS (as istiod does on 15012) until `shutdown` resolves. The serving
    /// certificate is typically [`EmbeddedCa::serving_cert`] for the CA's DNS name.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), CaError> {
        let endpoint = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let transport = |message: String| CaError::Transport { endpoint: endpoint.clone(), message };
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| transport(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| CaError::CaMaterial(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        // Handshakes run in their own tasks so one slow client cannot stall accepting, and at
        // most `max_handshakes` at once: they are unauthenticated work.
        let handshakes =
            ConnLimit::new("ca_handshakes", endpoint.clone(), self.max_handshakes, &LimitMetrics::default());
        let (tx, rx) = mpsc::channel(64);
        let accept_loop = tokio::spawn(async move {
            let mut backoff = AcceptBackoff::new("ca");
            loop {
                let (tcp, peer) = backoff.accept(&listener).await;
                let Some(slot) = handshakes.try_acquire() else {
                    drop(tcp);
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let done = handshake.await;
                    drop(slot);
                    match done {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "CA TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "CA TLS handshake timed out"),
                    }
                });
            }
        });
        let incoming = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let result = tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| transport(e.to_string()));
        accept_loop.abort();
        result
    }
}

fn caller_info<T>(request: &Request<T>, impersonated: Option<Identity>) -> CallerInfo {
    let bearer_token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    CallerInfo { bearer_token, impersonated, peer: request.remote_addr() }
}

fn to_status(e: CaError) -> Status {
    match e {
        CaError::Unauthenticated(m) => Status::unauthenticated(m),
        CaError::PermissionDenied(m) => Status::permission_denied(m),
        CaError::BadCsr(m) => Status::invalid_argument(m),
        CaError::Identity(e) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[async_trait]
impl<A: CaAuthorizer> IstioCertificateService for CaServer<A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let impersonated = match request
            .get_ref()
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| v.kind.as_ref())
        {
            None => None,
            Some(Kind::StringValue(s)) => Some(
                Identity::parse(s).map_err(|e| Status::invalid_argument(format!("{IMPERSONATED_IDENTITY}: {e}")))?,
            ),
            Some(_) => {
                return Err(Status::invalid_argument(format!("{IMPERSONATED_IDENTITY} must be a string")));
            }
        };
        let caller = caller_info(&request, impersonated);
        if !self.rate.admit(caller.peer.map(|p| p.ip())) {
            tracing::debug!(peer = ?caller.peer, "CA request over the per-peer rate limit");
            return Err(Status::resource_exhausted("too many certificate requests from this address; retry later"));
        }
        let identity = self.authorizer.authorize(&caller).await.map_err(to_status)?;
        let req = request.into_inner();
        let lifetime = match u64::try_from(req.validity_duration) {
            Ok(0) | Err(_) => self.default_lifetime,
            Ok(secs) => Duration::from_secs(secs),
        };
        let issued = self.ca.sign_csr(&identity, &req.csr, lifetime).map_err(to_status)?;
        tracing::info!(%identity, peer = ?caller.peer, "issued workload certificate");
        let cert_chain = issued.chain.iter().chain(issued.roots.first()).map(|der| pem_cert(der)).collect();
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

pub(crate) fn pem_cert(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Minimal PEM encoder (base64 in 64-column lines).
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
