//! "No stream open for a while" on one HBONE connection. h2 has no idle timeout of its own
//! (hyper's keep-alive is not available on a raw `h2` server), so each stream holds a token
//! and the connection watches the count.

use std::time::Duration;

use tokio::sync::watch;

/// Open streams of one connection.
#[derive(Debug)]
pub(super) struct Streams {
    count: watch::Sender<usize>,
}

impl Default for Streams {
    fn default() -> Self {
        Self { count: watch::Sender::new(0) }
    }
}

/// Held by a stream's task; dropping it ends the stream for the count.
pub(super) struct Open(watch::Sender<usize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Streams {
    pub(super) fn open(&self) -> Open {
        self.count.send_modify(|n| *n += 1);
        Open(self.count.clone())
    }

    /// Resolves once no stream has been open for `timeout` (any stream opening restarts it).
    pub(super) async fn idle_for(&self, timeout: Duration) {
        let mut rx = self.count.subscribe();
        loop {
            // The sender lives in `self`, so these never fail.
            let _ = rx.wait_for(|n| *n == 0).await;
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                _ = rx.changed() => {}
            }
        }
    }
}
