//! A small HTTP/1.1 server for the telemetry endpoints, and the three endpoints themselves.
//!
//! The transport ([`HttpServer`]) owns everything untrusted input can reach — header size and
//! read deadline, body size and read deadline, connection count — so an [`Endpoint`] is a plain
//! synchronous function from a fully read, bounded request to a response, easy to test and
//! unable to stall the server.
//!
//! Stop is graceful: on cancellation the listener closes, each connection finishes the
//! request in flight (keep-alive ends), and anything still open after [`DRAIN_DEADLINE`] is
//! dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TelemetryError;

mod conns;
mod endpoints;
mod query;
#[cfg(test)]
mod tests;

pub use endpoints::{AdminEndpoint, MetricsEndpoint, OPENMETRICS_CONTENT_TYPE, ReadinessEndpoint};

/// Largest request body read; the endpoints take parameters in the query, so this is generous.
pub const MAX_BODY: usize = 16 * 1024;
/// Buffer for the request head (hyper answers 431 past it; 8 KiB is hyper's minimum).
const MAX_HEAD: usize = 16 * 1024;
/// A client gets this long to send its head, and again its body (slow-loris guard).
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Connections held at once per server. At the cap a new client is still served: the oldest
/// idle connection is closed for it (or the oldest of all when none is idle), so clients that
/// hold keep-alive connections open cannot keep a readiness probe or a scrape out.
const MAX_CONNECTIONS: usize = 64;
/// After a stop, how long open connections may take to finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// One HTTP endpoint set: a pure function of a bounded, fully read request.
pub trait Endpoint: Send + Sync + 'static {
    /// For logs, e.g. "metrics".
    fn name(&self) -> &'static str;
    fn handle(&self, request: &Request<Bytes>) -> Response<Full<Bytes>>;
    /// Endpoints that change state or reveal configuration refuse to listen beyond loopback.
    fn loopback_only(&self) -> bool {
        false
    }
}

/// A bound, not yet serving, HTTP server. Binding first lets the caller learn the address
/// (port 0 in tests) and fail startup on a taken port before anything runs.
pub struct HttpServer {
    listener: TcpListener,
    endpoint: Arc<dyn Endpoint>,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr, endpoint: impl Endpoint) -> Result<Self, TelemetryError> {
        if endpoint.loopback_only() && !addr.ip().is_loopback() {
            return Err(TelemetryError::NotLoopback { server: endpoint.name(), addr });
        }
        let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
        Self::from_listener(listener, endpoint)
    }

    /// Serves on a listener the caller opened (e.g. with `SO_REUSEPORT`, or inside another
    /// network namespace). The loopback check of [`HttpServer::bind`] applies here too, on the
    /// address the listener is bound to: every way to build a server goes through it.
    pub fn from_listener(listener: TcpListener, endpoint: impl Endpoint) -> Result<Self, TelemetryError> {
        if endpoint.loopback_only() {
            let addr = listener
                .local_addr()
                .map_err(|source| TelemetryError::Bind { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
            if !addr.ip().is_loopback() {
                return Err(TelemetryError::NotLoopback { server: endpoint.name(), addr });
            }
        }
        Ok(Self { listener, endpoint: Arc::new(endpoint) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address; the fallback only satisfies types.
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.serve(stop))
    }

    /// Serves until `stop` is cancelled, then drains (see the module docs).
    pub async fn serve(self, stop: CancellationToken) {
        let name = self.endpoint.name();
        let addr = self.local_addr();
        tracing::info!(server = name, %addr, "listening");
        let table = conns::Table::new(MAX_CONNECTIONS);
        let tracker = TaskTracker::new();
        let mut backoff = crate::limits::AcceptBackoff::new(name);
        loop {
            let (stream, _peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = backoff.accept(&self.listener) => accepted,
            };
            let (conn, evicted) = table.admit();
            if evicted {
                tracing::debug!(
                    server = name,
                    max = MAX_CONNECTIONS,
                    "connection cap reached: closed the oldest idle one"
                );
            }
            let endpoint = self.endpoint.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                serve_connection(stream, endpoint, stop, &conn).await;
            });
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
        tracing::info!(server = name, %addr, "stopped");
    }
}

async fn serve_connection(stream: TcpStream, endpoint: Arc<dyn Endpoint>, stop: CancellationToken, me: &conns::Conn) {
    let activity = me.activity();
    let service = service_fn(move |request| {
        let endpoint = endpoint.clone();
        let busy = activity.busy();
        async move {
            let response = respond(endpoint.as_ref(), request).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(READ_DEADLINE).max_buf_size(MAX_HEAD);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        // Client errors (bad requests, resets, timeouts) end only that client's connection.
        result = conn.as_mut() => if let Err(e) = result {
            tracing::debug!(error = %e, "telemetry connection ended with an error");
        },
        // Closed to make room for a newer client (dropping `conn` closes the socket).
        _ = me.evicted() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_DEADLINE, conn).await;
        }
    }
}

/// Reads the body within its bounds, then hands the request to the endpoint.
async fn respond(endpoint: &dyn Endpoint, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let declared_too_big = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > MAX_BODY as u64);
    if declared_too_big {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes\n"));
    }
    let body = match tokio::time::timeout(READ_DEADLINE, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes\n"));
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("unreadable request body: {e}\n")),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n"),
    };
    endpoint.handle(&Request::from_parts(head, body))
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.into().into_bytes())
}

pub(crate) fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn not_found(path: &str) -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n"))
}

/// 405 with the `Allow` header RFC 9110 requires.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed; use {allow}\n"));
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Answers a `GET` with `respond()`, any other method with 405.
pub(crate) fn get_only(
    request: &Request<Bytes>,
    respond: impl FnOnce() -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    if request.method() == Method::GET { respond() } else { method_not_allowed("GET") }
}
