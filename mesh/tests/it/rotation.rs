//! Certificate rotation with an injected clock: renewal at half-life while tunnels run, and
//! the old certificate kept (with a metric) while renewal fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mesh::ca::{CaError, CertificateSource, IssuedChain, SignRequest};
use mesh::certs::{CertManager, CertManagerConfig, CertMetrics, CertState};
use mesh::hbone::{HboneServer, Pool, PoolConfig, TunnelRequest};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const HOUR: Duration = Duration::from_secs(3600);

fn manager(pki: &Pki, source: Arc<dyn CertificateSource>, metrics: CertMetrics) -> CertManager {
    let config = CertManagerConfig { lifetime: HOUR, clock: pki.shared_clock(), ..CertManagerConfig::default() };
    CertManager::new(source, config, metrics)
}

async fn serial_changes(m: &CertManager, identity: &mesh::Identity, old: &[u8]) -> Vec<u8> {
    let mut rx = m.subscribe(identity);
    let state =
        within(10, rx.wait_for(|s| matches!(s, CertState::Ready(c) if c.serial() != old))).await.unwrap().clone();
    match state {
        CertState::Ready(c) => c.serial().to_vec(),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_at_half_life_while_tunnels_run() {
    let pki = Pki::new();
    let certs = manager(&pki, pki.ca.clone(), CertMetrics::default());
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HboneServer::builder(
        (certs.clone(), server_id.clone()),
        Arc::new(RecordingHook::default()),
        Arc::new(EchoDialer::default()),
    )
    .clock(pki.shared_clock())
    .build();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    let pool = Pool::new(
        PoolConfig { clock: pki.shared_clock(), ..PoolConfig::default() },
        mesh::hbone::DirectTcpDialer,
        Arc::new(certs.clone()),
    );
    let target = || TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)));
    let mut running = Vec::new();
    for _ in 0..8 {
        let mut t = pool.connect(key("p1", &client_id, &server_id, addr), target()).await.unwrap();
        t.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        t.read_exact(&mut one).await.unwrap();
        running.push(t);
    }
    let old_client = certs.current(&client_id).unwrap().serial().to_vec();
    let old_server = certs.current(&server_id).unwrap().serial().to_vec();

    // Past half-life (30 min of a 1 h certificate): both identities renew.
    pki.clock.advance(Duration::from_secs(31 * 60));
    let new_client = serial_changes(&certs, &client_id, &old_client).await;
    let new_server = serial_changes(&certs, &server_id, &old_server).await;
    assert_ne!(new_client, old_client);
    assert_ne!(new_server, old_server);

    // Beyond the old certificates' expiry: running tunnels keep flowing, and a new
    // connection handshakes with the renewed certificates on both sides.
    pki.clock.advance(Duration::from_secs(31 * 60));
    for t in &mut running {
        t.write_all(b"y").await.unwrap();
        let mut one = [0u8; 1];
        within(10, t.read_exact(&mut one)).await.unwrap();
        assert_eq!(&one, b"y");
    }
    let mut fresh = within(10, pool.connect(key("p2", &client_id, &server_id, addr), target())).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"new cert").await, b"new cert");
    for mut t in running {
        assert_eq!(within(10, round_trip(&mut t, b"z")).await, b"z");
    }
    stop.cancel();
}

/// Fails on demand and reports each call.
struct Flaky {
    inner: Arc<mesh::ca::EmbeddedCa>,
    fail: AtomicBool,
    calls: mpsc::UnboundedSender<bool>,
}

#[async_trait]
impl CertificateSource for Flaky {
    async fn sign(&self, request: SignRequest) -> Result<IssuedChain, CaError> {
        let failing = self.fail.load(Ordering::SeqCst);
        let _ = self.calls.send(failing);
        if failing {
            return Err(CaError::Transport { endpoint: "test".into(), message: "CA down".into() });
        }
        self.inner.sign(request).await
    }
}

#[tokio::test]
async fn failed_renewal_keeps_the_old_certificate_counts_and_retries() {
    let pki = Pki::new();
    let (tx, mut calls) = mpsc::unbounded_channel();
    let source = Arc::new(Flaky { inner: pki.ca.clone(), fail: AtomicBool::new(false), calls: tx });
    let mut registry = Registry::default();
    let metrics = CertMetrics::register(&mut registry);
    let certs = manager(&pki, source.clone(), metrics.clone());
    let identity = id("default", "client");
    let first = certs.fetch(&identity).await.unwrap();
    assert_eq!(calls.recv().await, Some(false));

    source.fail.store(true, Ordering::SeqCst);
    pki.clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(within(10, calls.recv()).await, Some(true));
    // Backoff starts at 1 s on the injected clock; the second call proves the first
    // failure was fully handled (counted, old certificate kept).
    pki.clock.advance(Duration::from_secs(1));
    assert_eq!(within(10, calls.recv()).await, Some(true));
    assert!(metrics.renewal_failures.get() >= 1);
    assert_eq!(certs.current(&identity).unwrap().serial(), first.serial(), "old certificate kept");
    assert_eq!(certs.fetch(&identity).await.unwrap().serial(), first.serial());

    source.fail.store(false, Ordering::SeqCst);
    pki.clock.advance(Duration::from_secs(2));
    assert_eq!(within(10, calls.recv()).await, Some(false));
    serial_changes(&certs, &identity, first.serial()).await;
    assert_eq!(metrics.renewal_failures.get(), 2);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("pillion_certificate_renewal_failures_total 2"), "{text}");

    certs.forget(&identity);
    assert!(certs.current(&identity).is_none());
    assert!(certs.identities().is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_not_served_while_renewal_keeps_failing() {
    let pki = Pki::new();
    let (tx, mut calls) = mpsc::unbounded_channel();
    let source = Arc::new(Flaky { inner: pki.ca.clone(), fail: AtomicBool::new(false), calls: tx });
    let config = CertManagerConfig {
        lifetime: HOUR,
        clock: pki.shared_clock(),
        // Backoff longer than the remaining life, so the next attempt lands after expiry.
        initial_backoff: Duration::from_secs(40 * 60),
        max_backoff: Duration::from_secs(40 * 60),
        ..CertManagerConfig::default()
    };
    let certs = CertManager::new(source.clone(), config, CertMetrics::default());
    let identity = id("default", "client");
    certs.fetch(&identity).await.unwrap();
    assert_eq!(calls.recv().await, Some(false));
    source.fail.store(true, Ordering::SeqCst);
    pki.clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(within(10, calls.recv()).await, Some(true));
    // 71 min: past the 59 min expiry; the retry fails too and the state turns Failed.
    pki.clock.advance(Duration::from_secs(40 * 60));
    assert_eq!(within(10, calls.recv()).await, Some(true));
    let mut rx = certs.subscribe(&identity);
    within(10, rx.wait_for(|s| matches!(s, CertState::Failed(_)))).await.unwrap();
    assert!(certs.fetch(&identity).await.is_err());
    assert!(certs.current(&identity).is_none());
}
