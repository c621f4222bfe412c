//! Adds and removes the probe source on `lo` with two rtnetlink messages
//! (RTM_NEWADDR / RTM_DELADDR), so the node needs no `ip` binary.
//!
//! The address is host-local only so that replies to probes are delivered:
//! - IPv4 with scope `host`, so source selection never picks it for other
//!   traffic (only an explicit bind, which only the probe program may do);
//! - IPv6 deprecated (preferred lifetime 0) for the same reason, `nodad`.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, socket,
};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_HOST: u8 = 254;
/// `lo` is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Puts `ip` on `lo` of the calling thread's netns; replacing an existing
/// one makes this idempotent.
pub fn add_to_lo(ip: IpAddr) -> io::Result<()> {
    request(&message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, ip))
}

/// Removes `ip` from `lo`; an address already gone is not an error.
pub fn remove_from_lo(ip: IpAddr) -> io::Result<()> {
    match request(&message(RTM_DELADDR, 0, ip)) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

/// Whether `ip` is on `lo` (as the kernel reports the node's addresses).
pub fn on_lo(ip: IpAddr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut list| {
        list.any(|ifa| {
            ifa.interface_name == "lo"
                && ifa.address.is_some_and(|a| {
                    a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                        || a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
                })
        })
    })
}

fn message(kind: u16, extra_flags: u16, ip: IpAddr) -> Vec<u8> {
    let (family, prefix, flags, scope, octets): (u8, u8, u8, u8, Vec<u8>) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, 32, 0, RT_SCOPE_HOST, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, 128, IFA_F_NODAD, 0, v6.octets().to_vec()),
    };
    let mut body = vec![family, prefix, flags, scope];
    body.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    attr(&mut body, IFA_LOCAL, &octets);
    attr(&mut body, IFA_ADDRESS, &octets);
    if ip.is_ipv6() && kind == RTM_NEWADDR {
        // struct ifa_cacheinfo: preferred 0 (deprecated), valid forever.
        let lifetimes: Vec<u8> = [0u32, u32::MAX, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect();
        attr(&mut body, IFA_CACHEINFO, &lifetimes);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | extra_flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&body);
    msg
}

/// Appends a route attribute, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&(4 + data.len() as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Sends one request and reads the kernel's acknowledgement.
fn request(msg: &[u8]) -> io::Result<()> {
    let fd: OwnedFd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    send(fd.as_raw_fd(), msg, MsgFlags::empty())?;
    let mut reply = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
    if n < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("rtnetlink: no acknowledgement"));
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_well_formed() {
        let v4 = message(RTM_NEWADDR, NLM_F_CREATE, "169.254.7.127".parse().unwrap());
        // header 16 + ifaddrmsg 8 + two 8-byte attributes
        assert_eq!(v4.len(), 40);
        assert_eq!(u32::from_ne_bytes(v4[0..4].try_into().unwrap()) as usize, v4.len());
        assert_eq!(v4[19], RT_SCOPE_HOST);
        assert_eq!(&v4[28..32], &[169, 254, 7, 127]);
        let v6 = message(RTM_NEWADDR, NLM_F_CREATE, "fd16:9254:7127:1337:ffff:ffff:ffff:ffff".parse().unwrap());
        // + two 20-byte address attributes + a 20-byte cacheinfo
        assert_eq!(v6.len(), 16 + 8 + 20 + 20 + 20);
        let del = message(RTM_DELADDR, 0, "fd16:9254:7127:1337:ffff:ffff:ffff:ffff".parse().unwrap());
        assert_eq!(del.len(), 16 + 8 + 20 + 20);
    }
}
