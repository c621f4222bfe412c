//! A pod's listeners, bound inside its network namespace.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
};

use pillion_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

const BACKLOG: i32 = 1024;

/// The agent's sockets inside one pod. IPv6 ones exist only where the pod has
/// `::1` (IPv6 enabled).
#[derive(Debug)]
pub struct PodListeners {
    pub outbound_v4: TcpListener,
    pub outbound_v6: Option<TcpListener>,
    pub inbound_v4: TcpListener,
    pub inbound_v6: Option<TcpListener>,
    /// HBONE on every address of the pod (`0.0.0.0:15008`, `[::]:15008`).
    pub hbone_v4: TcpListener,
    pub hbone_v6: Option<TcpListener>,
}

impl PodListeners {
    /// Binds all listeners from a thread inside `netns`. `SO_REUSEPORT` lets a
    /// new agent bind beside a running one; `tcp_migrate_req` makes the kernel
    /// hand the old listener's queued connections to the new one when the old
    /// closes, so a handoff resets nothing.
    /// `proc_root`: where to try when `/proc/sys` is read-only, as in a container; the
    /// DaemonSet mounts host `/proc` read-only with only `sys/net` writable over it (net
    /// sysctls resolve to the opening thread's netns, so either mount works).
    pub fn bind(netns: &Netns, proc_root: &std::path::Path) -> io::Result<PodListeners> {
        let proc_root = proc_root.to_path_buf();
        netns.run_on_thread(move || {
            if let Err(e) = crate::netns::write_net_sysctl(&proc_root, "ipv4/tcp_migrate_req", "1") {
                tracing::warn!(error = %e, proc_root = %proc_root.display(), "cannot enable tcp_migrate_req in the pod; a handoff may reset queued connections");
            }
            let v4 = |port| bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            let v6 = |port| match bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
                Ok(l) => Ok(Some(l)),
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
                Err(e) => Err(e),
            };
            let any6 = match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, HBONE_PORT))) {
                Ok(l) => Some(l),
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
                Err(e) => return Err(e),
            };
            Ok(PodListeners {
                outbound_v4: v4(OUTBOUND_PORT)?,
                outbound_v6: v6(OUTBOUND_PORT)?,
                inbound_v4: v4(INBOUND_PORT)?,
                inbound_v6: v6(INBOUND_PORT)?,
                hbone_v4: bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT)))?,
                hbone_v6: any6,
            })
        })
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    reuseport_listener(addr, true)
}

/// A non-blocking `SO_REUSEPORT` listener, so a new agent can bind beside a
/// running one. IPv6 sockets are v6-only unless `v6_only` is false (then
/// `[::]` serves IPv4 too).
pub fn reuseport_listener(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
