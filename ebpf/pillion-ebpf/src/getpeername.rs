//! cgroup/getpeername4 and getpeername6: a captured socket is connected to
//! the agent's outbound listener (127.0.0.1:15001 or [::1]:15001) or its DNS
//! proxy (15053); its peer
//! reads as the destination the app dialled, as it would without the mesh.
//! Some client libraries and proxies compare the two.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext};
use core::ptr::{addr_of_mut, write_volatile};
use pillion_common::{AF_INET, DNS_PORT, OUTBOUND_PORT, SockAddr, stat};

use crate::{DNS_ORIG, PENDING, count};

/// getpeername cannot be refused: 1 is the only return the kernel accepts.
const DONE: i32 = 1;
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The parked destination of a socket whose peer is the outbound listener.
#[inline(always)]
fn dialled(ctx: &SockAddrContext) -> Option<SockAddr> {
    // SAFETY: the context pointer is valid for the program's run.
    let port = unsafe { (*ctx.sock_addr).user_port };
    let dns = port == u32::from(DNS_PORT.to_be());
    // Every other socket in the cgroup tree: no map lookup.
    if port != u32::from(OUTBOUND_PORT.to_be()) && !dns {
        return None;
    }
    // SAFETY: helper valid in cgroup/sock_addr programs; plain map lookups.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let captured = unsafe { PENDING.get(&cookie) }.copied();
    // A connected UDP DNS socket's resolver is kept apart (DNS_ORIG).
    if captured.is_none() && dns { unsafe { DNS_ORIG.get(&cookie) }.copied() } else { captured }
}

#[cgroup_sock_addr(getpeername4)]
pub fn pillion_getpeername4(ctx: SockAddrContext) -> i32 {
    let Some(dst) = dialled(&ctx) else { return DONE };
    if dst.family != AF_INET {
        return DONE;
    }
    let sa = ctx.sock_addr;
    // SAFETY: writable fields of bpf_sock_addr for getpeername4; full 32-bit
    // stores, as the verifier requires.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), dst.addr[0]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    count(stat::PEER_NAME_ANSWERED);
    DONE
}

#[cgroup_sock_addr(getpeername6)]
pub fn pillion_getpeername6(ctx: SockAddrContext) -> i32 {
    let Some(dst) = dialled(&ctx) else { return DONE };
    // A v6 socket dialled an IPv4 destination as ::ffff:a.b.c.d.
    let words = if dst.family == AF_INET { [0, 0, V4_MAPPED_WORD, dst.addr[0]] } else { dst.addr };
    let sa = ctx.sock_addr;
    // SAFETY: writable fields of bpf_sock_addr for getpeername6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), words[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), words[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), words[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), words[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    count(stat::PEER_NAME_ANSWERED);
    DONE
}
