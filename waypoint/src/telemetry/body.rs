//! A response body that counts its bytes and, when it is finished or dropped (the client
//! went away), records the request's metrics and writes its access-log line — so duration
//! and response size cover the whole streamed response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::{RequestLabels, RequestMetrics, TraceContext};
use crate::grpc::GrpcStatus;
use crate::upstream::{BoxError, ResponseBody};

/// Everything known about a request once its response has started.
#[derive(Debug)]
pub struct RequestRecord {
    pub metrics: Option<RequestMetrics>,
    pub labels: RequestLabels,
    pub start: Instant,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub route: String,
    pub upstream: String,
    pub attempts: u32,
    /// Read when the request is logged: a streaming upload may still be arriving when the
    /// response starts.
    pub request_bytes: Arc<AtomicU64>,
    pub trace: TraceContext,
    pub request_id: String,
    /// The request is gRPC: its status is taken from the response's headers or trailers.
    pub grpc: bool,
    pub grpc_status: Option<GrpcStatus>,
}

impl RequestRecord {
    pub(crate) fn finish(mut self, response_bytes: u64) {
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        if self.grpc {
            self.labels = self.labels.grpc(self.grpc_status);
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if let Some(m) = &self.metrics {
            m.record(&self.labels, ms, request_bytes, response_bytes);
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            authority = %self.authority,
            response_code = self.labels.response_code,
            response_flags = %self.labels.response_flags,
            grpc_status = %self.labels.grpc_response_status,
            route = %self.route,
            upstream = %self.upstream,
            attempts = self.attempts,
            duration_ms = ms as u64,
            bytes_received = request_bytes,
            bytes_sent = response_bytes,
            src = %self.labels.source_principal,
            dst_service = %self.labels.destination_service,
            trace_id = %format_args!("{:032x}", self.trace.trace_id),
            span_id = %format_args!("{:016x}", self.trace.span_id),
            request_id = %self.request_id,
            "request"
        );
    }
}

pub struct Metered {
    inner: ResponseBody,
    record: Option<RequestRecord>,
    bytes: u64,
}

impl Metered {
    pub fn new(inner: ResponseBody, record: RequestRecord) -> Self {
        Self { inner, record: Some(record), bytes: 0 }
    }

    /// A body whose request is recorded elsewhere (an upgraded connection, at its end).
    pub fn unrecorded(inner: ResponseBody) -> Self {
        Self { inner, record: None, bytes: 0 }
    }

    fn done(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish(self.bytes);
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref()
                    && let Some(r) = self.record.as_mut().filter(|r| r.grpc)
                {
                    r.grpc_status = GrpcStatus::of(t).or(r.grpc_status);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
