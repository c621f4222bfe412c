//! Request bodies stream to the backend as they arrive. A copy of the first bytes (up to the
//! retry buffer, 64 KiB by default, taken from the [`BodyBudget`](super::BodyBudget)) is
//! kept so that a failed attempt can be retried, and a mirror sent, with the same body. A
//! body that outgrows the buffer (or finds the budget spent) keeps streaming, but the copy is
//! dropped: the request is no longer retried (flag `RBO` in the access log) nor mirrored, as
//! with Envoy's per-request buffer limit. Memory per request is thus the buffer plus what flow
//! control lets in flight, whatever the upload's size.
//!
//! One [`Replay`] per request hands out one [`ReplayBody`] per attempt. Attempts are
//! sequential; a new attempt's body supersedes the previous one's (which errors if its
//! connection still polls it), so only one body ever reads from the client.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::budget::Reservation;
use crate::upstream::{BoxError, RequestBody};

/// Envoy's default `per_request_buffer_limit_bytes`.
pub const DEFAULT_RETRY_BUFFER: usize = 64 * 1024;

/// Why the client's body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFailure {
    #[error("the client aborted the request body")]
    Aborted,
    #[error("the request body made no progress for the body idle timeout (--body-idle-timeout)")]
    Stalled,
}

#[derive(Debug, thiserror::Error)]
#[error("a retry of this request superseded this attempt's body")]
struct Superseded;

struct State {
    /// The client's body, until it ends or fails.
    source: Option<RequestBody>,
    /// Data frames read from the client so far.
    frames: usize,
    /// Copies of those frames while `keeping`.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    failure: Option<ClientFailure>,
    /// Frames are still copied (within the buffer, and retries are still possible).
    keeping: bool,
    /// The body outgrew the buffer or the budget: it can no longer be replayed.
    outgrew: bool,
    reservation: Option<Reservation>,
    /// No attempt follows (the response head is here).
    retries_closed: bool,
    /// The last read from the client found nothing yet.
    waiting: bool,
    /// The attempt whose body may read from the client (0: none handed out yet).
    generation: u64,
    /// Data frames that attempt's body has yielded: a copy still being replayed is kept
    /// even after retries close.
    replayed_to: usize,
}

impl State {
    fn stop_keeping(&mut self) {
        self.keeping = false;
        self.kept = Vec::new();
        self.kept_bytes = 0;
        self.reservation = None;
    }
}

struct Shared {
    state: Mutex<State>,
    /// Told when the body ends, fails or outgrows the buffer (mirrors wait for it).
    settled: Notify,
    limit: usize,
    idle: Duration,
    /// The client's `Content-Length`, when it gave one.
    exact: Option<u64>,
    /// Bytes read from the client, for metrics and the access log.
    received: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The request body of one request, shared by its attempts and mirrors.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Shared>,
}

impl Replay {
    /// `received` counts the bytes read from the client.
    pub fn new(
        source: RequestBody,
        limit: usize,
        reservation: Reservation,
        idle: Duration,
        received: Arc<AtomicU64>,
    ) -> Self {
        let exact = source.size_hint().exact();
        let ended = source.is_end_stream();
        let state = State {
            source: (!ended).then_some(source),
            frames: 0,
            kept: Vec::new(),
            kept_bytes: 0,
            trailers: None,
            ended,
            failure: None,
            keeping: true,
            outgrew: false,
            reservation: Some(reservation),
            retries_closed: false,
            waiting: false,
            generation: 0,
            replayed_to: 0,
        };
        let shared = Shared { state: Mutex::new(state), settled: Notify::new(), limit, idle, exact, received };
        Self { shared: Arc::new(shared) }
    }

