//! The client's own address for the app: the agent dials the app from inside
//! the pod with the client's IP as its source (`IP_TRANSPARENT`), so the
//! app's `accept()`/`getpeername()` shows the real client, as without a mesh.
//!
//! Replies must come back to the agent's socket, not leave the pod for the
//! client's address. Without iptables this takes three settings in the pod's
//! netns, made at enrolment ([`prepare`]):
//! - the agent's socket carries [`MARK`] (`SO_MARK`), so its SYN does;
//! - `net.ipv4.tcp_fwmark_accept=1` (v4 and v6): the app's accepted socket
//!   takes the SYN's mark, so its SYN-ACK and every reply carry it;
//! - `ip rule fwmark MARK lookup TABLE` with `local default dev lo` in
//!   TABLE (v4 and v6), ahead of the local table (moved from priority 0 to
//!   100): marked packets are delivered inside the pod through `lo` — replies
//!   to the agent's socket, bound to the client's address, and the agent's
//!   SYN to the app, which sk_lookup then lets pass (ingress `lo`) instead of
//!   steering it back to the agent.
//!
//! Nothing else in the pod carries the mark: traffic from the node arrives
//! through the veth, which clears it. If [`prepare`] fails the pod is still
//! served, with the pod's own address as the source (and a warning).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
};

/// The mark on the agent's transparent sockets and the app's replies to them.
pub const MARK: u32 = 0x0015_0006;
/// The routing table that delivers marked packets locally.
pub const TABLE: u32 = 15006;
/// The mark rule, and where the local table's rule moves (from 0) to stay behind it.
const MARK_RULE_PRIORITY: u32 = 90;
const LOCAL_RULE_PRIORITY: u32 = 100;

/// Makes replies to transparent sockets stay in the pod. Runs on a thread
/// already inside the pod's netns; idempotent (an agent restart or handoff
/// runs it again).
pub fn prepare(proc_root: &Path) -> io::Result<()> {
    crate::netns::write_net_sysctl(proc_root, "ipv4/tcp_fwmark_accept", "1")?;
    crate::netlink::route_mark_to_lo(MARK, TABLE, MARK_RULE_PRIORITY, LOCAL_RULE_PRIORITY)
}

/// Makes `socket` (not yet bound) dial as `source`: transparent, so it may bind an address
/// the pod does not own, and marked, so the app's replies come back to it. The pod must have
/// been [`prepare`]d.
pub fn bind_as(socket: &std::net::TcpStream, source: IpAddr, v6: bool) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    if v6 {
        sock.set_ip_transparent_v6(true)?;
    } else {
        sock.set_ip_transparent_v4(true)?;
    }
    sock.set_mark(MARK)?;
    // Port 0: the kernel picks one free for this address.
    sock.bind(&SocketAddr::new(source, 0).into())
}

/// The source to show the app for a client at `client`, if one can be shown:
/// same family as `dst` (v4-mapped clients count as v4), not the pod's own
/// address (a pod calling itself keeps its address), not unspecified.
pub fn source_for(client: IpAddr, dst: SocketAddr) -> Option<IpAddr> {
    let client = crate::kernel::addr::canonical(client);
    let same_family = client.is_ipv6() == dst.is_ipv6();
    (same_family && client != dst.ip() && !client.is_unspecified() && !client.is_loopback()).then_some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_distinct_client_of_the_same_family_is_shown() {
        let dst4: SocketAddr = "10.1.1.2:8080".parse().unwrap();
        let dst6: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        let c4: IpAddr = "10.1.2.2".parse().unwrap();
        assert_eq!(source_for(c4, dst4), Some(c4));
        assert_eq!(source_for("::ffff:10.1.2.2".parse().unwrap(), dst4), Some(c4), "v4-mapped is v4");
        assert_eq!(source_for(c4, dst6), None, "no v4 source on a v6 socket");
        assert_eq!(source_for("10.1.1.2".parse().unwrap(), dst4), None, "the pod calling itself");
        assert_eq!(source_for("127.0.0.1".parse().unwrap(), dst4), None);
        assert_eq!(source_for("fd00::3".parse().unwrap(), dst6), Some("fd00::3".parse().unwrap()));
    }
}
