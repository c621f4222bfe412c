//! bpffs and cgroup2 checks, and mounting bpffs when it is missing.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use crate::error::KernelError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Makes sure `path` is a bpffs, mounting one there if it is not.
pub fn ensure_bpffs(path: &Path) -> Result<(), KernelError> {
    if fs_magic(path).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let err = |source| KernelError::NoBpffs { path: path.to_path_buf(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| err(e.into()))?;
    match fs_magic(path) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        _ => Err(err(io::Error::other("mount succeeded but no bpffs is visible"))),
    }
}

/// Checks that `path` is a directory on a cgroup v2 mount.
pub fn check_cgroup2(path: &Path) -> Result<(), KernelError> {
    match fs_magic(path) {
        Ok(CGROUP2_SUPER_MAGIC) if path.is_dir() => Ok(()),
        _ => Err(KernelError::NotCgroup2 { path: path.to_path_buf() }),
    }
}

/// The cgroup v2 mount point containing the calling process's hierarchy.
pub fn cgroup2_mount() -> io::Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))
}

/// The cgroup id (the cgroup2 directory's inode) of the calling process.
pub fn own_cgroup_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry in /proc/self/cgroup"))?;
    let dir = cgroup2_mount()?.join(rel.trim_start_matches('/'));
    Ok(std::fs::metadata(dir)?.ino())
}

/// Moves the calling process into `dir` (created if missing).
pub fn join_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmp_dir_is_not_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_cgroup2(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a cgroup v2 directory"), "{err}");
    }

    #[test]
    fn own_cgroup_id_resolves() {
        assert!(own_cgroup_id().unwrap() > 0);
    }
}
