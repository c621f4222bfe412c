//! The Istio CA API over real gRPC on loopback: our client against our server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::ca::{
    CaError, CaServer, CertificateSource, IstioCaClient, IstioCaConfig, SignRequest, StaticAllowList, TokenSource,
    generate_csr,
};
use mesh::certs::{CertManager, CertManagerConfig, CertMetrics};
use mesh::hbone::TunnelRequest;
use mesh::tls::identity_of;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const AGENT_TOKEN: &str = "node-a-agent-token";

async fn ca_server(pki: &Pki) -> (SocketAddr, CancellationToken) {
    let allow = StaticAllowList::new().allow(
        AGENT_TOKEN,
        id("pillion-system", "pillion-agent"),
        [id("default", "client"), id("default", "server")],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = CaServer::new(pki.ca.clone(), allow);
    tokio::spawn(async move { server.serve(listener, shutdown.cancelled_owned()).await });
    (addr, stop)
}

fn client(addr: SocketAddr, token: TokenSource, impersonate: bool) -> IstioCaClient {
    let mut config = IstioCaConfig::new(format!("http://{addr}"), token);
    config.impersonate = impersonate;
    config.cluster_id = Some("Kubernetes".into());
    IstioCaClient::new(config).unwrap()
}

async fn ask(client: &IstioCaClient, identity: &mesh::Identity) -> Result<mesh::ca::IssuedChain, CaError> {
    let csr = generate_csr(identity).unwrap();
    client
        .sign(SignRequest { identity: identity.clone(), csr_pem: csr.csr_pem, lifetime: Duration::from_secs(3600) })
        .await
}

#[tokio::test]
async fn ca_client_gets_impersonated_certificates_and_sees_refusals() {
    let pki = Pki::new();
    let (addr, stop) = ca_server(&pki).await;
    let agent = client(addr, TokenSource::Static(AGENT_TOKEN.into()), true);

    let issued = within(10, ask(&agent, &id("default", "client"))).await.unwrap();
    assert_eq!(identity_of(&issued.chain[0]).unwrap(), id("default", "client"));
    assert_eq!(issued.roots, pki.ca.roots(), "the root travels last in cert_chain");
    assert_eq!(issued.chain.len(), 2, "leaf and intermediate");

    // An identity the agent may not act for.
    let err = within(10, ask(&agent, &id("payments", "api"))).await.unwrap_err();
    assert!(matches!(err, CaError::PermissionDenied(_)), "{err:?}");
    // A token the CA does not know, and no token at all.
    let stranger = client(addr, TokenSource::Static("forged".into()), true);
    let err = within(10, ask(&stranger, &id("default", "client"))).await.unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated(_)), "{err:?}");
    let anonymous = client(addr, TokenSource::None, true);
    let err = within(10, ask(&anonymous, &id("default", "client"))).await.unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated(_)), "{err:?}");
    // A CSR that is not one.
    let err = within(
        10,
        agent.sign(SignRequest {
            identity: id("default", "client"),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            lifetime: Duration::from_secs(3600),
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err:?}");
    // Without impersonation the CA issues the caller's own identity.
    let own = client(addr, TokenSource::Static(AGENT_TOKEN.into()), false);
    let issued = within(10, ask(&own, &id("default", "client"))).await.unwrap();
    assert_eq!(identity_of(&issued.chain[0]).unwrap(), id("pillion-system", "pillion-agent"));
    stop.cancel();
}

#[tokio::test]
async fn unreachable_ca_is_a_transport_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let agent = client(closed, TokenSource::Static(AGENT_TOKEN.into()), true);
    let err = within(10, ask(&agent, &id("default", "client"))).await.unwrap_err();
    assert!(matches!(err, CaError::Transport { .. }), "{err:?}");
}

#[tokio::test]
async fn token_file_is_read_per_request() {
    let pki = Pki::new();
    let (addr, stop) = ca_server(&pki).await;
    let path = std::env::temp_dir().join(format!("pillion-token-{}", std::process::id()));
    std::fs::write(&path, "stale\n").unwrap();
    let agent = client(addr, TokenSource::File(path.clone()), true);
    let err = within(10, ask(&agent, &id("default", "client"))).await.unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated(_)), "{err:?}");
    std::fs::write(&path, format!("{AGENT_TOKEN}\n")).unwrap();
    within(10, ask(&agent, &id("default", "client"))).await.unwrap();
    let _ = std::fs::remove_file(path);
    stop.cancel();
}

#[tokio::test]
async fn hbone_works_with_certificates_from_the_grpc_ca() {
    let pki = Pki::new();
    let (addr, stop) = ca_server(&pki).await;
    let source = Arc::new(client(addr, TokenSource::Static(AGENT_TOKEN.into()), true));
    let certs = CertManager::new(
        source,
        CertManagerConfig { clock: pki.shared_clock(), ..CertManagerConfig::default() },
        CertMetrics::default(),
    );
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server_cert = within(10, certs.fetch(&server_id)).await.unwrap();
    let server = start_server(server_cert, pki.shared_clock(), RecordingHook::default()).await;
    let pool = mesh::hbone::Pool::new(
        mesh::hbone::PoolConfig { clock: pki.shared_clock(), ..Default::default() },
        mesh::hbone::DirectTcpDialer,
        Arc::new(certs.clone()),
    );
    let mut t = within(
        10,
        pool.connect(
            key("p", &client_id, &server_id, server.addr),
            TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80))),
        ),
    )
    .await
    .unwrap();
    assert_eq!(round_trip(&mut t, b"via grpc ca").await, b"via grpc ca");
    // A workload the agent may not impersonate gets no certificate.
    let err = within(10, certs.fetch(&id("payments", "api"))).await.unwrap_err();
    assert!(err.to_string().contains("may not"), "{err}");
    stop.cancel();
}

#[tokio::test]
async fn ca_client_talks_tls_to_the_ca_server() {
    let pki = Pki::new();
    let (chain, key) = pki.ca.serving_cert(&["pillion-ca.pillion-system.svc"], Duration::from_secs(3600)).unwrap();
    let allow =
        StaticAllowList::new().allow(AGENT_TOKEN, id("pillion-system", "pillion-agent"), [id("default", "client")]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = CaServer::new(pki.ca.clone(), allow);
    tokio::spawn(async move { server.serve_tls(listener, chain, key, shutdown.cancelled_owned()).await });

    let config = |domain: &str| {
        let mut c = IstioCaConfig::new(format!("https://{addr}"), TokenSource::Static(AGENT_TOKEN.into()));
        c.tls = Some(mesh::ca::CaClientTls { roots_pem: pki.ca.roots_pem(), domain: domain.into() });
        c
    };
    let agent = IstioCaClient::new(config("pillion-ca.pillion-system.svc")).unwrap();
    let issued = within(10, ask(&agent, &id("default", "client"))).await.unwrap();
    assert_eq!(identity_of(&issued.chain[0]).unwrap(), id("default", "client"));
    // The CA's certificate does not name this host: the client refuses to talk.
    let wrong = IstioCaClient::new(config("istiod.istio-system.svc")).unwrap();
    let err = within(10, ask(&wrong, &id("default", "client"))).await.unwrap_err();
    assert!(matches!(err, CaError::Transport { .. }), "{err:?}");
    // A token is never sent in plaintext off loopback.
    let plain = IstioCaConfig::new("http://10.0.0.1:15012", TokenSource::Static(AGENT_TOKEN.into()));
    assert!(IstioCaClient::new(plain).is_err());
    stop.cancel();
}
