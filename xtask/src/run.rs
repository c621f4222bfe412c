//! Running commands with visible progress and timing.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

/// Runs `cmd`, streaming its output; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, or `None` if it fails or is missing.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, echoing every line of its stdout and stderr and returning
/// them all (for parsing test results), with its exit success.
pub fn run_capture(cmd: &mut Command) -> anyhow::Result<(bool, Vec<String>)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            lines.push(line);
        }
        lines
    });
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        println!("{line}");
        lines.push(line);
    }
    lines.extend(err_thread.join().unwrap_or_default());
    Ok((child.wait()?.success(), lines))
}

/// Times phases and prints a table at the end.
#[derive(Default)]
pub struct Phases {
    done: Vec<(String, f64, bool)>,
}

impl Phases {
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        println!("\n==> [{name}]");
        let started = Instant::now();
        let result = f();
        let secs = started.elapsed().as_secs_f64();
        println!("<== [{name}] {} in {secs:.1} s", if result.is_ok() { "done" } else { "FAILED" });
        self.done.push((name.to_string(), secs, result.is_ok()));
        result
    }

    pub fn print(&self) {
        println!("\nphase times:");
        for (name, secs, ok) in &self.done {
            println!("  {name:<22} {secs:>7.1} s{}", if *ok { "" } else { "  (failed)" });
        }
        let total: f64 = self.done.iter().map(|d| d.1).sum();
        println!("  {:<22} {total:>7.1} s", "total");
    }
}
