//! Per-pod and agent-wide counters, read through the API's `status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Counters {
    pub outbound_accepted: AtomicU64,
    pub inbound_accepted: AtomicU64,
    pub hbone_accepted: AtomicU64,
    pub denied: AtomicU64,
    pub no_orig_dst: AtomicU64,
    pub upstream_failed: AtomicU64,
    pub active: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub outbound_accepted: u64,
    pub inbound_accepted: u64,
    pub hbone_accepted: u64,
    pub denied: u64,
    pub no_orig_dst: u64,
    pub upstream_failed: u64,
    pub active: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            outbound_accepted: get(&self.outbound_accepted),
            inbound_accepted: get(&self.inbound_accepted),
            hbone_accepted: get(&self.hbone_accepted),
            denied: get(&self.denied),
            no_orig_dst: get(&self.no_orig_dst),
            upstream_failed: get(&self.upstream_failed),
            active: get(&self.active),
        }
    }
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
