//! rustls configs for HBONE: TLS 1.3 only, ALPN `h2`, mutual authentication with SVIDs.
//!
//! Configs are cheap and built per connection from the certificate current at that moment,
//! so a rotated certificate or trust bundle applies to the next connection with no reload.

use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::{ALPN_H2, SvidClientVerifier, SvidServerVerifier, TlsError, WorkloadCert, provider};
use crate::clock::SharedClock;
use crate::parse::Identity;

/// Server config presenting `cert` and requiring a client SVID from `cert`'s trust bundle.
pub fn server_config(cert: &WorkloadCert, clock: SharedClock) -> Result<ServerConfig, TlsError> {
    let verifier =
        SvidClientVerifier::new(cert.trust_bundle(), vec![cert.identity().trust_domain().to_owned()], clock)?;
    server_config_with(cert, Arc::new(verifier))
}

/// As [`server_config`], reusing a verifier (saves re-parsing the roots per connection).
pub fn server_config_with(cert: &WorkloadCert, verifier: Arc<SvidClientVerifier>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Resumption would skip client-certificate checks against the current bundle; HBONE
    // connections are long-lived and pooled, so full handshakes cost little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Client config presenting `cert` and accepting only a server SVID naming one of `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    expected: Vec<Identity>,
    clock: SharedClock,
) -> Result<ClientConfig, TlsError> {
    let verifier = SvidServerVerifier::new(cert.trust_bundle().clone(), expected, clock);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        // Not dangerous in effect: SvidServerVerifier does full chain, time and identity
        // checks; it only replaces DNS-name matching, which SPIFFE does not use.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Fixed(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Always presents the same certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
