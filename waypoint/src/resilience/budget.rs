//! The retry budget (Gateway API `XBackendTrafficPolicy.retryConstraint`): retries may be at
//! most `percent` of the requests seen in `interval`, but `min_count` per `min_interval` are
//! always allowed so a quiet service can still retry. This stops retries from multiplying
//! the load on a backend that is already failing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub percent: f64,
    pub interval: Duration,
    pub min_count: u32,
    pub min_interval: Duration,
}

impl Default for BudgetConfig {
    /// Gateway API's documented defaults: 20% over 10 s, at least 10 retries per second.
    fn default() -> Self {
        Self { percent: 20.0, interval: Duration::from_secs(10), min_count: 10, min_interval: Duration::from_secs(1) }
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    /// (when, is a retry) for requests and retries in the last `interval` (or `min_interval`).
    events: Mutex<VecDeque<(Instant, bool)>>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self { config, events: Mutex::default() }
    }

    /// Counts an original request (not a retry).
    pub fn record_request(&self) {
        let now = Instant::now();
        let mut ev = self.lock(now);
        ev.push_back((now, false));
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self) -> bool {
        let now = Instant::now();
        let mut ev = self.lock(now);
        let in_window = |w: Duration| ev.iter().filter(move |(t, _)| now.duration_since(*t) < w);
        let requests = in_window(self.config.interval).filter(|(_, r)| !r).count() as f64;
        let retries = in_window(self.config.interval).filter(|(_, r)| *r).count();
        let recent_retries = in_window(self.config.min_interval).filter(|(_, r)| *r).count();
        let by_percent = retries < (requests * self.config.percent / 100.0).floor() as usize;
        let by_minimum = recent_retries < self.config.min_count as usize;
        if by_percent || by_minimum {
            ev.push_back((now, true));
            true
        } else {
            false
        }
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, VecDeque<(Instant, bool)>> {
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let keep = self.config.interval.max(self.config.min_interval);
        while ev.front().is_some_and(|(t, _)| now.duration_since(*t) >= keep) {
            ev.pop_front();
        }
        ev
    }
}
