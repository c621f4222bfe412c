//! Building the client's response: local replies (denials, no route, timeouts) and proxied
//! ones, both wrapped so that the request is measured and logged once it completes.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::{Response, StatusCode};
use mesh::telemetry::{Peer, ServiceRef};
use tokio::time::Instant;

use super::{Proxy, Record, Snapshot, Trace, text_body};
use crate::grpc::GrpcStatus;
use crate::route::ServiceKey;
use crate::telemetry::{Metered, RequestLabels, RequestMetrics};
use crate::upstream::ResponseBody;

/// Envoy's `response_flags` values the waypoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFlags(pub &'static str);

impl ResponseFlags {
    pub const NONE: Self = Self("-");
    /// No route (or no such service).
    pub const NO_ROUTE: Self = Self("NR");
    pub const NO_HEALTHY_UPSTREAM: Self = Self("UH");
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self("UF");
    pub const UPSTREAM_RESET: Self = Self("UR");
    pub const UPSTREAM_TIMEOUT: Self = Self("UT");
    pub const UPSTREAM_OVERFLOW: Self = Self("UO");
    pub const RETRY_LIMIT_EXCEEDED: Self = Self("URX");
    pub const FAULT_ABORT: Self = Self("FI");
    pub const FAULT_DELAY: Self = Self("DI");
    pub const DOWNSTREAM_RESET: Self = Self("DR");
    /// Pillion's own flag (Envoy has none): a retry was due but the request body had outgrown
    /// the retry buffer, so the failed attempt's outcome was passed on.
    pub const RETRY_BUFFER_OVERFLOW: Self = Self("RBO");
    pub const CONNECT_FAILURE_RETRY_BUFFER_OVERFLOW: Self = Self("UF,RBO");
    pub const RESET_RETRY_BUFFER_OVERFLOW: Self = Self("UR,RBO");
    pub const TIMEOUT_RETRY_BUFFER_OVERFLOW: Self = Self("UT,RBO");

    /// These flags with `RBO` added.
    pub fn with_retry_buffer_overflow(self) -> Self {
        match self {
            Self::UPSTREAM_CONNECT_FAILURE => Self::CONNECT_FAILURE_RETRY_BUFFER_OVERFLOW,
            Self::UPSTREAM_RESET => Self::RESET_RETRY_BUFFER_OVERFLOW,
            Self::UPSTREAM_TIMEOUT => Self::TIMEOUT_RETRY_BUFFER_OVERFLOW,
            _ => Self::RETRY_BUFFER_OVERFLOW,
        }
    }
}

/// What is known about a request while it is being served.
pub(crate) struct Context {
    metrics: Option<RequestMetrics>,
    source: Peer,
    pub destination: Peer,
    service: Option<ServiceRef>,
    start: Instant,
    method: String,
    path: String,
    authority: String,
    pub route: String,
    pub upstream: String,
    pub attempts: u32,
    /// Bytes of the request body read so far (counted by its [`Replay`](super::Replay)).
    pub request_bytes: Arc<AtomicU64>,
    /// A fault delay was injected (reported with the final flags).
    pub delayed: bool,
    /// `Forwarded` for the upstream CONNECT (the client's address).
    pub forwarded: Option<String>,
    /// The client's address (for a consistent hash on it).
    pub client: std::net::SocketAddr,
    /// The namespace of the client's verified identity: consumer routes and DestinationRules
    /// of that namespace apply to it.
    pub client_namespace: Option<String>,
    trace: Trace,
    request_id: String,
    /// A gRPC request: local replies carry `grpc-status`.
    pub grpc: bool,
}

impl Context {
    pub fn new(
        proxy: &Arc<Proxy>,
        snapshot: &Snapshot,
        down: &super::Downstream,
        parts: &http::request::Parts,
        start: Instant,
        trace: Trace,
    ) -> Self {
        let source = crate::telemetry::source_peer(&snapshot.model, down.peer_identity.as_ref());
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        Self {
            metrics: proxy.metrics.clone(),
            source,
            destination: Peer::unknown(),
            service: None,
            start,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            authority,
            route: "-".into(),
            upstream: "-".into(),
            attempts: 0,
            request_bytes: Arc::default(),
            delayed: false,
            forwarded: Some(crate::upstream::forwarded_for(down.peer_addr)),
            client: down.peer_addr,
            client_namespace: down.peer_identity.as_ref().map(|i| i.namespace().to_owned()),
            trace,
            request_id: parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned(),
            grpc: crate::grpc::is_grpc(&parts.headers),
        }
    }

    /// `domain` is the cluster's DNS domain: Istio's `destination_service` is the Service's
    /// host name in it.
    pub fn set_service(&mut self, domain: &str, service: &ServiceKey) {
        self.service = Some(ServiceRef::new(&service.name, &service.namespace, domain));
    }

    pub(super) fn record(&self, code: StatusCode, flags: ResponseFlags) -> Record {
        let flags = if self.delayed && flags == ResponseFlags::NONE { ResponseFlags::FAULT_DELAY } else { flags };
        Record {
            metrics: self.metrics.clone(),
            labels: RequestLabels::new(&self.source, &self.destination, self.service.as_ref(), code.as_u16(), flags.0),
            start: self.start,
            method: self.method.clone(),
            path: self.path.clone(),
            authority: self.authority.clone(),
            route: self.route.clone(),
            upstream: self.upstream.clone(),
            attempts: self.attempts,
            request_bytes: self.request_bytes.clone(),
            trace: self.trace,
            request_id: self.request_id.clone(),
            grpc: self.grpc,
            grpc_status: None,
        }
    }

    /// A response the waypoint makes itself.
    pub fn local(&self, status: StatusCode, flags: ResponseFlags, msg: &'static str) -> Response<Metered> {
        self.local_with(status, flags, msg, |_| {})
    }

    pub fn local_with(
        &self,
        status: StatusCode,
        flags: ResponseFlags,
        msg: &'static str,
        edit: impl FnOnce(&mut http::HeaderMap),
    ) -> Response<Metered> {
        let mut record = self.record(status, flags);
        if self.grpc {
            // A gRPC client reads the status from `grpc-status`: a trailers-only answer, whose
            // HTTP status is 200 (metrics and the log keep the HTTP code).
            let code = GrpcStatus::for_local_reply(status, flags == ResponseFlags::UPSTREAM_TIMEOUT);
            record.grpc_status = Some(code);
            let mut r = Response::new(text_body(""));
            let h = r.headers_mut();
            h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", http::HeaderValue::from(u16::from(code.0)));
            h.insert("grpc-message", http::HeaderValue::from_static(msg));
            return r.map(|b| Metered::new(b, record));
        }
        let mut r = Response::new(text_body(msg));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        edit(r.headers_mut());
        r.map(|b| Metered::new(b, record))
    }

    /// The backend's response, passed on.
    pub fn finish_with_flags(&self, response: Response<ResponseBody>, flags: ResponseFlags) -> Response<Metered> {
        let mut record = self.record(response.status(), flags);
        record.grpc_status = GrpcStatus::of(response.headers());
        response.map(|b| Metered::new(b, record))
    }
}
