//! What a case costs the processes under attack: resident memory sampled
//! every 100 ms (before, peak, after), CPU seconds from `/proc/<pid>/stat`,
//! the peak number of open file descriptors, and whether it survived.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::bench::scene::rss_bytes;

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15: indices 11 and 12 after the name.
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Whether `pid` is running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

struct Start {
    name: &'static str,
    pid: u32,
    rss: u64,
    cpu: f64,
}

/// Samples the targets from `start` until `finish`.
pub struct Sampler {
    starts: Vec<Start>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(u64, u64)>>,
    began: Instant,
}

impl Sampler {
    pub fn start(targets: &[(&'static str, u32)]) -> Sampler {
        let starts: Vec<Start> = targets
            .iter()
            .map(|&(name, pid)| Start { name, pid, rss: rss_bytes(pid), cpu: cpu_seconds(pid) })
            .collect();
        let pids: Vec<u32> = starts.iter().map(|s| s.pid).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // (peak RSS, peak fds) per target; bounded by the case's own bound.
            let mut peaks = vec![(0u64, 0u64); pids.len()];
            while !stopped.load(Ordering::SeqCst) {
                for (peak, &pid) in peaks.iter_mut().zip(&pids) {
                    peak.0 = peak.0.max(rss_bytes(pid));
                    peak.1 = peak.1.max(open_fds(pid));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        });
        Sampler { starts, stop, thread, began: Instant::now() }
    }

    /// Stops sampling: one object per target, sizes in MB.
    pub fn finish(self) -> Value {
        self.stop.store(true, Ordering::SeqCst);
        let peaks = self.thread.join().unwrap_or_default();
        let secs = self.began.elapsed().as_secs_f64();
        let mb = |b: u64| b as f64 / 1e6;
        let mut out = serde_json::Map::new();
        for (s, &(peak, fds)) in self.starts.iter().zip(&peaks) {
            let (rss, peak) = (rss_bytes(s.pid), peak.max(s.rss));
            out.insert(
                s.name.into(),
                json!({
                    "rss_before_mb": mb(s.rss), "rss_peak_mb": mb(peak), "rss_after_mb": mb(rss),
                    "rss_peak_delta_mb": mb(peak.saturating_sub(s.rss)),
                    "cpu_s": cpu_seconds(s.pid) - s.cpu, "cpu_share": (cpu_seconds(s.pid) - s.cpu) / secs.max(0.001),
                    "peak_fds": fds, "alive": alive(s.pid),
                }),
            );
        }
        Value::Object(out)
    }
}
