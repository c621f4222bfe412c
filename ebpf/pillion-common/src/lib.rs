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

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `PodConfig::flags`: the agent bound `[::1]:15001` in this pod, so native
/// IPv6 connects can be captured. Without it they are refused (fail closed).
pub const POD_FLAG_OUTBOUND_V6: u32 = 1;

/// Names of the maps and programs in the object (also their pin names).
pub mod names {
    pub const MAP_ENROLLED: &str = "ENROLLED";
    pub const MAP_EXEMPT_CGROUPS: &str = "EXEMPT_CGROUPS";
    pub const MAP_PENDING: &str = "PENDING";
    pub const MAP_ORIG_DST: &str = "ORIG_DST";
    pub const MAP_NODE_ADDRS: &str = "NODE_ADDRS";
    pub const MAP_INBOUND: &str = "INBOUND";
    pub const MAP_STATS: &str = "STATS";
    pub const PROG_CONNECT4: &str = "pillion_connect4";
    pub const PROG_CONNECT6: &str = "pillion_connect6";
    pub const PROG_SOCKOPS: &str = "pillion_sockops";
    pub const PROG_SK_LOOKUP: &str = "pillion_sk_lookup";
    pub const ALL_MAPS: [&str; 7] =
        [MAP_ENROLLED, MAP_EXEMPT_CGROUPS, MAP_PENDING, MAP_ORIG_DST, MAP_NODE_ADDRS, MAP_INBOUND, MAP_STATS];
}

/// Indices into the per-CPU `STATS` array, counted by the kernel programs.
pub mod stat {
    pub const CONNECT_REDIRECTED: u32 = 0;
    pub const CONNECT_NO_V6_LISTENER: u32 = 1;
    pub const ORIG_DST_RECORDED: u32 = 2;
    pub const INBOUND_STEERED: u32 = 3;
    pub const INBOUND_DROPPED: u32 = 4;
    pub const INBOUND_PROBE_PASSED: u32 = 5;
    pub const COUNT: u32 = 6;
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

/// Key of `ORIG_DST`: unique per pod (netns cookie), per listener side and
/// per client port — two pods using the same ephemeral port never collide.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    pub side: u32,
    pub client_port: u32,
}

/// Key of `NODE_ADDRS` and `INBOUND`: an IP address with its family.
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
}
