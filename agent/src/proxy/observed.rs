//! An upstream stream that counts its bytes into the connection's metrics
//! and writes the access-log line when it is dropped (the HBONE server owns
//! the relay, so the end of the stream is the end of the connection).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use mesh::telemetry::ConnGuard;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::accesslog::{self, ConnRecord};

pub struct Observed<S> {
    inner: S,
    guard: ConnGuard,
    record: ConnRecord,
    started: Instant,
    error: Option<String>,
}

impl<S> Observed<S> {
    pub fn new(inner: S, guard: ConnGuard, record: ConnRecord) -> Self {
        Self { inner, guard, record, started: Instant::now(), error: None }
    }

    fn note<T>(&mut self, r: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = r
            && self.error.is_none()
        {
            self.error = Some(e.to_string());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Read from the app: the response, back toward the source.
        let n = buf.filled().len() - before;
        if n > 0 {
            self.guard.add_sent(n as u64);
        }
        self.note(&r);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        // Written to the app: the request, from the source.
        if let Poll::Ready(Ok(n)) = r {
            self.guard.add_received(n as u64);
        }
        self.note(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        let mut record = std::mem::take(&mut self.record);
        record.bytes_sent = self.guard.received();
        record.bytes_recv = self.guard.sent();
        record.duration = self.started.elapsed();
        record.error = self.error.take();
        accesslog::log(&record);
    }
}

/// The client's socket on the source side, counting into the connection's
/// metrics as bytes flow: what the client sends is the request ("received"
/// in Istio's terms), what it reads the response ("sent").
pub struct Metered<'g, S> {
    inner: S,
    guard: &'g ConnGuard,
}

impl<'g, S> Metered<'g, S> {
    pub fn new(inner: S, guard: &'g ConnGuard) -> Self {
        Self { inner, guard }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.guard.add_received(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.guard.add_sent(n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
