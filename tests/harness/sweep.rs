//! Removes what earlier runs left behind when they were killed before their
//! own cleanup ran: only names under our prefixes whose owning process is gone.

use std::path::Path;

use crate::sys::{cgroup2_root, ip_quiet, remove_cgroup_tree};

/// Prefixes of the harness (`pe`) and of `cargo xtask demo` (`pd`).
pub const PREFIXES: [&str; 2] = ["pe", "pd"];
pub const CGROUP_DIR: &str = "pillion-e2e";
pub const TMP_DIR: &str = "/tmp/pillion-e2e";
pub const PIN_DIR: &str = "/sys/fs/bpf/pillion";

/// The owner pid encoded in a name like `pe1234x7-node`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('x') {
        return None;
    }
    digits.parse().ok()
}

fn owner_gone(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| {
        // SAFETY: signal 0 only checks for existence.
        let rc = unsafe { libc::kill(pid, 0) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    })
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Removes every pin file under `dir` (unlinking a link's pin detaches it),
/// then the directories.
pub fn remove_pin_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_pin_tree(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn sweep_leftovers() {
    let mut swept = 0;
    for name in entries(Path::new("/var/run/netns")) {
        if owner_gone(&name) {
            ip_quiet(&["netns", "del", &name]);
            swept += 1;
        }
    }
    let cg = cgroup2_root().join(CGROUP_DIR);
    for name in entries(&cg) {
        if owner_gone(&name) {
            remove_cgroup_tree(&cg.join(&name));
            swept += 1;
        }
    }
    for name in entries(Path::new(PIN_DIR)) {
        if owner_gone(&name) {
            remove_pin_tree(&Path::new(PIN_DIR).join(&name));
            swept += 1;
        }
    }
    for name in entries(Path::new(TMP_DIR)) {
        if owner_gone(&name) {
            let _ = std::fs::remove_dir_all(Path::new(TMP_DIR).join(&name));
            swept += 1;
        }
    }
    if swept > 0 {
        eprintln!("harness: swept {swept} leftovers of earlier runs that were killed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_parse_only_our_names() {
        assert_eq!(owner_pid("pe1234x7-node"), Some(1234));
        assert_eq!(owner_pid("pd99x0"), Some(99));
        assert_eq!(owner_pid("pex7"), None);
        assert_eq!(owner_pid("pe12-node"), None);
        assert_eq!(owner_pid("cni-1234"), None);
    }
}
