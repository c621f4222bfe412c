//! Pooled HTTP connections to endpoints: one hyper-util client per (endpoint, its identity,
//! HTTP version, HBONE or plain, the original client carried on the CONNECT), each keeping
//! its idle connections (HTTP/1.1 keep-alive, one multiplexed HTTP/2 connection) for reuse,
//! so a request costs an HBONE tunnel and a handshake only when no idle connection is left.
//!
//! The original client is part of the key because the CONNECT names it (`Forwarded`), and
//! the endpoint's agent attributes the tunnel's requests to it: connections are reused by
//! one client's requests, never lent to another client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::Identity;
use mesh::hbone::Tunnel;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{HboneUpstream, RequestBody, Target};
use crate::resilience::PoolSettings;

/// How long an idle pooled connection is kept (Envoy's default idle timeout is 1 h; a
/// waypoint's connections each hold a tunnel and the endpoint agent's socket to the app).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint and client.
const MAX_IDLE: usize = 16;
/// Clients kept before the ones with no connection left are dropped.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    identity: Identity,
    http2: bool,
    hbone: bool,
    forwarded: Option<String>,
    pool: PoolSettings,
}

type HttpClient = Client<Dial, RequestBody>;

/// The pooled clients of one waypoint.
#[derive(Clone, Default)]
pub struct Clients {
    by_key: Arc<Mutex<HashMap<Key, HttpClient>>>,
    /// Connections opened (tunnels or TCP connections), for tests and metrics.
    opened: Arc<AtomicU64>,
}

impl Clients {
    /// The client for `target`, made on first use.
    pub(super) fn get(&self, upstream: &HboneUpstream, target: &Target) -> HttpClient {
        let key = Key {
            addr: target.addr,
            identity: target.identity.clone(),
            http2: target.http2,
            hbone: target.hbone,
            forwarded: target.forwarded.clone(),
            pool: target.pool,
        };
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = by_key.get(&key) {
            return c.clone();
        }
        if by_key.len() >= SWEEP_AT {
            // Clients are cheap; their idle connections close on their own after the idle
            // timeout. Forgetting them all bounds the map when endpoints and clients churn.
            by_key.clear();
        }
        let dial = Dial { upstream: upstream.clone(), target: target.clone(), opened: self.opened.clone() };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(target.pool.idle_timeout.unwrap_or(IDLE_TIMEOUT))
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(target.http2)
            .build(dial);
        by_key.insert(key, client.clone());
        client
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Forgets the clients of `addr`: their idle connections close once no request in
    /// flight holds the client any more.
    pub fn forget(&self, addr: SocketAddr) {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.addr != addr);
    }
}

/// Requests served by one pooled connection (carried to each response as connection info).
#[derive(Debug, Clone, Default)]
struct Uses(Arc<AtomicU32>);

/// Counts a request on the connection that served `response`; at `max` the connection is
/// retired (no further request is given it; it closes once idle).
pub(super) fn count_use<B>(response: &http::Response<B>, used: &CaptureConnection, max: u32) {
    let Some(uses) = response.extensions().get::<Uses>() else { return };
    if uses.0.fetch_add(1, Ordering::Relaxed) + 1 >= max
        && let Some(connected) = used.connection_metadata().as_ref()
    {
        connected.poison();
    }
}

/// Opens a connection to one endpoint, whatever URI the client asks for (the request's
/// authority is the Service's host, not where the endpoint is).
#[derive(Clone)]
pub(super) struct Dial {
    upstream: HboneUpstream,
    target: Target,
    opened: Arc<AtomicU64>,
}

type Dialing = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

impl tower_service::Service<Uri> for Dial {
    type Response = Conn;
    type Error = io::Error;
    type Future = Dialing;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (upstream, target, opened) = (self.upstream.clone(), self.target.clone(), self.opened.clone());
        Box::pin(async move {
            let io = upstream.connect(&target).await?;
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(Conn(TokioIo::new(io)))
        })
    }
}

/// A pooled connection: an HBONE tunnel or plain TCP.
pub(super) struct Conn(TokioIo<Either<Tunnel, TcpStream>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().extra(Uses::default())
    }
}

impl Read for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
