//! Protocol detection for ports whose protocol nothing declares (no `appProtocol`, a port
//! name Istio does not recognise): the first bytes the client sends decide, within a short
//! window — an HTTP/1.1 method or the HTTP/2 preface is HTTP; anything else (a TLS
//! ClientHello, a database handshake), an early end, or silence (server-first protocols) is
//! relayed at L4. The bytes read are replayed to whichever side serves the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[cfg(test)]
const DEFAULT_WINDOW: Duration = crate::proxy::DEFAULT_DETECTION_WINDOW;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Request-line starts, the method with its space.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Opaque,
}

/// What `first` says, or `None` while more bytes could change the answer.
fn classify(first: &[u8]) -> Option<Detected> {
    if first.is_empty() {
        return None;
    }
    let mut undecided = false;
    for start in std::iter::once(H2_PREFACE).chain(METHODS) {
        let k = first.len().min(start.len());
        if first[..k] == start[..k] {
            if k == start.len() {
                return Some(Detected::Http);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Opaque) }
}

/// Reads from `io` until its first bytes decide, for at most `window`; returns the verdict
/// and the bytes read (to be replayed).
pub async fn detect<S: AsyncRead + Unpin>(io: &mut S, window: Duration) -> io::Result<(Detected, Bytes)> {
    let mut seen = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + window;
    loop {
        if let Some(d) = classify(&seen) {
            return Ok((d, seen.freeze()));
        }
        if seen.len() >= H2_PREFACE.len() {
            return Ok((Detected::Opaque, seen.freeze()));
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            // Silence (a server-first protocol) or the end: not HTTP.
            Err(_) | Ok(Ok(0)) => return Ok((Detected::Opaque, seen.freeze())),
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// `inner` with `prefix` read first: the sniffed bytes handed back.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn methods_and_the_preface_are_http_and_everything_else_is_not() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http));
        assert_eq!(classify(b"PRI * HT"), None, "could still be the preface");
        assert_eq!(classify(b"PO"), None, "could still be POST or PATCH");
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Some(Detected::Opaque), "a TLS ClientHello");
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn detection_reads_only_what_it_needs_and_gives_it_back() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PO").await.unwrap();
        let sniff = tokio::spawn(async move {
            let (d, seen) = detect(&mut server, DEFAULT_WINDOW).await.unwrap();
            let mut all = Vec::new();
            let mut r = Rewind::new(seen, server);
            let mut buf = [0u8; 64];
            let n = r.read(&mut buf).await.unwrap();
            all.extend_from_slice(&buf[..n]);
            let n = r.read(&mut buf).await.unwrap();
            all.extend_from_slice(&buf[..n]);
            (d, all)
        });
        tokio::task::yield_now().await;
        client.write_all(b"ST /x HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let (d, all) = sniff.await.unwrap();
        assert_eq!(d, Detected::Http);
        assert_eq!(&all[..], b"POST /x HTTP/1.1\r\n", "no byte lost or doubled");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque_after_the_window() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let (d, seen) = detect(&mut server, DEFAULT_WINDOW).await.unwrap();
        assert_eq!((d, seen.len(), start.elapsed()), (Detected::Opaque, 0, DEFAULT_WINDOW));
    }
}
