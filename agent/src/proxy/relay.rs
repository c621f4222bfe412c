//! Byte relay between two TCP streams, with half-close and exact counts.

use std::io;

use mesh::{buffer::ReadSize, telemetry::ConnGuard};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// What a finished relay moved, and why it stopped if not cleanly.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the first stream (the source) to the second.
    pub sent: u64,
    /// Bytes from the second stream back to the first.
    pub recv: u64,
    pub error: Option<io::Error>,
}

/// Copies until EOF, then half-closes the writer so the peer sees EOF too.
/// `on_bytes` sees every chunk as it goes (live metrics). The buffer follows
/// [`ReadSize`]: small while idle, large during bulk (`mesh::buffer`).
async fn copy_half<R, W>(mut reader: R, mut writer: W, count: &mut u64, on_bytes: impl Fn(u64)) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut size = ReadSize::default();
    // Read into spare capacity: nothing is zeroed when the buffer grows.
    let mut buf: Vec<u8> = Vec::with_capacity(size.get());
    loop {
        buf.clear();
        let offered = buf.capacity();
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        writer.write_all(&buf).await?;
        *count += n as u64;
        on_bytes(n as u64);
        size.after_read(n, offered);
        // A fresh allocation of exactly the new size, growing or shrinking (in place, a
        // shrink would keep the large one and a growth would keep the bytes just written).
        if size.get() > buf.capacity() || size.oversized(buf.capacity()) {
            buf = Vec::with_capacity(size.get());
        }
    }
}

/// Relays both ways until both directions have ended. On an error in either
/// direction the source is reset (and `dest` dropped), so a failure on one
/// side reaches the other as a reset, never as a clean end of stream.
/// Bytes are counted into `metrics` as they flow: source → destination is
/// the request (Istio's "received"), the way back the response ("sent").
pub async fn relay<D: AsyncRead + AsyncWrite + Unpin>(
    mut source: TcpStream,
    dest: D,
    metrics: Option<&ConnGuard>,
) -> Relayed {
    let (mut sent, mut recv) = (0u64, 0u64);
    let error = {
        let (sr, sw) = source.split();
        let (dr, dw) = tokio::io::split(dest);
        let up = copy_half(sr, dw, &mut sent, |n| {
            if let Some(m) = metrics {
                m.add_received(n)
            }
        });
        let down = copy_half(dr, sw, &mut recv, |n| {
            if let Some(m) = metrics {
                m.add_sent(n)
            }
        });
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => match r { Ok(()) => down.await.err(), Err(e) => Some(e) },
            r = &mut down => match r { Ok(()) => up.await.err(), Err(e) => Some(e) },
        }
    };
    if error.is_some() {
        super::reset(source);
    }
    Relayed { sent, recv, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_exactly_both_ways_with_half_close() {
        let (mut client, proxy_in) = pair().await;
        let (proxy_out, mut server) = pair().await;
        let task = tokio::spawn(relay(proxy_in, proxy_out, None));
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request);
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");
        let done = task.await.unwrap();
        assert_eq!((done.sent, done.recv), (300_000, 22));
        assert!(done.error.is_none());
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (mut client, proxy_in) = pair().await;
        let (proxy_out, server) = pair().await;
        let task = tokio::spawn(relay(proxy_in, proxy_out, None));
        client.write_all(b"x").await.unwrap();
        crate::proxy::reset(server);
        let done = task.await.unwrap();
        assert!(done.error.is_some());
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
