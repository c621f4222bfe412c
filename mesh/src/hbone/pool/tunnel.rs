//! Opening a CONNECT tunnel on a reserved slot, and the tunnel as a byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::PoolKey;
use super::conn::Slot;
use crate::hbone::{H2Stream, HboneError, headers};
use crate::parse::Authority;

/// What to ask the destination for.
#[derive(Debug, Clone)]
pub struct TunnelRequest {
    /// `:authority`: the target `ip:port` (a service `host:port` when sent to a waypoint).
    pub target: Authority,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub forwarded: Option<String>,
}

impl TunnelRequest {
    pub fn new(target: impl Into<Authority>) -> Self {
        Self { target: target.into(), traceparent: None, baggage: None, forwarded: None }
    }
}

/// An open tunnel: read and write the target's bytes. Shutting down the write side
/// half-closes (END_STREAM); dropping it ends the stream and frees the pool slot.
pub struct Tunnel {
    io: H2Stream,
    response_baggage: Option<String>,
    conn_id: u64,
    _slot: Slot,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("conn", &self.conn_id).field("stream", &self.io).finish_non_exhaustive()
    }
}

impl Tunnel {
    /// The destination's `baggage` from the 200 response (its workload metadata).
    pub fn response_baggage(&self) -> Option<&str> {
        self.response_baggage.as_deref()
    }

    /// Relays between this tunnel and `io` (the application's socket) until both directions
    /// end, with half-close, copying each byte once. Returns (bytes sent into the tunnel,
    /// bytes received from it). Faster than `copy_bidirectional` on the tunnel.
    pub async fn relay<S: AsyncRead + AsyncWrite + Unpin>(self, io: S) -> io::Result<(u64, u64)> {
        let Tunnel { io: stream, _slot: slot, .. } = self;
        let (send, recv, pending) = stream
            .into_parts()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "tunnel write side already shut down"))?;
        let (received, sent) = crate::hbone::relay::relay_with_pending(send, recv, pending, io).await?;
        drop(slot);
        Ok((sent, received))
    }

    /// Which pooled connection carries this tunnel (distinct per connection).
    pub fn connection_id(&self) -> u64 {
        self.conn_id
    }
}

pub(super) async fn open(
    slot: Slot,
    key: &PoolKey,
    request: TunnelRequest,
    response_timeout: Duration,
) -> Result<Tunnel, HboneError> {
    let target = request.target.to_string();
    let mut builder = Request::builder().method(Method::CONNECT).uri(target.as_str());
    for (name, value) in [
        (headers::TRACEPARENT, &request.traceparent),
        (headers::BAGGAGE, &request.baggage),
        (headers::FORWARDED, &request.forwarded),
    ] {
        if let Some(v) = value {
            builder = builder.header(name, v.as_str());
        }
    }
    let req = builder.body(()).map_err(|_| HboneError::Refused { target: target.clone(), status: 400 })?;
    let opened = async {
        let mut send = slot.conn.send.clone().ready().await?;
        let (response, stream) = send.send_request(req, false)?;
        Ok::<_, HboneError>((response.await?, stream))
    };
    let (response, stream) = tokio::time::timeout(response_timeout, opened)
        .await
        .map_err(|_| HboneError::ResponseTimeout(target.clone()))??;
    if response.status() != StatusCode::OK {
        tracing::debug!(dst = %key.dst, %target, status = %response.status(), "HBONE CONNECT refused");
        return Err(HboneError::Refused { target, status: response.status().as_u16() });
    }
    let response_baggage = response.headers().get(headers::BAGGAGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(Tunnel { io: H2Stream::new(stream, response.into_body()), response_baggage, conn_id: slot.conn.id, _slot: slot })
}

impl AsyncRead for Tunnel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
