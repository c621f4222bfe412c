//! Network namespaces: identify them, and create sockets inside them.
//!
//! A socket belongs to the netns of the thread that created it, for life. The
//! agent therefore creates a pod's listeners and upstream sockets with its
//! thread switched into the pod's netns, then switches back at once.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{CloneFlags, setns};

/// `ioctl(NS_GET_NSTYPE)`: what kind of namespace a file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: ioctl with no argument on a valid fd.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace"));
        }
        let meta = file.metadata()?;
        Ok(Self { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino(), file })
    }

    /// The agent's own network namespace (opened once, at first use).
    pub fn own() -> &'static Netns {
        static OWN: OnceLock<Netns> = OnceLock::new();
        OWN.get_or_init(|| {
            Netns::open(Path::new("/proc/thread-self/ns/net")).expect("the agent can open its own network namespace")
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inode number: the namespace's identity (what `ip netns identify` uses).
    pub fn inode(&self) -> u64 {
        self.ino
    }

    pub fn same_as(&self, other: &Netns) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Runs `f` with the current thread inside this netns, then switches
    /// back. Keep `f` short and non-blocking: it runs on the caller's thread.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        // Resolve the way back before leaving.
        let own = Netns::own();
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(err) = setns(own.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in a pod's netns would put every later socket in
            // the wrong place; there is no safe way to continue.
            eprintln!("FATAL: cannot return to the agent's network namespace: {err}");
            std::process::abort();
        }
        Ok(out)
    }

    /// Runs `f` on a fresh thread that lives in this netns until `f` returns.
    /// For slow work (binding listeners, sysctls) off the async runtime.
    pub fn run_on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let _ = Netns::own();
        let fd = self.file.try_clone()?;
        std::thread::Builder::new()
            .name("pillion-netns".into())
            .spawn(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("netns worker thread panicked"))?
    }

    /// Creates a TCP socket inside this netns (close-on-exec, non-blocking).
    pub fn tcp_socket(&self, v6: bool) -> io::Result<OwnedFd> {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        self.enter(|| {
            // SAFETY: plain socket(2) call; the fd is owned right away.
            let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh, valid descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?
    }

    /// The netns cookie the kernel programs see (`bpf_get_netns_cookie`).
    pub fn cookie(&self) -> io::Result<u64> {
        let sock = self.tcp_socket(false)?;
        socket_netns_cookie(&sock)
    }
}

/// Writes the net sysctl `name` (e.g. `ipv4/tcp_migrate_req`) of the calling thread's netns:
/// through `/proc/sys/net`, or `<proc_root>/sys/net` where `/proc/sys` is read-only (a
/// container's; net sysctls resolve to the writer's netns whichever mount is used).
pub fn write_net_sysctl(proc_root: &Path, name: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys/net").join(name);
    std::fs::write(&path, value).or_else(|_| std::fs::write(proc_root.join("sys/net").join(name), value))
}

/// `SO_NETNS_COOKIE` of a socket.
pub fn socket_netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, b"x").unwrap();
        let err = Netns::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn own_netns_equals_itself_and_has_a_cookie() {
        let a = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(a.same_as(Netns::own()));
        assert!(a.cookie().unwrap() > 0);
    }
}
