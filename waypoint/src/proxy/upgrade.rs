//! Upgraded requests: HTTP/1.1 `Upgrade` (WebSocket and others) and HTTP/2 extended CONNECT
//! (RFC 8441). They are judged and routed like any request; the backend is asked with an
//! HTTP/1.1 upgrade (as Envoy does by default), and once it answers 101 the client's stream and
//! the backend's connection are relayed byte for byte until both sides have closed. The request
//! is counted and logged when the relay ends, with the bytes each way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use base64::Engine as _;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::respond::{self, ResponseFlags};
use crate::rng::Rng;
use crate::telemetry::Metered;
use crate::upstream::ResponseBody;

/// A client's request to switch protocols.
pub(super) struct Requested {
    /// `Upgrade` (HTTP/1.1) or `:protocol` (HTTP/2), e.g. `websocket`.
    protocol: HeaderValue,
    /// Extended CONNECT on HTTP/2: answered with 200 rather than 101.
    h2: bool,
    on: OnUpgrade,
}

/// Takes the upgrade a request asks for, if any. `h2c` is not one: the waypoint speaks HTTP/2
/// to a backend only by prior knowledge, and the header is dropped as hop-by-hop.
pub(super) fn requested(parts: &mut http::request::Parts) -> Option<Requested> {
    let (protocol, h2) = if parts.method == Method::CONNECT {
        let p = parts.extensions.get::<hyper::ext::Protocol>()?;
        (HeaderValue::from_str(p.as_str()).ok()?, true)
    } else {
        let asks = parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let p = parts.headers.get(http::header::UPGRADE).filter(|_| asks && parts.version <= http::Version::HTTP_11)?;
        if p.as_bytes().eq_ignore_ascii_case(b"h2c") {
            return None;
        }
        (p.clone(), false)
    };
    let on = parts.extensions.remove::<OnUpgrade>()?;
    Some(Requested { protocol, h2, on })
}

/// Turns the request to the backend into an HTTP/1.1 upgrade (after hop-by-hop headers were
/// stripped from it).
pub(super) fn upstream_head(head: &mut Request<()>, up: &Requested, rng: &Rng) {
    if up.h2 {
        // RFC 8441 has no key; an HTTP/1.1 WebSocket server wants one.
        *head.method_mut() = Method::GET;
        if up.protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
            && !head.headers().contains_key(http::header::SEC_WEBSOCKET_KEY)
        {
            let key: Vec<u8> = [rng.next_u64(), rng.next_u64()].iter().flat_map(|n| n.to_le_bytes()).collect();
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            if let Ok(v) = HeaderValue::from_str(&key) {
                head.headers_mut().insert(http::header::SEC_WEBSOCKET_KEY, v);
            }
        }
    }
    *head.version_mut() = http::Version::HTTP_11;
    head.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers_mut().insert(http::header::UPGRADE, up.protocol.clone());
}

/// The backend switched protocols: answers the client (101, or 200 on HTTP/2) and relays the
/// two in the background. The breaker slot (held by `response`'s body) stays taken until the
/// relay ends.
pub(super) fn relay(
    ctx: &respond::Context,
    up: Requested,
    mut response: Response<ResponseBody>,
    flags: ResponseFlags,
) -> Response<Metered> {
    let backend = hyper::upgrade::on(&mut response);
    let (mut parts, slot) = response.into_parts();
    if up.h2 {
        parts.status = StatusCode::OK;
        parts.headers.remove(http::header::SEC_WEBSOCKET_ACCEPT);
    } else {
        parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(http::header::UPGRADE, up.protocol.clone());
    }
    let record = ctx.record(parts.status, flags);
    let received = ctx.request_bytes.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let sent = Arc::new(AtomicU64::new(0));
        match tokio::try_join!(up.on, backend) {
            Ok((client, backend)) => {
                let mut client = Counted { io: TokioIo::new(client), read: received };
                let mut backend = Counted { io: TokioIo::new(backend), read: sent.clone() };
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "the upgrade did not complete"),
        }
        record.finish(sent.load(Ordering::Relaxed));
    });
    Response::from_parts(parts, Metered::unrecorded(super::text_body("")))
}

/// Counts the bytes read from `io` (what it sent us).
struct Counted<T> {
    io: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
