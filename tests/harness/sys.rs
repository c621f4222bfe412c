//! Small system helpers: running `ip`, finding binaries, cgroup paths.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `ip <args>` and panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run `ip` (install iproute2: `cargo xtask setup`)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Like [`ip`] but ignores failure (cleanup paths).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Writes a sysctl inside a named netns.
pub fn netns_sysctl(netns: &str, key: &str, value: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .expect("run sysctl");
    assert!(out.status.success(), "sysctl {key} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The cgroup v2 mount point (e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup v2 mount (the tests attach capture programs to cgroup v2)")
}

/// Finds a workspace binary next to the running test or xtask executable
/// (`target/<profile>/<name>`), unless `env` overrides it.
pub fn locate_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    panic!(
        "cannot find the {name} binary next to {}; build it first (`cargo build -p ...`) or set {env}",
        exe.display()
    )
}

/// Removes a cgroup directory and its children, killing anything left inside.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("harness: could not remove cgroup {}", dir.display());
}
