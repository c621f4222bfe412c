//! Accepting without spinning. `accept(2)` fails over and over while the process is out of
//! file descriptors or the kernel out of memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); retrying
//! at once turns that into a 100 % CPU loop and a log flood. Those errors sleep, doubling from
//! [`BACKOFF_MIN`] to [`BACKOFF_MAX`] (so connections already open keep being served and can
//! free descriptors); a success resets the delay.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::LogGate;

pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept-error state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    server: &'static str,
    delay: Duration,
    log: LogGate,
}

impl AcceptBackoff {
    /// `server` names the loop in the log line ("hbone", "outbound", "metrics", …).
    pub fn new(server: &'static str) -> Self {
        Self { server, delay: BACKOFF_MIN, log: LogGate::default() }
    }

    /// The next connection of `listener`, retrying failures as the module says.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        self.retry(|| listener.accept()).await
    }

    /// [`AcceptBackoff::accept`] over any accept function (other listener types, tests).
    pub async fn retry<T, F, Fut>(&mut self, mut accept: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => {
                    self.delay = BACKOFF_MIN;
                    return accepted;
                }
                Err(e) => {
                    if let Some(pause) = self.failed(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Logs (rate-limited) and returns how long to wait before the next attempt, if at all.
    fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        if per_connection(e) {
            // The queued connection died before we took it; the next one is unaffected.
            tracing::debug!(server = self.server, error = %e, "accept: connection aborted by the peer");
            return None;
        }
        let pause = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        if let Some(skipped) = self.log.admit() {
            tracing::warn!(
                server = self.server, error = %e, backoff_ms = pause.as_millis() as u64, skipped,
                "accept failed; backing off (out of file descriptors or memory? raise the agent's RLIMIT_NOFILE or memory limit)"
            );
        }
        Some(pause)
    }
}

/// Errors about one queued connection, not about the listener or the process.
fn per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
        || e.raw_os_error() == Some(PROTO_ERROR)
}

/// `EPROTO`: Linux reports some protocol errors of a queued connection on `accept`.
const PROTO_ERROR: i32 = 71;
