//! Retry delays for failed watches: exponential with jitter, reset by the first success.
//!
//! Jitter matters here: when the API server restarts, every agent in the cluster loses its
//! watches at the same moment, and without it they would all relist in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// xorshift state for the jitter; no need for a cryptographic generator.
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Self { min, max: max.max(min), next: min, seed }
    }

    fn random_fraction(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// The current delay with ±20% jitter, then doubles it up to `max`.
    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = 0.8 + 0.4 * self.random_fraction();
        Some(base.mul_f64(factor))
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn doubles_up_to_max_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let got: Vec<_> = (&mut b).take(6).collect();
        let bases = [100, 200, 400, 800, 1000, 1000];
        for (d, base) in got.iter().zip(bases) {
            let ms = d.as_millis() as u64;
            assert!(ms >= base * 8 / 10 && ms <= base * 12 / 10, "{ms} ms for base {base}");
        }
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(120));
    }
}
