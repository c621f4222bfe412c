//! The HBONE client: CONNECT tunnels over pooled HTTP/2 connections.
//!
//! Connections are keyed by [`PoolKey`] — (source pod, source identity, destination
//! identity, destination address) — because the agent dials from each source pod's network
//! namespace: two pods never share a socket, and an identity never borrows another's TLS
//! session. Each connection carries up to `max_streams` tunnels; beyond that a new one opens.
//! A connection idle for `idle_timeout` (on the injected clock) is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{CertProvider, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, HboneError, TcpDialer};
use crate::clock::{SharedClock, SystemClock};
use crate::parse::Identity;

mod conn;
mod tunnel;

use conn::Conn;
pub use tunnel::{Tunnel, TunnelRequest};

/// Which connections may be shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Opaque id of the source pod (e.g. its UID); tunnels of different pods never share.
    pub src_pod: String,
    pub src_identity: Identity,
    /// The identity the destination must prove.
    pub dst_identity: Identity,
    /// The destination's HBONE address (`podIP:15008` or a waypoint's).
    pub dst: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Tunnels per connection before another connection is opened (ztunnel: 100).
    pub max_streams: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS plus HTTP/2 preface and SETTINGS exchange.
    pub handshake_timeout: Duration,
    /// Waiting for the CONNECT response.
    pub response_timeout: Duration,
    pub clock: SharedClock,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams: 100,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            response_timeout: Duration::from_secs(10),
            clock: SystemClock::shared(),
        }
    }
}

/// Shared handle; clone freely.
pub struct Pool<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<D> {
    config: PoolConfig,
    dialer: D,
    certs: Arc<dyn CertProvider>,
    state: Mutex<HashMap<PoolKey, KeyConns>>,
    /// Number of open connections, so callers (and tests) can await changes.
    open: watch::Sender<usize>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct KeyConns {
    conns: Vec<Arc<Conn>>,
    /// Serialises dialling per key: a burst of tunnels opens one connection at a time and
    /// fills it, instead of a thundering herd of handshakes.
    dial_lock: Arc<tokio::sync::Mutex<()>>,
}

impl<D: TcpDialer> Pool<D> {
    pub fn new(config: PoolConfig, dialer: D, certs: Arc<dyn CertProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                dialer,
                certs,
                state: Mutex::default(),
                open: watch::channel(0).0,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Opens a tunnel to `request.target` through the destination in `key`.
    pub async fn connect(&self, key: PoolKey, request: TunnelRequest) -> Result<Tunnel, HboneError> {
        if let Some(slot) = self.reserve(&key) {
            // A pooled connection may have been closed by the peer (GOAWAY on drain) since
            // it was last used: close it and retry once on a fresh one.
            let conn = slot.conn.clone();
            match tunnel::open(slot, &key, request.clone(), self.inner.config.response_timeout).await {
                Err(HboneError::H2(e)) if e.is_go_away() || e.is_io() => {
                    tracing::debug!(conn = conn.id, error = %e, "pooled HBONE connection is gone; redialling");
                    conn.close();
                }
                other => return other,
            }
        }
        let dial_lock = self.lock().entry(key.clone()).or_default().dial_lock.clone();
        let dialled = {
            let _dialling = dial_lock.lock().await;
            match self.reserve(&key) {
                Some(slot) => Ok(slot),
                None => self.open_connection(&key).await.map(|conn| {
                    let slot = conn.reserve_unchecked();
                    self.lock().entry(key.clone()).or_default().conns.push(conn);
                    slot
                }),
            }
        };
        drop(dial_lock);
        let slot = match dialled {
            Ok(slot) => slot,
            Err(e) => {
                self.forget_if_unused(&key);
                return Err(e);
            }
        };
        tunnel::open(slot, &key, request, self.inner.config.response_timeout).await
    }

    /// Open connections, all keys together.
    pub fn connection_count(&self) -> usize {
        *self.inner.open.borrow()
    }

    /// Watches the open-connection count.
    pub fn watch_connections(&self) -> watch::Receiver<usize> {
        self.inner.open.subscribe()
    }

    /// Open connections for one key.
    pub fn connections_for(&self, key: &PoolKey) -> usize {
        self.lock().get(key).map_or(0, |k| k.conns.len())
    }

    /// Keys with pool state (connections or a dial in progress).
    pub fn tracked_keys(&self) -> usize {
        self.lock().len()
    }

    /// Closes every connection of a source pod (the pod left): tunnels on them are reset.
    pub fn remove_pod(&self, src_pod: &str) {
        let mut state = self.lock();
        state.retain(|k, v| {
            if k.src_pod == src_pod {
                v.conns.iter().for_each(|c| c.close());
                false
            } else {
                true
            }
        });
    }

    /// Drops a key's bookkeeping after a failed dial, unless another caller is using it.
    fn forget_if_unused(&self, key: &PoolKey) {
        let mut state = self.lock();
        if let Some(k) = state.get(key)
            && k.conns.is_empty()
            && Arc::strong_count(&k.dial_lock) == 1
        {
            state.remove(key);
        }
    }

    fn reserve(&self, key: &PoolKey) -> Option<conn::Slot> {
        let state = self.lock();
        let max = self.inner.config.max_streams;
        state.get(key)?.conns.iter().find_map(|c| c.try_reserve(max))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, KeyConns>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn open_connection(&self, key: &PoolKey) -> Result<Arc<Conn>, HboneError> {
        let cfg = &self.inner.config;
        let cert = self.inner.certs.cert_for(&key.src_identity).await?;
        let tcp = tokio::time::timeout(cfg.connect_timeout, self.inner.dialer.dial(key))
            .await
            .map_err(|_| HboneError::ConnectTimeout(key.dst))?
            .map_err(|source| HboneError::Dial { addr: key.dst, source })?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (conn, driver) =
            tokio::time::timeout(cfg.handshake_timeout, conn::handshake(id, tcp, key, &cert, cfg.clock.clone()))
                .await
                .map_err(|_| HboneError::HandshakeTimeout(key.dst))??;
        self.inner.open.send_modify(|n| *n += 1);
        let weak = Arc::downgrade(&self.inner);
        let key = key.clone();
        let conn2 = conn.clone();
        let idle_timeout = cfg.idle_timeout;
        let clock = cfg.clock.clone();
        tokio::spawn(async move {
            conn::drive(conn2.clone(), driver, clock, idle_timeout, || {
                // Evict under the pool lock so no tunnel reserves a slot on a closing conn.
                let Some(inner) = weak.upgrade() else {
                    return true;
                };
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                if !conn2.close_if_idle() {
                    return false;
                }
                if let Some(k) = state.get_mut(&key) {
                    k.conns.retain(|c| !Arc::ptr_eq(c, &conn2));
                    if k.conns.is_empty() && Arc::strong_count(&k.dial_lock) == 1 {
                        state.remove(&key);
                    }
                }
                true
            })
            .await;
            if let Some(inner) = weak.upgrade() {
                // The connection ended (idle, peer GOAWAY, error): forget it.
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(k) = state.get_mut(&key) {
                    k.conns.retain(|c| !Arc::ptr_eq(c, &conn2));
                }
                drop(state);
                inner.open.send_modify(|n| *n -= 1);
            }
        });
        Ok(conn)
    }
}
