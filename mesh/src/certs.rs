//! Per-workload certificates: issued on demand, renewed at half-life in the background, the
//! old certificate kept while renewal fails, dropped when the workload leaves.

pub mod manager;
pub mod metrics;

pub use manager::{CertManager, CertManagerConfig, CertState};
pub use metrics::CertMetrics;

use crate::ca::CaError;
use crate::tls::TlsError;

/// Why a workload has no usable certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("certificate source failed: {0}; retrying in the background")]
    Source(std::sync::Arc<CaError>),
    #[error("certificate source returned an unusable certificate: {0}")]
    Unusable(std::sync::Arc<TlsError>),
    #[error(
        "certificate source issued {got} but {expected} was requested: the CA is misconfigured or impersonation is not allowed"
    )]
    WrongIdentity { expected: String, got: String },
    #[error("certificate manager stopped tracking this identity (workload removed)")]
    Forgotten,
    #[error("no local workload owns {0}: the client dialled an address that is not one of this node's pods")]
    UnknownLocalAddress(std::net::SocketAddr),
}
