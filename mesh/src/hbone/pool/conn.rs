//! One pooled HTTP/2 connection: slot accounting, handshake, and the task that drives it and
//! closes it when idle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::PoolKey;
use crate::clock::SharedClock;
use crate::hbone::{HboneError, settings};
use crate::tls::{ALPN_H2, WorkloadCert, client_config};

pub(crate) struct Conn {
    pub id: u64,
    pub send: h2::client::SendRequest<Bytes>,
    clock: SharedClock,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    active: usize,
    closed: bool,
    idle_since: Option<SystemTime>,
}

/// A reserved stream slot on a connection; released on drop.
pub(crate) struct Slot {
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conn.lock();
        s.active -= 1;
        if s.active == 0 {
            s.idle_since = Some(self.conn.clock.now());
            drop(s);
            self.conn.changed.notify_one();
        }
    }
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_reserve(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut s = self.lock();
        if s.closed || s.active >= max {
            return None;
        }
        s.active += 1;
        s.idle_since = None;
        Some(Slot { conn: self.clone() })
    }

    /// First slot on a fresh connection, which nobody else can see yet.
    pub fn reserve_unchecked(self: &Arc<Self>) -> Slot {
        let mut s = self.lock();
        s.active += 1;
        s.idle_since = None;
        Slot { conn: self.clone() }
    }

    /// Marks the connection closed if no tunnel uses it; the caller then drops it.
    pub fn close_if_idle(&self) -> bool {
        let mut s = self.lock();
        if s.active == 0 {
            s.closed = true;
        }
        s.closed
    }

    /// Closes now, tunnels or not (the source pod left).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_one();
    }
}

pub(crate) type Driver<S> = h2::client::Connection<TlsStream<S>, Bytes>;

pub(crate) async fn handshake<S>(
    id: u64,
    tcp: S,
    key: &PoolKey,
    cert: &WorkloadCert,
    clock: SharedClock,
) -> Result<(Arc<Conn>, Driver<S>), HboneError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = client_config(cert, vec![key.dst_identity.clone()], clock.clone())?;
    // SPIFFE verification ignores the name; an IP name keeps rustls from sending SNI.
    let name = ServerName::IpAddress(key.dst.ip().into());
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| HboneError::Tls { addr: key.dst, source })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(HboneError::Alpn(key.dst));
    }
    let (send, driver) = h2::client::Builder::new()
        .initial_window_size(settings::INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(settings::INITIAL_CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .max_header_list_size(settings::MAX_HEADER_LIST_SIZE)
        .handshake::<_, Bytes>(tls)
        .await?;
    let conn = Arc::new(Conn {
        id,
        send,
        clock,
        state: Mutex::new(State { active: 0, closed: false, idle_since: None }),
        changed: Notify::new(),
    });
    Ok((conn, driver))
}

/// Runs the connection until the peer closes it, it is closed, or it idles out.
/// `evict` removes it from the pool atomically with the idle check; false means a tunnel
/// grabbed it meanwhile.
pub(crate) async fn drive<S>(
    conn: Arc<Conn>,
    driver: Driver<S>,
    clock: SharedClock,
    idle_timeout: Duration,
    mut evict: impl FnMut() -> bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(driver);
    loop {
        let notified = conn.changed.notified();
        tokio::pin!(notified);
        // Register before reading the state so a change in between is not missed.
        notified.as_mut().enable();
        let (closed, idle_since) = {
            let s = conn.lock();
            (s.closed, s.idle_since)
        };
        if closed {
            return;
        }
        let idle = async {
            match idle_since {
                Some(t) => clock.sleep_until(t + idle_timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut driver => {
                if let Err(e) = result {
                    tracing::debug!(conn = conn.id, error = %e, "HBONE client connection failed");
                }
                conn.lock().closed = true;
                return;
            }
            _ = &mut notified => {}
            _ = idle => {
                if evict() {
                    tracing::debug!(conn = conn.id, "closing idle HBONE connection");
                    return;
                }
            }
        }
    }
}
