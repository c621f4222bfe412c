//! Refusals: each malformed or unauthorized request gets ztunnel's status, nothing is
//! dialled, and other tunnels on the server carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mesh::hbone::{HboneError, HboneServer, TcpUpstream, TunnelRequest};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::peer_certs::config_with;
use crate::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// An authenticated HTTP/2 session to `addr`, for sending hand-made requests.
async fn session(pki: &Pki, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = pki.ca.sign_csr(&identity, &csr.csr_pem, DAY).unwrap();
    let config = config_with(Some((issued.chain, csr.key)), pki.bundle(), id("default", "server"), pki.shared_clock());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config)).connect(ServerName::IpAddress(addr.ip().into()), tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn status_of(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<http::Response<h2::RecvStream>, h2::Error> {
    let mut ready = send.clone().ready().await?;
    let (resp, _body) = ready.send_request(req, false)?;
    resp.await
}

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder().method(http::Method::CONNECT).uri(authority).body(()).unwrap()
}

async fn server(pki: &Pki, hook: RecordingHook) -> TestServer {
    start_server(pki.issue(&id("default", "server"), DAY).await, pki.shared_clock(), hook).await
}

#[tokio::test]
async fn non_connect_and_bad_ports_get_400_with_only_a_status() {
    let pki = Pki::new();
    let server = server(&pki, RecordingHook::default()).await;
    let mut send = session(&pki, server.addr).await;
    let get = http::Request::builder().uri("http://10.0.0.1:80/").body(()).unwrap();
    let resp = within(10, status_of(&mut send, get)).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().is_empty(), "error responses carry only :status");
    for bad in ["10.0.0.1:0", "10.0.0.1:65536"] {
        let resp = within(10, status_of(&mut send, connect(bad))).await;
        match resp {
            Ok(r) => assert_eq!(r.status(), 400, "{bad}"),
            // h2 itself may refuse an authority it cannot parse: also a clean refusal.
            Err(e) => assert!(e.is_reset() || !e.is_io(), "{bad}: {e}"),
        }
    }
    assert_eq!(server.dialer.dials.load(Ordering::SeqCst), 0);
    assert!(server.hook.seen.lock().unwrap().is_empty(), "malformed requests never reach the hook");
    // The same connection still serves a good tunnel.
    let resp = within(10, status_of(&mut send, connect("10.0.0.1:80"))).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn connect_without_authority_is_refused_cleanly() {
    let pki = Pki::new();
    let server = server(&pki, RecordingHook::default()).await;
    let mut send = session(&pki, server.addr).await;
    let req = http::Request::builder().method(http::Method::CONNECT).uri("/").body(()).unwrap();
    match within(10, status_of(&mut send, req)).await {
        Ok(r) => assert_eq!(r.status(), 400),
        Err(e) => assert!(e.is_reset() || !e.is_io(), "unexpected failure: {e}"),
    }
    assert_eq!(server.dialer.dials.load(Ordering::SeqCst), 0);
    let resp = within(10, status_of(&mut send, connect("10.0.0.1:80"))).await.unwrap();
    assert_eq!(resp.status(), 200, "the connection survives");
}

#[tokio::test]
async fn header_list_over_64_kib_gets_431() {
    let pki = Pki::new();
    let server = server(&pki, RecordingHook::default()).await;
    let mut send = session(&pki, server.addr).await;
    let mut req = connect("10.0.0.1:80");
    req.headers_mut().insert("x-padding", "a".repeat(70 * 1024).parse().unwrap());
    let resp = within(10, status_of(&mut send, req)).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(server.dialer.dials.load(Ordering::SeqCst), 0);
    let resp = within(10, status_of(&mut send, connect("10.0.0.1:80"))).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn hook_refusal_gets_401_and_nothing_is_dialled() {
    let pki = Pki::new();
    let hook = RecordingHook { deny_ports: vec![22], ..Default::default() };
    let server = server(&pki, hook).await;
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let err = within(
        10,
        pool.connect(
            key("p", &client_id, &server_id, server.addr),
            TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 22))),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HboneError::Refused { status: 401, .. }), "{err:?}");
    assert_eq!(server.dialer.dials.load(Ordering::SeqCst), 0, "a refused CONNECT dials nothing");
    assert_eq!(server.hook.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn upstream_refusal_gets_503() {
    let pki = Pki::new();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_id = id("default", "server");
    let server =
        HboneServer::builder(pki.issue(&server_id, DAY).await, Arc::new(RecordingHook::default()), TcpUpstream)
            .clock(pki.shared_clock())
            .build();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    let client_id = id("default", "client");
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let err =
        within(10, pool.connect(key("p", &client_id, &server_id, addr), TunnelRequest::new(closed))).await.unwrap_err();
    assert!(matches!(err, HboneError::Refused { status: 503, .. }), "{err:?}");
    stop.cancel();
}

#[tokio::test]
async fn garbage_and_http1_are_refused_and_other_tunnels_carry_on() {
    let pki = Pki::new();
    let server = server(&pki, RecordingHook::default()).await;
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let k = key("p", &client_id, &server_id, server.addr);
    let mut live = pool.connect(k.clone(), TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))).await.unwrap();
    live.write_all(b"before").await.unwrap();

    // Garbage instead of a TLS ClientHello: the server closes the socket.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]).await.unwrap();
    let mut sink = Vec::new();
    let _ = within(10, raw.read_to_end(&mut sink)).await;

    // Plain-text HTTP/1.1 instead of TLS.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = within(10, raw.read_to_end(&mut reply)).await;
    assert!(!reply.starts_with(b"HTTP/1.1 200"), "HTTP/1.1 must not open a tunnel");

    // TLS offering ALPN http/1.1 only: refused in the handshake (no_application_protocol).
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = pki.ca.sign_csr(&identity, &csr.csr_pem, DAY).unwrap();
    let mut config = config_with(Some((issued.chain, csr.key)), pki.bundle(), server_id.clone(), pki.shared_clock());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = within(
        10,
        TlsConnector::from(Arc::new(config.clone())).connect(ServerName::IpAddress(server.addr.ip().into()), tcp),
    )
    .await;
    assert!(tls.is_err(), "ALPN http/1.1 must fail the handshake");

    // TLS without ALPN, then HTTP/1.1 text: the server closes without answering.
    config.alpn_protocols.clear();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    if let Ok(mut tls) =
        within(10, TlsConnector::from(Arc::new(config)).connect(ServerName::IpAddress(server.addr.ip().into()), tcp))
            .await
    {
        let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut reply = Vec::new();
        let _ = within(10, tls.read_to_end(&mut reply)).await;
        assert!(reply.is_empty(), "no HTTP/1.1 answer expected, got {:?}", String::from_utf8_lossy(&reply));
    }

    // The tunnel opened before all that still works, and new ones open.
    live.write_all(b" after").await.unwrap();
    assert_eq!(within(10, round_trip(&mut live, b"")).await, b"before after");
    let mut fresh = pool.connect(k, TunnelRequest::new(SocketAddr::from(([10, 0, 0, 2], 80)))).await.unwrap();
    assert_eq!(within(10, round_trip(&mut fresh, b"fresh")).await, b"fresh");
    assert_eq!(server.hook.seen.lock().unwrap().len(), 2, "only the two real tunnels reached the hook");
}

