//! What the caller plugs in: how sockets are dialled (the agent dials from inside a pod's
//! network namespace) and where certificates come from.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::pool::PoolKey;
use super::server::ConnectRequest;
use crate::certs::{CertError, CertManager};
use crate::parse::Identity;
use crate::tls::WorkloadCert;

/// Client side: opens the TCP connection to a destination's HBONE port for a pool key.
/// The agent's implementation connects from the source pod's network namespace.
#[async_trait]
pub trait TcpDialer: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn dial(&self, key: &PoolKey) -> io::Result<Self::Stream>;
}

/// Dials from the current network namespace, with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectTcpDialer;

#[async_trait]
impl TcpDialer for DirectTcpDialer {
    type Stream = TcpStream;
    async fn dial(&self, key: &PoolKey) -> io::Result<TcpStream> {
        let s = TcpStream::connect(key.dst).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Server side: opens the connection to the tunnel's target once the hook has accepted it.
/// The agent's implementation dials the pod IP from inside the destination pod's netns.
#[async_trait]
pub trait UpstreamDialer: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn dial(&self, request: &ConnectRequest) -> io::Result<Self::Stream>;
}

/// Dials the target address as given (literal IPs only) from the current namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpUpstream;

#[async_trait]
impl UpstreamDialer for TcpUpstream {
    type Stream = TcpStream;
    async fn dial(&self, request: &ConnectRequest) -> io::Result<TcpStream> {
        let addr: SocketAddr = request.target.socket_addr().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "target is a host name; only waypoints resolve names")
        })?;
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Certificates for local (source) identities.
#[async_trait]
pub trait CertProvider: Send + Sync + 'static {
    async fn cert_for(&self, identity: &Identity) -> Result<WorkloadCert, CertError>;
}

#[async_trait]
impl CertProvider for CertManager {
    async fn cert_for(&self, identity: &Identity) -> Result<WorkloadCert, CertError> {
        self.fetch(identity).await
    }
}

/// A fixed certificate (tests, benchmarks, single-identity tools).
#[async_trait]
impl CertProvider for WorkloadCert {
    async fn cert_for(&self, identity: &Identity) -> Result<WorkloadCert, CertError> {
        if self.identity() == identity {
            Ok(self.clone())
        } else {
            Err(CertError::WrongIdentity { expected: identity.to_string(), got: self.identity().to_string() })
        }
    }
}

#[async_trait]
impl<T: TcpDialer> TcpDialer for Arc<T> {
    type Stream = T::Stream;
    async fn dial(&self, key: &PoolKey) -> io::Result<Self::Stream> {
        (**self).dial(key).await
    }
}

#[async_trait]
impl<T: UpstreamDialer> UpstreamDialer for Arc<T> {
    type Stream = T::Stream;
    async fn dial(&self, request: &ConnectRequest) -> io::Result<Self::Stream> {
        (**self).dial(request).await
    }
}
