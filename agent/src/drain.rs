//! Shutdown: a trigger the signal handler pulls and a watcher every server
//! holds. Servers stop accepting when triggered; in-flight connections each
//! hold a guard so the agent can wait for them up to a deadline.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Semaphore, watch};

/// A large number of permits; each live connection holds one.
const MAX_INFLIGHT: u32 = 1 << 20;

#[derive(Clone)]
pub struct Drain {
    stop: watch::Receiver<bool>,
    inflight: Arc<Semaphore>,
}

pub struct Trigger {
    stop: watch::Sender<bool>,
    inflight: Arc<Semaphore>,
}

/// Held by a connection while it is being served.
pub struct InflightGuard(#[expect(dead_code, reason = "held for its Drop")] tokio::sync::OwnedSemaphorePermit);

pub fn new() -> (Trigger, Drain) {
    let (tx, rx) = watch::channel(false);
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT as usize));
    (Trigger { stop: tx, inflight: inflight.clone() }, Drain { stop: rx, inflight })
}

impl Drain {
    /// Resolves once shutdown has started.
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn guard(&self) -> InflightGuard {
        let permit = self.inflight.clone().try_acquire_owned().expect("fewer than 2^20 connections in flight");
        InflightGuard(permit)
    }
}

impl Trigger {
    /// Tells every server to stop accepting, then waits for in-flight
    /// connections up to `deadline`. Returns how many were still open.
    pub async fn drain(self, deadline: Duration) -> usize {
        let _ = self.stop.send(true);
        let all = tokio::time::timeout(deadline, self.inflight.acquire_many(MAX_INFLIGHT)).await;
        match all {
            Ok(_) => 0,
            Err(_) => MAX_INFLIGHT as usize - self.inflight.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_guards_up_to_the_deadline() {
        let (trigger, drain) = new();
        let guard = drain.guard();
        let mut watcher = drain.clone();
        let held = tokio::spawn(async move {
            watcher.stopped().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(guard);
        });
        assert_eq!(trigger.drain(Duration::from_secs(5)).await, 0);
        held.await.unwrap();

        let (trigger, drain) = new();
        let _stuck = drain.guard();
        assert_eq!(trigger.drain(Duration::from_secs(2)).await, 1);
    }
}
