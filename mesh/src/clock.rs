//! Wall-clock time behind a trait, so certificate validity, renewal and idle release can be
//! driven by tests without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// The time source for everything that compares against certificate validity.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> SystemTime;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()>;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: `SystemTime::now` and tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        let wait = deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to. Sleepers wake as soon as an `advance` passes their
/// deadline, so tests exercise renewal deterministically.
#[derive(Debug, Clone)]
pub struct ManualClock {
    tx: Arc<watch::Sender<SystemTime>>,
    // Serialises advances so two concurrent advances cannot lose one another's step.
    lock: Arc<Mutex<()>>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self { tx: Arc::new(watch::channel(start).0), lock: Arc::default() }
    }

    /// Starts at the real current time, so certificates it stamps are plausible.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    pub fn advance(&self, by: Duration) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.tx.send_modify(|t| *t += by);
    }

    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.tx.borrow()
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; if every clone is gone,
            // nothing can advance time any more, so never waking is the honest answer.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_on_advance() {
        let clock = ManualClock::starting_now();
        let deadline = clock.now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn(clock.sleep_until(deadline));
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1800));
        sleeper.await.unwrap();
    }
}
