//! A cap per source address inside a shared cap: without it one peer could hold every slot
//! of a pod's handshake cap with silent connections and shut the pod's inbound mesh traffic
//! out, while the node stayed up. With it, taking a pod's slots needs many source addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use super::{LimitMetrics, LogGate};

/// At most `max` holders at once per source address. Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct PerSourceLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    refused: Counter,
    log: LogGate,
}

/// One slot of one source, given back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    inner: Arc<Inner>,
    source: IpAddr,
}

impl PerSourceLimit {
    /// `name` is the metric label (`limit="<name>"` in `pillion_limit_refusals_total`).
    pub fn new(name: &'static str, max: usize, metrics: &LimitMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                max,
                held: Mutex::default(),
                refused: metrics.counter(name),
                log: LogGate::default(),
            }),
        }
    }

    /// A slot for `source`, or `None` when it already holds `max` (counted and logged).
    pub fn try_acquire(&self, source: IpAddr) -> Option<SourceSlot> {
        let inner = &self.inner;
        let source = source.to_canonical();
        let mut held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(source).or_default();
        if *n >= inner.max {
            drop(held);
            inner.refused.inc();
            if let Some(skipped) = inner.log.admit() {
                tracing::warn!(limit = inner.name, %source, max = inner.max, skipped, "per-source limit reached: refusing a connection");
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot { inner: self.inner.clone(), source })
    }

    /// Slots `source` holds now.
    pub fn held_by(&self, source: IpAddr) -> usize {
        let held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&source.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_more_than_its_share_and_slots_come_back() {
        let metrics = LimitMetrics::default();
        let l = PerSourceLimit::new("hbone_handshakes_per_source", 2, &metrics);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "a holds its two");
        // The v4-mapped spelling of the same address is the same source.
        assert!(l.try_acquire("::ffff:10.0.0.1".parse().unwrap()).is_none());
        assert!(l.try_acquire(b).is_some(), "b is not affected");
        assert_eq!(metrics.counter("hbone_handshakes_per_source").get(), 2);
        drop(a1);
        assert_eq!(l.held_by(a), 1);
        assert!(l.try_acquire(a).is_some());
    }
}
