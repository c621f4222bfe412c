//! One tunnel's HTTP: both protocols served, and malformed or abusive input refused on that
//! tunnel alone while other tunnels keep working. Real (not paused) time, no sleeps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::{ServeLimits, serve_http};
use crate::proxy::Proxy;
use crate::testing::{Scripted, downstream, proxy, route};

const HOST: &str = "reviews.shop.svc.cluster.local";

fn setup() -> (Arc<Proxy>, Arc<Scripted>) {
    let up = Scripted::ok();
    (proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone()), up)
}

/// A new tunnel into the proxy: the client's end and the server task.
fn tunnel(p: &Arc<Proxy>) -> (DuplexStream, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(1024 * 1024);
    let task = tokio::spawn(serve_http(p.clone(), server, downstream(&format!("{HOST}:80")), ServeLimits::default()));
    (client, task)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("timed out")
}

/// A full HTTP/1.1 exchange on a fresh tunnel; returns the status.
async fn h1_get(p: &Arc<Proxy>, path: &str) -> u16 {
    let (io, _task) = tunnel(p);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", HOST).body(Empty::<Bytes>::new()).unwrap();
    let r = within(send.send_request(req)).await.unwrap();
    let status = r.status().as_u16();
    let _ = r.into_body().collect().await;
    status
}

async fn raw_exchange(p: &Arc<Proxy>, bytes: &[u8]) -> String {
    let (mut io, task) = tunnel(p);
    let _ = io.write_all(bytes).await;
    let mut reply = Vec::new();
    let _ = within(io.read_to_end(&mut reply)).await;
    let _ = within(task).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn serves_http1_and_http2_prior_knowledge_on_tunnels() {
    let (p, up) = setup();
    assert_eq!(h1_get(&p, "/one").await, 200);

    let (io, _task) = tunnel(&p);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{HOST}/two")).body(Empty::<Bytes>::new()).unwrap();
    let r = within(send.send_request(req)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "reviews /two");
    let grpc = Request::post(format!("http://{HOST}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(within(send.send_request(grpc)).await.unwrap().status(), 200);
    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    // The port is named `http`: HTTP/1.1 to the endpoints whatever the client spoke, except
    // gRPC, which needs HTTP/2.
    assert!(!calls[0].target.http2);
    assert!(!calls[1].target.http2);
    assert!(calls[2].target.http2);
}

#[tokio::test]
async fn malformed_http1_gets_400_and_other_tunnels_carry_on() {
    let (p, up) = setup();
    // A tunnel opened before the abuse, used after it.
    let (io, _task) = tunnel(&p);
    let (mut live, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);

    let reply = raw_exchange(&p, b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let reply = raw_exchange(&p, b"\x00\x01\x02 garbage\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400") || reply.is_empty(), "{reply:?}");
    assert!(up.calls().is_empty(), "nothing malformed reached a backend");

    let req = Request::get("/after").header("host", HOST).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(within(live.send_request(req)).await.unwrap().status(), 200);
    assert_eq!(h1_get(&p, "/fresh").await, 200);
}

#[tokio::test]
async fn oversized_http1_headers_get_431() {
    let (p, up) = setup();
    let mut request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ").into_bytes();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let reply = raw_exchange(&p, &request).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    assert!(up.calls().is_empty());
    assert_eq!(h1_get(&p, "/fresh").await, 200);
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_enhance_your_calm() {
    let (p, _up) = setup();
    let (io, task) = tunnel(&p);
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..500 {
        let Ok(mut ready) = send.clone().ready().await else { break };
        let req = Request::get(format!("http://{HOST}/")).body(()).unwrap();
        let Ok((_resp, mut stream)) = ready.send_request(req, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = within(conn).await.unwrap();
    let e = ended.expect_err("the server must end the connection");
    assert!(e.is_go_away(), "{e:?}");
    assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e:?}");
    within(task).await.unwrap();
    assert_eq!(h1_get(&p, "/fresh").await, 200);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_continuation_flood_is_refused_without_reaching_a_backend() {
    let (p, up) = setup();
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const SETTINGS: u8 = 0x4;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(SETTINGS, 0, 0, &[]));
    // :method GET, :scheme http, :path / (static table), :authority literal.
    let mut first = vec![0x82, 0x86, 0x84, 0x41, HOST.len() as u8];
    first.extend_from_slice(HOST.as_bytes());
    wire.extend(frame(HEADERS, END_STREAM, 1, &first));
    // 200 × ~1 KB literal headers: ~200 KB of header list against a 64 KiB limit.
    let mut literal = vec![0x00, 0x03, b'x', b'-', b'f', 0x7f, 0xE9, 0x06];
    literal.extend(std::iter::repeat_n(b'v', 1000));
    for i in 0..200 {
        let flags = if i == 199 { END_HEADERS } else { 0 };
        wire.extend(frame(CONTINUATION, flags, 1, &literal));
    }
    let (mut io, task) = tunnel(&p);
    let _ = io.write_all(&wire).await;
    let mut reply = Vec::new();
    let _ = within(io.read_to_end(&mut reply)).await;
    within(task).await.unwrap();
    assert!(up.calls().is_empty(), "the flooded request must not reach a backend");
    assert_eq!(h1_get(&p, "/fresh").await, 200);
}
