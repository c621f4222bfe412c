//! The agent's socket to an application (the original destination it dials
//! for a pod): closed with a TCP reset unless both directions ended cleanly.
//!
//! Two reasons. A tunnel or relay that broke must reach the app as a broken
//! connection, never as a clean end of stream it could take for a complete
//! message. And an abortive close leaves no TIME_WAIT behind: a peer that opens
//! and cancels streams by the thousand (HTTP/2 rapid reset through a waypoint)
//! otherwise fills the pod's ephemeral ports with TIME_WAIT sockets, and every
//! later connect() in that pod spends its time searching for a free port.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

#[derive(Debug)]
pub struct AppStream {
    inner: TcpStream,
    read_eof: bool,
    write_shut: bool,
}

impl AppStream {
    pub fn new(inner: TcpStream) -> Self {
        Self { inner, read_eof: false, write_shut: false }
    }

    /// Whether dropping it now closes cleanly (FIN) rather than with a reset.
    pub fn finished(&self) -> bool {
        self.read_eof && self.write_shut
    }
}

impl Drop for AppStream {
    fn drop(&mut self) {
        if !self.finished() {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for AppStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && room > 0 && buf.filled().len() == before {
            self.read_eof = true;
        }
        r
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.write_shut = true;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    async fn pair() -> (AppStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (AppStream::new(a.unwrap()), b.unwrap().0)
    }

    #[tokio::test]
    async fn dropped_mid_stream_the_app_sees_a_reset_and_no_time_wait_is_left() {
        let (mut ours, mut app) = pair().await;
        let local = ours.inner.local_addr().unwrap();
        ours.write_all(b"partial").await.unwrap();
        drop(ours);
        let mut buf = [0u8; 16];
        assert_eq!(app.read(&mut buf).await.unwrap(), 7);
        assert_eq!(app.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        // The same source port binds again at once: no TIME_WAIT holds it.
        let again = tokio::net::TcpSocket::new_v4().unwrap();
        again.bind(local).expect("the port is free after an abortive close");
    }

    #[tokio::test]
    async fn both_directions_ended_the_app_sees_a_clean_end() {
        let (mut ours, mut app) = pair().await;
        ours.write_all(b"whole").await.unwrap();
        ours.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"whole");
        app.write_all(b"reply").await.unwrap();
        app.shutdown().await.unwrap();
        let mut reply = Vec::new();
        ours.read_to_end(&mut reply).await.unwrap();
        assert!(ours.finished());
        drop(ours);
        let mut buf = [0u8; 4];
        assert_eq!(app.read(&mut buf).await.unwrap(), 0, "a clean close, not a reset");
    }
}
