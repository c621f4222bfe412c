//! Read sizes for the byte relays (the agent's TCP relay, the HBONE relay): small
//! while a connection is idle or chatty, large while it moves bulk data.
//!
//! Idle and request/response connections must cost little (the agent holds thousands,
//! and a client pod can open them on purpose), while bulk transfers want fewer, larger
//! syscalls. So a read buffer starts small, grows ×4 whenever a read fills it, and
//! shrinks ×4 whenever a read uses less than an eighth of it; a buffer held above twice its
//! size is dropped for a new one, so a connection that goes quiet after a burst gives its
//! memory back instead of keeping the burst's buffer for its whole life.

/// Smallest read buffer.
pub const MIN_READ: usize = 4 * 1024;
/// Largest read buffer.
pub const MAX_READ: usize = 256 * 1024;

/// The size the next read should offer.
#[derive(Debug, Clone, Copy)]
pub struct ReadSize {
    size: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        Self { size: MIN_READ }
    }
}

impl ReadSize {
    pub fn get(&self) -> usize {
        self.size
    }

    /// Learns from a read of `n` bytes into `offered` bytes of room.
    pub fn after_read(&mut self, n: usize, offered: usize) {
        if n >= offered && n >= self.size {
            self.size = (self.size * 4).min(MAX_READ);
        } else if n < self.size / 8 {
            self.size = (self.size / 4).max(MIN_READ);
        }
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
        // A burst ends with a small read: the size steps down and the burst's buffer is
        // oversized.
        s.after_read(100, MAX_READ);
        assert_eq!(s.get(), MAX_READ / 4);
        assert!(s.oversized(MAX_READ));
        for _ in 0..10 {
            s.after_read(1, s.get());
        }
        assert_eq!(s.get(), MIN_READ);
    }
}
