//! Relaying between an HTTP/2 stream and a byte stream without the extra copy a generic
//! `copy_bidirectional` makes: DATA frames are written to the upstream straight from h2's
//! buffers, and upstream reads are frozen into `Bytes` and handed to h2 as they are.
//! Half-close is kept: END_STREAM shuts down the upstream's write side and vice versa.

use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::buffer::ReadSize;

/// Bytes moved: (from the HTTP/2 peer to upstream, from upstream to the HTTP/2 peer).
pub async fn relay<U>(send: SendStream<Bytes>, recv: RecvStream, upstream: U) -> io::Result<(u64, u64)>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_with_pending(send, recv, Bytes::new(), upstream).await
}

/// As [`relay`], first writing `pending`: bytes already taken from `recv` but not yet used.
pub async fn relay_with_pending<U>(
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    upstream: U,
) -> io::Result<(u64, u64)>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (up_read, up_write) = tokio::io::split(upstream);
    // try_join: the first error ends both directions; dropping the h2 handles resets the
    // stream, which tells the peer the tunnel broke rather than ended.
    tokio::try_join!(h2_to_upstream(recv, pending, up_write), upstream_to_h2(up_read, send))
}

async fn h2_to_upstream<W: AsyncWrite + Unpin>(mut recv: RecvStream, pending: Bytes, mut w: W) -> io::Result<u64> {
    w.write_all(&pending).await?;
    let mut total = pending.len() as u64;
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let n = data.len();
                w.write_all(&data).await?;
                // Window returned only once the upstream took the bytes: a slow upstream
                // slows the peer (backpressure) without stalling other streams.
                let _ = recv.flow_control().release_capacity(n);
                total += n as u64;
            }
            Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => break,
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
            None => break,
        }
    }
    w.shutdown().await?;
    Ok(total)
}

async fn upstream_to_h2<R: AsyncRead + Unpin>(mut r: R, mut send: SendStream<Bytes>) -> io::Result<u64> {
    let reset = |e: h2::Error| io::Error::new(io::ErrorKind::ConnectionReset, e);
    let mut total = 0u64;
    let mut size = ReadSize::default();
    let mut buf = BytesMut::new();
    loop {
        // Chunks handed to h2 keep their allocation alive until written, so a fresh buffer
        // is taken rather than grown in place; see `crate::buffer` for the sizes.
        if buf.capacity() < size.get() / 2 || size.oversized(buf.capacity()) {
            buf = BytesMut::with_capacity(size.get());
        }
        let offered = buf.capacity();
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        size.after_read(n, offered);
        let mut chunk = buf.split().freeze();
        total += chunk.len() as u64;
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(reset(e)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(reset)?;
        }
    }
    send.send_data(Bytes::new(), true).map_err(reset)?;
    Ok(total)
}
