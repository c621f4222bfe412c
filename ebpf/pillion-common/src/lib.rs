//! Types and constants shared by Pillion's kernel programs and the agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit widths and no hidden
//! padding, so the kernel and user space agree on the layout byte for byte.
#![no_std]

/// Outbound listener port inside each enrolled pod's network namespace.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener port (sk_lookup steers here).
pub const INBOUND_PORT: u16 = 15006;
/// HBONE inbound port; sk_lookup never steers it.
pub const HBONE_PORT: u16 = 15008;
/// The agent's DNS proxy inside each enrolled pod (UDP and TCP, on `127.0.0.1`
/// and `[::1]`): enrolled pods' DNS (port 53) is steered here.
pub const DNS_PORT: u16 = 15053;
/// The port DNS queries are addressed to.
pub const DNS_QUERY_PORT: u16 = 53;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `PodConfig::flags`: the agent bound `[::1]:15001` in this pod, so native
/// IPv6 connects can be captured. Without it they are refused (fail closed).
pub const POD_FLAG_OUTBOUND_V6: u32 = 1;
/// `PodConfig::flags`: the pod's DNS goes to the agent's DNS proxy (not set
/// for pods that opted out with `ambient.istio.io/dns-capture=false`).
pub const POD_FLAG_DNS: u32 = 2;

