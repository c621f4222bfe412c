//! Peer-certificate rules: every bad client certificate and a wrong server identity refuse
//! the connection before any CONNECT reaches the hook.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh::Identity;
use mesh::clock::SharedClock;
use mesh::hbone::{HboneError, TunnelRequest};
use mesh::tls::{SvidServerVerifier, TrustBundle, provider};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Tries one CONNECT with a hand-built client config; returns the status or the failure.
pub async fn try_connect(addr: SocketAddr, config: ClientConfig) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = h2::client::handshake(tls).await.map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder().method(http::Method::CONNECT).uri("10.0.0.1:80").body(()).unwrap();
    let (resp, _stream): (_, h2::SendStream<Bytes>) =
        send.send_request(req, false).map_err(|e| format!("send: {e}"))?;
    let resp = resp.await.map_err(|e| format!("response: {e}"))?;
    Ok(resp.status().as_u16())
}

pub fn config_with(
    chain: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    bundle: TrustBundle,
    expected: Identity,
    clock: SharedClock,
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SvidServerVerifier::new(bundle, vec![expected], clock)));
    let mut config = match chain {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Mints a leaf signed by the test CA's intermediate, with whatever flaw `tweak` adds.
fn mint(
    pki: &Pki,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let issuer =
        Issuer::from_ca_cert_pem(&pki.pem.intermediate_cert, KeyPair::from_pem(&pki.pem.intermediate_key).unwrap())
            .unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::from(mesh::clock::Clock::now(&pki.clock));
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![SanType::URI(id("default", "client").as_str().try_into().unwrap())];
    tweak(&mut params);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let intermediate = mesh::tls::trust::parse_pem_certs(&pki.pem.intermediate_cert).unwrap();
    let chain = vec![leaf.der().clone(), intermediate[0].clone()];
    (chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

async fn assert_refused(pki: &Pki, chain: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, why: &str) {
    let server_id = id("default", "server");
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let config = config_with(chain, pki.bundle(), server_id, pki.shared_clock());
    let result = within(10, try_connect(server.addr, config)).await;
    assert!(result.is_err(), "{why}: expected refusal, got {result:?}");
    assert!(server.hook.seen.lock().unwrap().is_empty(), "{why}: hook must not run");
}

#[tokio::test]
async fn valid_client_certificate_is_accepted_by_the_same_harness() {
    // Guards the refusal tests below: the harness itself must be able to succeed.
    let pki = Pki::new();
    let server_id = id("default", "server");
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let good = mint(&pki, |_| {});
    let config = config_with(Some(good), pki.bundle(), server_id, pki.shared_clock());
    assert_eq!(within(10, try_connect(server.addr, config)).await, Ok(200));
}

#[tokio::test]
async fn client_certificate_with_two_uri_sans_is_refused() {
    let pki = Pki::new();
    let bad = mint(&pki, |p| {
        p.subject_alt_names.push(SanType::URI(id("default", "other").as_str().try_into().unwrap()));
    });
    assert_refused(&pki, Some(bad), "two URI SANs").await;
}

#[tokio::test]
async fn client_certificate_that_is_a_ca_is_refused() {
    let pki = Pki::new();
    let bad = mint(&pki, |p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
    assert_refused(&pki, Some(bad), "CA as leaf").await;
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let pki = Pki::new();
    assert_refused(&pki, None, "no client certificate").await;
}

#[tokio::test]
async fn client_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    assert_refused(&pki, Some(other_pair(&other).await), "untrusted CA").await;
}

/// A valid chain and key from another CA.
async fn other_pair(other: &Pki) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = other.ca.sign_csr(&identity, &csr.csr_pem, DAY).unwrap();
    (issued.chain, csr.key)
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let server_id = id("default", "server");
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = pki.ca.sign_csr(&identity, &csr.csr_pem, Duration::from_secs(3600)).unwrap();
    let config = config_with(Some((issued.chain, csr.key)), pki.bundle(), server_id, pki.shared_clock());
    // Valid now...
    assert_eq!(within(10, try_connect(server.addr, config.clone())).await, Ok(200));
    // ...refused once the (injected) clock passes its expiry; the server cert is still valid.
    pki.clock.advance(Duration::from_secs(2 * 3600));
    let result = within(10, try_connect(server.addr, config)).await;
    assert!(result.is_err(), "expired certificate accepted: {result:?}");
}

#[tokio::test]
async fn wrong_server_identity_is_refused_by_the_client() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let impostor_expected = id("default", "payments");
    let err = within(
        10,
        pool.connect(key("p", &client_id, &impostor_expected, server.addr), TunnelRequest::new(server.addr)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HboneError::Tls { .. }), "got {err:?}");
    assert!(err.to_string().contains("payments") || format!("{err:?}").contains("WrongIdentity"), "{err:?}");
    assert!(server.hook.seen.lock().unwrap().is_empty());
    assert_eq!(pool.connection_count(), 0);
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let pki = Pki::new();
    let server_id = id("default", "server");
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let good = mint(&pki, |_| {});
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SvidServerVerifier::new(
            pki.bundle(),
            vec![server_id],
            pki.shared_clock(),
        )))
        .with_client_auth_cert(good.0, good.1)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let result = within(10, try_connect(server.addr, config)).await;
    let err = result.expect_err("TLS 1.2 must be refused");
    assert!(err.contains("tls"), "refused during the handshake: {err}");
}

/// L3: a second mesh's root in our bundle (federated roots, `extra_roots`) must not let that
/// mesh's `spiffe://other.td/ns/shop/sa/x` in: policies name `shop` without a trust domain.
/// Accepted only when the server lists `other.td` explicitly.
#[tokio::test]
async fn a_peer_from_another_trust_domain_is_refused_unless_allowed() {
    let pki = Pki::new();
    let (other_ca, _) = mesh::ca::EmbeddedCa::generate("other.td", pki.shared_clock()).unwrap();
    let both = pki.bundle().merged(&TrustBundle::new(other_ca.roots().to_vec()).unwrap()).unwrap();
    let server_id = id("default", "server");
    // Our server's certificate, with both roots in its bundle.
    let server_cert = || {
        let csr = mesh::ca::generate_csr(&server_id).unwrap();
        let chain = pki.ca.sign_csr(&server_id, &csr.csr_pem, DAY).unwrap().chain;
        mesh::tls::WorkloadCert::new(chain, csr.key, both.clone()).unwrap()
    };
    let foreign = Identity::new("other.td", "shop", "x").unwrap();
    let csr = mesh::ca::generate_csr(&foreign).unwrap();
    let chain = other_ca.sign_csr(&foreign, &csr.csr_pem, DAY).unwrap().chain;
    let client =
        || config_with(Some((chain.clone(), csr.key.clone_key())), pki.bundle(), server_id.clone(), pki.shared_clock());

    let server = start_server(server_cert(), pki.shared_clock(), RecordingHook::default()).await;
    let result = within(10, try_connect(server.addr, client())).await;
    assert!(result.is_err(), "a foreign trust domain got in: {result:?}");
    assert!(server.hook.seen.lock().unwrap().is_empty());

    let hook = Arc::new(RecordingHook::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let federated = mesh::hbone::HboneServer::builder(server_cert(), hook.clone(), Arc::new(EchoDialer::default()))
        .clock(pki.shared_clock())
        .allowed_trust_domains(["other.td".to_owned()])
        .build();
    tokio::spawn(federated.serve(listener, stop.clone()));
    assert_eq!(within(10, try_connect(addr, client())).await, Ok(200), "explicitly allowed");
    assert_eq!(hook.seen.lock().unwrap()[0].peer_identity, foreign);
    stop.cancel();
}
