//! The HBONE server's bounds: concurrent handshakes, the certificate lookup inside the
//! handshake timeout, idle connections, and a tunnel cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mesh::certs::CertError;
use mesh::hbone::{HboneServer, ServerCertResolver};
use mesh::limits::{ConnLimit, LimitMetrics, PerSourceLimit};
use mesh::tls::WorkloadCert;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::peer_certs::config_with;
use crate::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

type H2Conn = h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

/// An authenticated HTTP/2 session; the caller drives the connection future.
async fn session(pki: &Pki, addr: SocketAddr) -> Result<(h2::client::SendRequest<Bytes>, H2Conn), String> {
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = pki.ca.sign_csr(&identity, &csr.csr_pem, DAY).unwrap();
    let config = config_with(Some((issued.chain, csr.key)), pki.bundle(), id("default", "server"), pki.shared_clock());
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    h2::client::handshake(tls).await.map_err(|e| e.to_string())
}

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder().method(http::Method::CONNECT).uri(authority).body(()).unwrap()
}

async fn serve<R: ServerCertResolver>(
    builder: mesh::hbone::HboneServerBuilder<R, Arc<RecordingHook>, Arc<EchoDialer>>,
) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(builder.build().serve(listener, stop.clone()));
    (addr, stop)
}

fn hook_and_dialer() -> (Arc<RecordingHook>, Arc<EchoDialer>) {
    (Arc::new(RecordingHook::default()), Arc::new(EchoDialer::default()))
}

/// Reads until the server closes; errors (a reset) count as closed too.
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn handshakes_over_the_cap_are_closed_at_once() {
    let pki = Pki::new();
    let (hook, dialer) = hook_and_dialer();
    let metrics = LimitMetrics::default();
    let builder = HboneServer::builder(pki.issue(&id("default", "server"), DAY).await, hook, dialer)
        .clock(pki.shared_clock())
        .handshake_limit(ConnLimit::new("hbone_handshakes", "test", 1, &metrics))
        // Both clients come from 127.0.0.1: this test is about the shared cap.
        .per_source_handshake_limit(PerSourceLimit::new("hbone_handshakes_per_source", 8, &metrics));
    let (addr, _stop) = serve(builder).await;
    // Takes the only handshake slot and never says hello.
    let silent = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    // Without the cap the server would wait the whole handshake timeout (10 s) for it.
    within(3, closed_by_server(second)).await;
    assert_eq!(metrics.counter("hbone_handshakes").get(), 1);
    // The slot comes back when the silent client leaves.
    drop(silent);
    let mut served = false;
    for _ in 0..50 {
        if within(10, session(&pki, addr)).await.is_ok() {
            served = true;
            break;
        }
    }
    assert!(served, "a handshake slot must be released when its client goes away");
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(addr).await.unwrap()
}

#[tokio::test]
async fn one_source_cannot_hold_every_handshake_slot() {
    let pki = Pki::new();
    let (hook, dialer) = hook_and_dialer();
    let metrics = LimitMetrics::default();
    let builder = HboneServer::builder(pki.issue(&id("default", "server"), DAY).await, hook, dialer)
        .clock(pki.shared_clock())
        .handshake_limit(ConnLimit::new("hbone_handshakes", "test", 8, &metrics))
        .per_source_handshake_limit(PerSourceLimit::new("hbone_handshakes_per_source", 2, &metrics));
    let (addr, _stop) = serve(builder).await;
    // 127.0.0.3 holds its two slots silently; its third connection is closed at once.
    let _silent = (connect_from([127, 0, 0, 3], addr).await, connect_from([127, 0, 0, 3], addr).await);
    within(3, closed_by_server(connect_from([127, 0, 0, 3], addr).await)).await;
    assert_eq!(metrics.counter("hbone_handshakes_per_source").get(), 1);
    assert_eq!(metrics.counter("hbone_handshakes").get(), 0, "the shared cap was never reached");
    // Everyone else still gets through.
    let _served = within(10, session(&pki, addr)).await.expect("another source is served");
}

/// A resolver stuck on a first issuance.
struct Stuck;

#[async_trait]
impl ServerCertResolver for Stuck {
    async fn resolve(&self, _local: SocketAddr) -> Result<WorkloadCert, CertError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stuck_certificate_lookup_is_bounded_by_the_handshake_timeout() {
    let (hook, dialer) = hook_and_dialer();
    let builder = HboneServer::builder(Stuck, hook, dialer).handshake_timeout(Duration::from_millis(200));
    let (addr, _stop) = serve(builder).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    within(5, closed_by_server(tcp)).await;
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let pki = Pki::new();
    let (hook, dialer) = hook_and_dialer();
    let builder = HboneServer::builder(pki.issue(&id("default", "server"), DAY).await, hook, dialer)
        .clock(pki.shared_clock())
        .idle_timeout(idle);
    let (addr, _stop) = serve(builder).await;
    let (send, conn) = session(&pki, addr).await.unwrap();
    let mut conn = tokio::spawn(conn);
    // An open tunnel keeps the connection: it outlives several idle timeouts.
    let mut ready = send.ready().await.unwrap();
    let (resp, mut body) = ready.send_request(connect("127.0.0.1:80"), false).unwrap();
    assert_eq!(within(5, resp).await.unwrap().status(), 200);
    assert!(tokio::time::timeout(idle * 3, &mut conn).await.is_err(), "closed while a tunnel was open");
    // The tunnel ends; the connection idles and the server closes it.
    body.send_data(Bytes::new(), true).unwrap();
    drop((body, ready));
    // Ended (cleanly or by the close); only the ending matters here.
    let _ = within(5, &mut conn).await.unwrap();
}

#[tokio::test]
async fn tunnels_over_the_cap_get_503() {
    let pki = Pki::new();
    let (hook, dialer) = hook_and_dialer();
    let metrics = LimitMetrics::default();
    let builder = HboneServer::builder(pki.issue(&id("default", "server"), DAY).await, hook.clone(), dialer)
        .clock(pki.shared_clock())
        .tunnel_limit(ConnLimit::new("pod_connections", "test", 1, &metrics));
    let (addr, _stop) = serve(builder).await;
    let (send, conn) = session(&pki, addr).await.unwrap();
    tokio::spawn(conn);
    let mut ready = send.ready().await.unwrap();
    let (first, _first_body) = ready.send_request(connect("127.0.0.1:80"), false).unwrap();
    assert_eq!(within(5, first).await.unwrap().status(), 200);
    let mut ready = ready.ready().await.unwrap();
    let (second, _second_body) = ready.send_request(connect("127.0.0.1:81"), false).unwrap();
    assert_eq!(within(5, second).await.unwrap().status(), 503);
    assert_eq!(metrics.counter("pod_connections").get(), 1);
    assert_eq!(hook.seen.lock().unwrap().len(), 1, "refused before the hook ran");
}
