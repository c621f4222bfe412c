//! A small seeded random source (SplitMix64) for backend weights, jitter and fault
//! percentages: no dependency, and tests pin the seed to get the same choices every run.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// Seeded from the clock and the process id: different per process, which is all a
    /// load balancer needs (this is not for secrets).
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self::new((nanos as u64) ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; `n` must be non-zero.
    pub fn below(&self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0.0, 100.0)`.
    pub fn percent(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}