    /// The body for the next attempt, or `None` when the body cannot be sent again (it
    /// outgrew the buffer, or retries were closed).
    pub fn attempt(&self) -> Option<ReplayBody> {
        let mut st = self.shared.lock();
        // The first attempt's body is handed out without a replay check.
        if st.generation > 0 && (st.retries_closed || !st.keeping || st.failure.is_some()) {
            return None;
        }
        st.generation += 1;
        st.replayed_to = 0;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: st.generation,
            pos: 0,
            sent: 0,
            trailers_sent: false,
            idle: None,
        })
    }

    /// Whether another attempt could resend the body.
    pub fn replayable(&self) -> bool {
        let st = self.shared.lock();
        !st.retries_closed && st.keeping && st.failure.is_none()
    }

    /// The body outgrew the retry buffer (or the budget).
    pub fn outgrew(&self) -> bool {
        self.shared.lock().outgrew
    }

    /// The client's failure, if its body broke off.
    pub fn client_failure(&self) -> Option<ClientFailure> {
        self.shared.lock().failure
    }

    /// Still arriving from the client.
    pub fn receiving(&self) -> bool {
        let st = self.shared.lock();
        !st.ended && st.failure.is_none()
    }

    /// An attempt is waiting for the client's next bytes (the client is the slow side, not
    /// the backend or the connection to it).
    pub fn waiting_on_client(&self) -> bool {
        let st = self.shared.lock();
        st.waiting && !st.ended && st.failure.is_none()
    }

    /// No attempt follows. A body still streaming stops being copied and its copy is given
    /// back (once the last attempt has replayed it: a backend may answer before reading the
    /// whole body); a whole one stays for mirrors until the request is done (it fit the buffer).
    pub fn close_retries(&self) {
        let mut st = self.shared.lock();
        st.retries_closed = true;
        if !st.ended && st.replayed_to >= st.frames {
            st.stop_keeping();
            drop(st);
            self.shared.settled.notify_waiters();
        }
    }

    /// The whole body and its trailers once the client has sent it, if it fit the buffer.
    pub async fn whole(&self) -> Option<(Vec<Bytes>, Option<HeaderMap>)> {
        loop {
            let settled = self.shared.settled.notified();
            {
                let st = self.shared.lock();
                if st.failure.is_some() || !st.keeping {
                    return None;
                }
                if st.ended {
                    return Some((st.kept.clone(), st.trailers.clone()));
                }
            }
            settled.await;
        }
    }
}

/// One attempt's view of the request body: the kept frames first, then the client's.
pub struct ReplayBody {
    shared: Arc<Shared>,
    generation: u64,
    /// Data frames yielded by this body.
    pos: usize,
    sent: u64,
    trailers_sent: bool,
    idle: Option<Pin<Box<Sleep>>>,
}

impl ReplayBody {
    pub fn boxed(self) -> RequestBody {
        BodyExt::boxed_unsync(self)
    }

    fn settle(&self, st: MutexGuard<'_, State>) {
        drop(st);
        self.shared.settled.notify_waiters();
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let shared = this.shared.clone();
        let mut st = shared.lock();
        if this.generation != st.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if this.pos < st.frames {
            // Behind the client: replay what was kept. (Only a later attempt is ever behind,
            // and one is handed out only while every frame is kept.)
            let Some(data) = st.kept.get(this.pos).cloned() else {
                return Poll::Ready(Some(Err(Superseded.into())));
            };
            this.pos += 1;
            this.sent += data.len() as u64;
            st.replayed_to = this.pos;
            if st.retries_closed && !st.ended && this.pos == st.frames {
                // Caught up after retries closed: the copy is no longer needed.
                st.stop_keeping();
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if st.ended {
            if let Some(t) = st.trailers.clone().filter(|_| !this.trailers_sent) {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        if let Some(f) = st.failure {
            return Poll::Ready(Some(Err(f.into())));
        }
        let Some(source) = st.source.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(source).poll_frame(cx);
        st.waiting = polled.is_pending();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle = None;
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            // Trailers end the body.
                            st.trailers = Some(t.clone());
                            st.ended = true;
                            st.source = None;
                            this.trailers_sent = true;
                            this.settle(st);
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        // No other kind of frame exists today; skip any future one.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                };
                shared.received.fetch_add(data.len() as u64, Ordering::Relaxed);
                st.frames += 1;
                this.pos += 1;
                st.replayed_to = this.pos;
                this.sent += data.len() as u64;
                let mut outgrew = false;
                if st.keeping {
                    let fits = st.kept_bytes + data.len() <= shared.limit
                        && st.reservation.as_mut().is_some_and(|r| r.grow(data.len()).is_ok());
                    if fits {
                        st.kept_bytes += data.len();
                        st.kept.push(data.clone());
                    } else {
                        st.outgrew = true;
                        st.stop_keeping();
                        outgrew = true;
                    }
                }
                if outgrew {
                    this.settle(st);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body aborted by the client");
                st.failure = Some(ClientFailure::Aborted);
                st.source = None;
                this.settle(st);
                Poll::Ready(Some(Err(ClientFailure::Aborted.into())))
            }
            Poll::Ready(None) => {
                st.ended = true;
                st.source = None;
                this.settle(st);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = shared.idle;
                let sleep = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                st.failure = Some(ClientFailure::Stalled);
                st.source = None;
                this.settle(st);
                Poll::Ready(Some(Err(ClientFailure::Stalled.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.shared.lock();
        if self.generation != st.generation || self.pos < st.frames {
            return false;
        }
        if st.ended {
            return st.trailers.is_none() || self.trailers_sent;
        }
        st.failure.is_none() && st.source.as_ref().is_some_and(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.exact {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
