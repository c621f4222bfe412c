//! Serving HTTP on one tunnel: HTTP/1.1 or HTTP/2 with prior knowledge, told apart by the
//! connection preface (hyper-util's auto builder), with limits that refuse malformed and
//! abusive input on this tunnel alone.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Downstream, Proxy};

#[cfg(test)]
mod tests;

/// Per-tunnel protocol limits. The defaults match the HBONE layer's (design.md §3).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// HTTP/1 read buffer, which bounds the request line plus headers; beyond it: 431.
    pub max_http1_header_bytes: usize,
    /// HTTP/2 header list (decoded, so CONTINUATION floods hit it too).
    pub max_header_list_size: u32,
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before we answer; beyond: GOAWAY (rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// Time for the client to send a complete HTTP/1 request head.
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_http1_header_bytes: 64 * 1024,
            max_header_list_size: mesh::hbone::settings::MAX_HEADER_LIST_SIZE,
            max_concurrent_streams: mesh::hbone::settings::MAX_CONCURRENT_STREAMS,
            max_pending_accept_reset_streams: mesh::hbone::settings::MAX_PENDING_ACCEPT_RESETS,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves HTTP requests arriving on `io` (one tunnel) until the client closes it.
pub async fn serve_http<IO>(proxy: Arc<Proxy>, io: IO, down: Downstream, limits: ServeLimits)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let down = Arc::new(down);
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let down = down.clone();
        async move { Ok::<_, Infallible>(proxy.handle(&down, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_http1_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_list_size)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::debug!(error = %e, "HTTP on tunnel ended with an error");
    }
}
