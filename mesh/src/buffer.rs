//! Read sizes for the byte relays (the agent's TCP relay, the HBONE relay): small
//! while a connection is idle or chatty, large while it moves bulk data.
//!
//! Idle and request/response connections must cost little (the agent holds thousands,
//! and a client pod can open them on purpose), while bulk transfers want fewer, larger
//! syscalls. So a read buffer starts small, grows ×4 whenever a read fills it, and
//! shrinks ×4 after two reads in a row used less than an eighth of it (one short read is
//! common in bulk transfers); a buffer held above twice its size is dropped for a new one,
//! so a connection that turns chatty after a burst gives the burst's memory back.
//!
//! Growth beyond the smallest size is drawn from a process-wide [`Budget`]: whatever the
//! peers do (a pod can open thousands of connections, upload fast and stop reading), the
//! relays' read buffers hold at most about the budget plus [`MIN_READ`] per direction.
//! When it is spent, new bulk transfers keep small reads (slower, never refused).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest read buffer.
pub const MIN_READ: usize = 4 * 1024;
/// Largest read buffer.
pub const MAX_READ: usize = 256 * 1024;
/// Bytes of read buffer above [`MIN_READ`] the whole process may hold: 256 directions
/// at [`MAX_READ`].
pub const GLOBAL_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes that buffers may grow by, shared by every relay drawing on it.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Self { limit, used: AtomicUsize::new(0) }
    }

    /// Bytes currently drawn.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The budget every relay of the process draws on.
pub static GLOBAL: Budget = Budget::new(GLOBAL_BUDGET);

/// The size the next read should offer. Holds its growth above [`MIN_READ`] from its
/// budget until it shrinks or is dropped.
#[derive(Debug)]
pub struct ReadSize {
    size: usize,
    /// The last read used less than an eighth of the buffer.
    short: bool,
    budget: &'static Budget,
}

impl Default for ReadSize {
    fn default() -> Self {
        Self::with_budget(&GLOBAL)
    }
}

impl Drop for ReadSize {
    fn drop(&mut self) {
        self.budget.give(self.size - MIN_READ);
    }
}

impl ReadSize {
    pub fn with_budget(budget: &'static Budget) -> Self {
        Self { size: MIN_READ, short: false, budget }
    }

    pub fn get(&self) -> usize {
        self.size
    }

    /// Learns from a read of `n` bytes into `offered` bytes of room.
    pub fn after_read(&mut self, n: usize, offered: usize) {
        let short = n < self.size / 8;
        if n >= offered && n >= self.size {
            let grown = (self.size * 4).min(MAX_READ);
            if self.budget.take(grown - self.size) {
                self.size = grown;
            }
        } else if short && self.short {
            let shrunk = (self.size / 4).max(MIN_READ);
            self.budget.give(self.size - shrunk);
            self.size = shrunk;
        }
        self.short = short;
    }

    /// Whether a buffer of `capacity` is held far above the current size (and should be
    /// replaced by one of [`Self::get`] before the next, possibly long, wait).
    pub fn oversized(&self, capacity: usize) -> bool {
        capacity > self.size * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_full_reads_and_shrinks_on_small_ones() {
        let mut s = ReadSize::default();
        for _ in 0..10 {
            let size = s.get();
            s.after_read(size, size);
        }
        assert_eq!(s.get(), MAX_READ);
        // Partial but substantial reads keep the size (bulk with scheduling noise).
        s.after_read(MAX_READ / 2, MAX_READ);
        assert_eq!(s.get(), MAX_READ);
        assert!(!s.oversized(MAX_READ));
        // One short read is bulk as usual; two in a row step the size down, and the burst's
        // buffer is oversized.
        s.after_read(100, MAX_READ);
        assert_eq!(s.get(), MAX_READ);
        s.after_read(100, MAX_READ);
        assert_eq!(s.get(), MAX_READ / 4);
        assert!(s.oversized(MAX_READ));
        for _ in 0..10 {
            s.after_read(1, s.get());
        }
        assert_eq!(s.get(), MIN_READ);
    }

    #[test]
    fn growth_stops_at_the_budget_and_comes_back_when_buffers_shrink_or_go() {
        // Room for two buffers grown to 64 KiB (60 KiB above the minimum each) and 12 KiB.
        static SMALL: Budget = Budget::new(132 * 1024);
        let grow = |s: &mut ReadSize| {
            for _ in 0..10 {
                let size = s.get();
                s.after_read(size, size);
            }
        };
        let mut first = ReadSize::with_budget(&SMALL);
        grow(&mut first);
        assert_eq!(first.get(), 64 * 1024, "256 KiB would take more than the budget");
        let mut second = ReadSize::with_budget(&SMALL);
        grow(&mut second);
        assert_eq!(second.get(), 64 * 1024);
        let mut third = ReadSize::with_budget(&SMALL);
        grow(&mut third);
        assert_eq!(third.get(), 16 * 1024, "what was left");
        assert_eq!(SMALL.used(), 132 * 1024);
        // A transfer that ends gives its growth back; the next one can use it.
        drop(second);
        grow(&mut third);
        assert_eq!(third.get(), 64 * 1024);
        first.after_read(1, first.get());
        first.after_read(1, first.get());
        assert_eq!(first.get(), 16 * 1024);
        drop(first);
        drop(third);
        assert_eq!(SMALL.used(), 0, "every byte drawn is given back");
    }
}
