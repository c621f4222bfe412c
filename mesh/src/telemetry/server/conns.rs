//! The telemetry servers' open connections, oldest first, and which of them are idle (not
//! inside a request: new and silent, or waiting between keep-alive requests). At the cap a new
//! connection evicts the oldest idle one, or the oldest of all when every one is busy, so
//! holding connections open can never keep a fresh client out; a client is only at risk if
//! `max` newer connections arrive during its own request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub(super) struct Table {
    inner: Arc<Mutex<Inner>>,
    max: usize,
}

struct Inner {
    next: u64,
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    /// Requests in progress (0 = idle).
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// One admitted connection; leaves the table when dropped.
pub(super) struct Conn {
    table: Table,
    seq: u64,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

impl Table {
    pub(super) fn new(max: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { next: 0, open: BTreeMap::new() })), max }
    }

    /// Registers a new connection, evicting one first at the cap. Returns whether one was.
    pub(super) fn admit(&self) -> (Conn, bool) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        if t.open.len() >= self.max {
            let idle = t.open.iter().find(|(_, e)| e.busy.load(Ordering::Acquire) == 0).map(|(k, _)| *k);
            if let Some(victim) = idle.or_else(|| t.open.keys().next().copied())
                && let Some(e) = t.open.remove(&victim)
            {
                e.evict.cancel();
                evicted = true;
            }
        }
        let seq = t.next;
        t.next += 1;
        let (busy, evict) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        t.open.insert(seq, Entry { busy: busy.clone(), evict: evict.clone() });
        (Conn { table: self.clone(), seq, busy, evict }, evicted)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).open.len()
    }
}

impl Conn {
    /// Resolves when this connection was evicted for a newer one.
    pub(super) async fn evicted(&self) {
        self.evict.cancelled().await
    }

    #[cfg(test)]
    pub(super) fn evict_requested(&self) -> bool {
        self.evict.is_cancelled()
    }

    /// A handle the request service uses to mark this connection busy.
    pub(super) fn activity(&self) -> Activity {
        Activity(self.busy.clone())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.open.remove(&self.seq);
    }
}

#[derive(Clone)]
pub(super) struct Activity(Arc<AtomicUsize>);

impl Activity {
    /// Busy until the returned guard drops (the response is ready).
    pub(super) fn busy(&self) -> Busy {
        self.0.fetch_add(1, Ordering::AcqRel);
        Busy(self.0.clone())
    }
}

pub(super) struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
