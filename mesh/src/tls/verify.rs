//! Peer verification for both directions: chain to the trust bundle and validity (webpki,
//! with the injected clock's time rather than the handshake's), then the SVID rules, then —
//! for a client checking a server — the expected identity.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::svid::{self, SvidError};
use super::{TlsError, TrustBundle, provider};
use crate::clock::SharedClock;
use crate::parse::Identity;

fn unix_now(clock: &SharedClock) -> UnixTime {
    UnixTime::since_unix_epoch(clock.now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn svid_failure(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Server side: requires a client certificate and checks it is a valid SVID from the bundle,
/// in one of the accepted trust domains. A bundle may hold another mesh's root (federated
/// roots, `extra_roots`); chaining to it must not make that mesh's `ns/shop/sa/x` pass for
/// ours, since policies name namespaces and service accounts without a trust domain.
/// The peer's identity is read afterwards from the connection's peer certificates.
#[derive(Debug)]
pub struct SvidClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// Our own trust domain first, then any explicitly allowed ones.
    trust_domains: Vec<String>,
    clock: SharedClock,
}

impl SvidClientVerifier {
    /// `trust_domains`: the peers' accepted trust domains (normally just our own).
    pub fn new(bundle: &TrustBundle, trust_domains: Vec<String>, clock: SharedClock) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(bundle.root_store(), provider())
            .build()
            .map_err(|e| TlsError::BadRoot(e.to_string()))?;
        Ok(Self { inner, trust_domains, clock })
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, unix_now(&self.clock))?;
        let peer = svid::identity_of(end_entity).map_err(svid_failure)?;
        if !self.trust_domains.iter().any(|td| td == peer.trust_domain()) {
            return Err(svid_failure(SvidError::ForeignTrustDomain {
                got: peer.to_string(),
                accepted: self.trust_domains.join(", "),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: the server must present a valid SVID from the bundle whose identity is one of
/// the expected ones. DNS/IP names are irrelevant in the mesh, so `server_name` is ignored.
#[derive(Debug)]
pub struct SvidServerVerifier {
    bundle: TrustBundle,
    expected: Vec<Identity>,
    clock: SharedClock,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidServerVerifier {
    pub fn new(bundle: TrustBundle, expected: Vec<Identity>, clock: SharedClock) -> Self {
        Self { bundle, expected, clock, algs: provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.bundle.root_store(),
            intermediates,
            unix_now(&self.clock),
            self.algs.all,
        )?;
        let got = svid::identity_of(end_entity).map_err(svid_failure)?;
        if !self.expected.contains(&got) {
            let expected = self.expected.iter().map(Identity::as_str).collect::<Vec<_>>().join(" or ");
            return Err(svid_failure(SvidError::WrongIdentity { expected, got: got.to_string() }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
