//! Live connections the destination side authorized, so a policy change can
//! re-evaluate them and close those the new policy denies (as ztunnel does).
//! A connection whose verdict does not change is left alone.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Tracked connections, each with what policy needs to judge it again.
pub struct Tracker<I> {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (I, CancellationToken)>>,
}

impl<I> Default for Tracker<I> {
    fn default() -> Self {
        Self { next: AtomicU64::new(1), conns: Mutex::new(HashMap::new()) }
    }
}

/// Removes its connection from the tracker when dropped.
pub struct Registration<I> {
    id: u64,
    tracker: Arc<Tracker<I>>,
    token: CancellationToken,
}

impl<I> Drop for Registration<I> {
    fn drop(&mut self) {
        self.tracker.conns.lock().expect("tracker lock").remove(&self.id);
    }
}

impl<I: Clone> Tracker<I> {
    pub fn register(self: &Arc<Self>, info: I) -> Registration<I> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.conns.lock().expect("tracker lock").insert(id, (info, token.clone()));
        Registration { id, tracker: self.clone(), token }
    }

    /// Closes every connection `allowed` now rejects; returns how many.
    pub fn reevaluate(&self, allowed: impl Fn(&I) -> bool) -> usize {
        let conns = self.conns.lock().expect("tracker lock");
        let mut closed = 0;
        for (info, token) in conns.values() {
            if !token.is_cancelled() && !allowed(info) {
                token.cancel();
                closed += 1;
            }
        }
        closed
    }

    pub fn len(&self) -> usize {
        self.conns.lock().expect("tracker lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream that fails with `ConnectionAborted` once its registration is
/// cancelled, waking any pending read or write so the relay ends at once.
pub struct Revocable<S, I> {
    inner: S,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    _registration: Registration<I>,
}

impl<S, I> Revocable<S, I> {
    pub fn new(inner: S, registration: Registration<I>) -> Self {
        let revoked = Box::pin(registration.token.clone().cancelled_owned());
        Self { inner, revoked, _registration: registration }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.revoked.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed: no longer allowed by policy"))
            }
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin, I> AsyncRead for Revocable<S, I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, I> AsyncWrite for Revocable<S, I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn revoking_aborts_a_pending_read_and_keeps_others() {
        let tracker: Arc<Tracker<&'static str>> = Arc::default();
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let mut denied = Revocable::new(a, tracker.register("denied"));
        let mut kept = Revocable::new(b, tracker.register("kept"));
        let pending = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            denied.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        assert_eq!(tracker.reevaluate(|i| *i != "denied"), 1);
        let err = pending.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        // The other connection still works, and a second pass closes nothing.
        b_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        kept.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        assert_eq!(tracker.reevaluate(|i| *i != "denied"), 0);
        assert_eq!(tracker.len(), 1, "the dropped connection unregistered itself");
    }
}
