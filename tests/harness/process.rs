//! Processes started inside a namespace (and a pod's cgroup).

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// Makes `cmd` start inside `netns` and, if given, the cgroup whose
/// `cgroup.procs` is `procs` (both opened before fork; only raw syscalls run
/// in the child).
pub fn enter(cmd: &mut Command, netns: &Path, procs: Option<&Path>) {
    let ns = File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    let procs = procs.map(|p| {
        std::fs::OpenOptions::new().write(true).open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
    });
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &procs
                && libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A long-running workload (server, loop) whose stdout JSON lines are read
/// by a background thread.
pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Spawned {
    pub fn new(mut cmd: Command) -> Spawned {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Spawned { child, lines: rx }
    }

    /// The next JSON line, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Value {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| panic!("no output from workload within {timeout:?}: {e}"))
    }

    /// Waits for a line whose `event` is `event`.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self.next(left);
            if v["event"] == event {
                return v;
            }
        }
    }

    pub fn write_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to workload");
        stdin.flush().expect("flush");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "workload {} did not exit within {timeout:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What runs inside a pod: the `pillion-pod-tool` commands.
pub struct Workload;

impl Workload {
    pub fn tool() -> std::path::PathBuf {
        crate::locate_binary("pillion-pod-tool", "PILLION_POD_TOOL")
    }
}
