//! The memory the waypoint may spend on buffered request bodies (kept for retries and
//! mirrors), bounded for the whole process and for each client identity, so that no client
//! allowed to reach one Service can grow the waypoint without bound (security review M4).
//! A request that would exceed either bound gets 503 at once, before it is buffered further.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Defaults: 256 MiB in all, 32 MiB per client identity (64 whole 4 MiB bodies, 8 per peer).
pub const DEFAULT_TOTAL: usize = 256 * 1024 * 1024;
pub const DEFAULT_PER_PEER: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("the waypoint's request buffer budget is spent (too many large bodies in flight); retry later")]
    Total,
    #[error("this client's request buffer budget is spent (too many large bodies in flight from one identity)")]
    Peer,
}

#[derive(Debug, Default)]
struct Used {
    total: usize,
    by_peer: HashMap<String, usize>,
}

#[derive(Debug)]
pub struct BodyBudget {
    total: usize,
    per_peer: usize,
    used: Mutex<Used>,
}

impl BodyBudget {
    pub fn new(total: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self { total, per_peer, used: Mutex::default() })
    }

    /// An empty reservation for `peer`, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>, peer: &str) -> Reservation {
        Reservation { budget: self.clone(), peer: peer.to_owned(), bytes: 0 }
    }

    /// Bytes held in all.
    pub fn in_use(&self) -> usize {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Bytes held for one request's body, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    peer: String,
    bytes: usize,
}

impl Reservation {
    /// Takes `n` more bytes, or nothing if either bound would be passed.
    pub fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        let b = &self.budget;
        let mut used = b.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.total.saturating_add(n) > b.total {
            return Err(Exhausted::Total);
        }
        let peer = used.by_peer.get(&self.peer).copied().unwrap_or(0);
        if peer.saturating_add(n) > b.per_peer {
            return Err(Exhausted::Peer);
        }
        used.total += n;
        used.by_peer.insert(self.peer.clone(), peer + n);
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        used.total -= self.bytes;
        if let Some(p) = used.by_peer.get_mut(&self.peer) {
            *p -= self.bytes;
            if *p == 0 {
                used.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_per_peer_and_in_all_and_bytes_come_back_on_drop() {
        let b = BodyBudget::new(100, 60);
        let mut a1 = b.reservation("a");
        a1.grow(50).unwrap();
        let mut a2 = b.reservation("a");
        assert_eq!(a2.grow(20), Err(Exhausted::Peer), "a holds 50 of its 60");
        a2.grow(10).unwrap();
        let mut c = b.reservation("c");
        assert_eq!(c.grow(50), Err(Exhausted::Total), "60 of 100 used");
        c.grow(40).unwrap();
        assert_eq!(b.in_use(), 100);
        drop((a1, a2));
        assert_eq!(b.in_use(), 40);
        let mut a3 = b.reservation("a");
        a3.grow(60).unwrap();
        drop((a3, c));
        assert_eq!(b.in_use(), 0);
        assert!(b.used.lock().unwrap().by_peer.is_empty(), "no entry left behind per peer");
    }
}
