//! Mutual TLS 1.3 with X.509-SVIDs: the crypto provider, the SVID rules, verifiers that read
//! time from an injected [`Clock`](crate::clock::Clock), trust bundles and config builders.
//!
//! Every config is built with an explicit aws-lc-rs provider, so nothing depends on (or
//! panics over) the process-wide default provider.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub mod config;
pub mod svid;
pub mod trust;
pub mod verify;
pub mod workload_cert;

pub use config::{client_config, server_config};
pub use svid::{SvidError, identity_of};
pub use trust::TrustBundle;
pub use verify::{SvidClientVerifier, SvidServerVerifier};
pub use workload_cert::WorkloadCert;

/// HBONE speaks HTTP/2 only.
pub const ALPN_H2: &[u8] = b"h2";

/// The aws-lc-rs provider, built once and shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// Errors building TLS material. Peer-verification failures surface as `rustls::Error`
/// during the handshake instead; see [`svid::SvidError`] for their causes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain is empty: the certificate source must return at least the leaf")]
    EmptyChain,
    #[error("workload certificate is not a valid X.509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("private key does not load or does not match the leaf certificate: {0}")]
    Key(rustls::Error),
    #[error("trust bundle is empty: configure at least one root certificate")]
    EmptyBundle,
    #[error("trust bundle root is not a valid CA certificate ({0}): check the roots file")]
    BadRoot(String),
    #[error("PEM input is malformed ({0}): expected `-----BEGIN CERTIFICATE-----` blocks")]
    Pem(String),
    #[error("rustls refused the configuration: {0}")]
    Config(rustls::Error),
}