#[tokio::test]
async fn rapid_resets_get_goaway_enhance_your_calm() {
    let pki = Pki::new();
    let server = HboneServer::builder(
        pki.issue(&id("default", "server"), DAY).await,
        Arc::new(RecordingHook::default()),
        Arc::new(EchoDialer::default()),
    )
    .clock(pki.shared_clock())
    .build();
    // Accept by hand to observe how the server ends this one connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (s, peer) = listener.accept().await.unwrap();
        let local = s.local_addr().unwrap();
        server.serve_connection(s, peer, local, CancellationToken::new()).await
    });
    let identity = id("default", "client");
    let csr = mesh::ca::generate_csr(&identity).unwrap();
    let issued = pki.ca.sign_csr(&identity, &csr.csr_pem, DAY).unwrap();
    let config = config_with(Some((issued.chain, csr.key)), pki.bundle(), id("default", "server"), pki.shared_clock());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config)).connect(ServerName::IpAddress(addr.ip().into()), tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    // Open and immediately cancel streams, as the HTTP/2 "rapid reset" attack does.
    for _ in 0..200 {
        let Ok(mut ready) = send.clone().ready().await else { break };
        let Ok((_resp, mut stream)) = ready.send_request(connect("10.0.0.1:80"), false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = within(10, served).await.unwrap();
    match ended {
        Err(HboneError::H2(e)) => {
            assert!(e.is_go_away(), "{e:?}");
            assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e:?}");
        }
        other => panic!("expected GOAWAY(ENHANCE_YOUR_CALM), got {other:?}"),
    }
}

/// Never completes a dial, like a SYN into a black hole.
struct BlackHoleUpstream;

#[async_trait::async_trait]
impl mesh::hbone::UpstreamDialer for BlackHoleUpstream {
    type Stream = TcpStream;
    async fn dial(&self, _request: &mesh::hbone::ConnectRequest) -> std::io::Result<TcpStream> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_hanging_upstream_dial_gets_503_and_the_refusal_ends_with_rst_no_error() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HboneServer::builder(
        pki.issue(&id("default", "server"), DAY).await,
        Arc::new(RecordingHook::default()),
        BlackHoleUpstream,
    )
    .clock(pki.shared_clock())
    .upstream_timeout(Duration::from_millis(100))
    .build();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    let send = session(&pki, addr).await;
    let mut ready = send.ready().await.unwrap();
    let (resp, mut stream) = ready.send_request(connect("10.0.0.1:80"), false).unwrap();
    let resp = within(10, resp).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().is_empty(), "error responses carry only :status");
    // ztunnel's shape: after the status, RST_STREAM(NO_ERROR) tells us to stop sending.
    let reason = within(10, std::future::poll_fn(|cx| stream.poll_reset(cx))).await.unwrap();
    assert_eq!(reason, h2::Reason::NO_ERROR);
    stop.cancel();
}
