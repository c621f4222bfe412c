//! Response-body wrappers. [`until`]: a body that fails once the request's deadline passes, so `timeouts.request`
//! bounds a slowly streamed body too, not just the wait for the response headers. The
//! failure resets the client's stream (HTTP/2) or closes its connection (HTTP/1.1): the
//! status line has already gone out, so a 504 is no longer possible.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::upstream::{BoxError, ResponseBody};

#[derive(Debug, thiserror::Error)]
#[error("the route's request timeout passed while the response body was streaming; raise timeouts.request")]
pub struct BodyTimeout;

struct Deadline {
    inner: ResponseBody,
    sleep: Pin<Box<Sleep>>,
}

/// Wraps `body` so that it errors at `deadline`.
pub fn until(body: ResponseBody, deadline: Instant) -> ResponseBody {
    Deadline { inner: body, sleep: Box::pin(tokio::time::sleep_until(deadline)) }.boxed_unsync()
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Holding<G> {
    inner: ResponseBody,
    _guard: G,
}

/// Wraps `body` so that `guard` (a circuit-breaker slot) is released only when the body is
/// finished or dropped.
pub fn holding<G: Send + Unpin + 'static>(body: ResponseBody, guard: G) -> ResponseBody {
    Holding { inner: body, _guard: guard }.boxed_unsync()
}

impl<G: Unpin> Body for Holding<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
