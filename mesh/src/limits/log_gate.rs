//! One log line per interval for events an attacker can make happen at line rate.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most one warning per this interval per gate; the next line says how many were skipped.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(skipped since the last line)` when a line may be written now, else `None` (and
    /// the event is counted as skipped). Uses tokio's clock, so paused-time tests control it.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}