/// The one source inbound capture lets through to the app: the agent binds
/// the kubelet's connects to enrolled pods to it (selected by the kubelet's
/// cgroup, never by address). The addresses Istio's CNI SNATs probes to.
pub const PROBE_SOURCE4: [u8; 4] = [169, 254, 7, 127];
/// IPv6 probe source: `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`.
pub const PROBE_SOURCE6: [u8; 16] =
    [0xfd, 0x16, 0x92, 0x54, 0x71, 0x27, 0x13, 0x37, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The probe sources as the kernel programs hold addresses (network-order
/// bytes read as native words).
pub const PROBE_SOURCE4_WORD: u32 = u32::from_ne_bytes(PROBE_SOURCE4);
pub const PROBE_SOURCE6_WORDS: [u32; 4] = words6(PROBE_SOURCE6);

const fn words6(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// Names of the maps and programs in the object (also their pin names).
pub mod names {
    pub const MAP_ENROLLED: &str = "ENROLLED";
    pub const MAP_EXEMPT_CGROUPS: &str = "EXEMPT_CGROUPS";
    pub const MAP_PENDING: &str = "PENDING";
    pub const MAP_ORIG_DST: &str = "ORIG_DST";
    pub const MAP_POD_ADDRS: &str = "POD_ADDRS";
    /// Pinned by agents before 2026-12 (inbound from any node address was
    /// not captured); an upgrade empties and unpins it.
    pub const MAP_NODE_ADDRS_LEGACY: &str = "NODE_ADDRS";
    pub const MAP_INBOUND: &str = "INBOUND";
    pub const MAP_STATS: &str = "STATS";
    pub const MAP_DNS_ORIG: &str = "DNS_ORIG";
    pub const MAP_DNS_UPSTREAM: &str = "DNS_UPSTREAM";
    pub const PROG_CONNECT4: &str = "pillion_connect4";
    pub const PROG_CONNECT6: &str = "pillion_connect6";
    pub const PROG_SOCKOPS: &str = "pillion_sockops";
    pub const PROG_SK_LOOKUP: &str = "pillion_sk_lookup";
    pub const PROG_PROBE4: &str = "pillion_probe_connect4";
    pub const PROG_PROBE6: &str = "pillion_probe_connect6";
    pub const PROG_BIND4: &str = "pillion_bind4";
    pub const PROG_BIND6: &str = "pillion_bind6";
    pub const PROG_GETPEERNAME4: &str = "pillion_getpeername4";
    pub const PROG_GETPEERNAME6: &str = "pillion_getpeername6";
    pub const PROG_SENDMSG4: &str = "pillion_sendmsg4";
    pub const PROG_SENDMSG6: &str = "pillion_sendmsg6";
    pub const PROG_RECVMSG4: &str = "pillion_recvmsg4";
    pub const PROG_RECVMSG6: &str = "pillion_recvmsg6";
    pub const ALL_MAPS: [&str; 9] = [
        MAP_ENROLLED,
        MAP_EXEMPT_CGROUPS,
        MAP_PENDING,
        MAP_ORIG_DST,
        MAP_POD_ADDRS,
        MAP_INBOUND,
        MAP_STATS,
        MAP_DNS_ORIG,
        MAP_DNS_UPSTREAM,
    ];
}

/// Indices into the per-CPU `STATS` array, counted by the kernel programs.
pub mod stat {
    pub const CONNECT_REDIRECTED: u32 = 0;
    pub const CONNECT_NO_V6_LISTENER: u32 = 1;
    pub const ORIG_DST_RECORDED: u32 = 2;
    pub const INBOUND_STEERED: u32 = 3;
    pub const INBOUND_DROPPED: u32 = 4;
    pub const INBOUND_PROBE_PASSED: u32 = 5;
    pub const PROBE_SOURCE_BOUND: u32 = 6;
    pub const PROBE_SOURCE_BIND_FAILED: u32 = 7;
    pub const BIND_TO_PROBE_SOURCE_REFUSED: u32 = 8;
    pub const PEER_NAME_ANSWERED: u32 = 9;
    /// A DNS query (UDP or TCP to port 53) steered to the agent's DNS proxy.
    pub const DNS_REDIRECTED: u32 = 10;
    /// A UDP DNS query left to go to the pod's resolver because no agent DNS
    /// socket was bound in the pod (fail open).
    pub const DNS_PASSED_NO_PROXY: u32 = 11;
    /// A reply from the DNS proxy shown to the app as from the resolver it asked.
    pub const DNS_REPLY_SOURCE_RESTORED: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// Value of `ENROLLED`, keyed by the pod's netns cookie (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodConfig {
    pub flags: u32,
    pub _pad: u32,
}

/// An address as the kernel programs see it: four 32-bit words in network
/// byte order (IPv4 uses `addr[0]`), the port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockAddr {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
}

/// Which of the pod's two outbound listeners the captured socket reached:
/// the 4-tuple is unique only per listener address, so a v4 and a v6
/// connection may share a client port.
pub const SIDE_V4: u32 = 4;
pub const SIDE_V6: u32 = 6;
/// Added to the side for connections to the DNS proxy's TCP listener: one client
/// port may be connected to 15001 and 15053 at once.
pub const SIDE_DNS: u32 = 0x100;

/// Key of `ORIG_DST`: unique per pod (netns cookie), per listener side and
/// per client port — two pods using the same ephemeral port never collide.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    pub side: u32,
    pub client_port: u32,
}

/// Key of `POD_ADDRS` and `INBOUND`: an IP address with its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpKey {
    pub family: u32,
    pub addr: [u32; 4],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are plain-old-data `repr(C)` structs without padding.
    unsafe impl aya::Pod for super::PodConfig {}
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::IpKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<PodConfig>(), 8);
        assert_eq!(size_of::<SockAddr>(), 20);
        assert_eq!(size_of::<OrigDstKey>(), 16);
        assert_eq!(size_of::<IpKey>(), 20);
    }

    #[test]
    fn probe_sources_are_istios() {
        use std::string::ToString;
        let v4 = std::net::Ipv4Addr::from(PROBE_SOURCE4);
        let v6 = std::net::Ipv6Addr::from(PROBE_SOURCE6);
        assert_eq!(v4.to_string(), "169.254.7.127");
        assert_eq!(v6.to_string(), "fd16:9254:7127:1337:ffff:ffff:ffff:ffff");
        assert_eq!(PROBE_SOURCE4_WORD.to_ne_bytes(), PROBE_SOURCE4);
        assert_eq!(PROBE_SOURCE6_WORDS[3].to_ne_bytes(), [0xff; 4]);
    }
}
