//! DNS capture: an enrolled pod's DNS to port 53 goes to the agent's DNS proxy
//! on `127.0.0.1:15053` / `[::1]:15053` in the pod's own netns.
//!
//! - UDP, unconnected (`sendto`): cgroup/sendmsg4/6 rewrite the destination.
//! - UDP, connected (`connect` then `send`, as glibc does): cgroup/connect4/6
//!   (from `connect.rs`) rewrite the connect.
//! - Replies: cgroup/recvmsg4/6 show the proxy's datagrams as coming from the
//!   resolver the app asked, which resolvers check.
//! - TCP to port 53: `connect.rs` sends it to the proxy's TCP listener; the
//!   original resolver travels like any captured connection's (`PENDING`).
//!
//! UDP fails open: a query goes to the proxy only while the agent's socket is
//! bound in the pod (a kernel socket lookup per query); with the agent gone it
//! goes to the pod's resolver as it would without the mesh. UDP is not captured
//! otherwise, so this opens no path that was closed.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_tuple,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_lookup_udp, bpf_sk_release},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::{addr_of_mut, write_volatile};
use pillion_common::{AF_INET, AF_INET6, DNS_PORT, DNS_QUERY_PORT, POD_FLAG_DNS, POD_FLAG_OUTBOUND_V6, SockAddr, stat};

use crate::{DNS_ORIG, DNS_UPSTREAM, ENROLLED, EXEMPT_CGROUPS, count};

/// sendmsg and recvmsg programs must return 1 (0 would fail the call).
const DONE: i32 = 1;
const IPPROTO_UDP: u32 = 17;
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);
/// `BPF_F_CURRENT_NETNS`: look the socket up in the caller's netns.
const CURRENT_NETNS: u64 = u64::MAX;

/// Whether this socket's DNS is the proxy's: an enrolled pod with DNS capture on,
/// not one of the agent's own sockets.
#[inline(always)]
pub fn captures_dns(ctx: &SockAddrContext) -> Option<u32> {
    // SAFETY: helpers valid in cgroup/sock_addr programs; plain map lookups.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let pod = unsafe { ENROLLED.get(&netns) }.copied()?;
    if pod.flags & POD_FLAG_DNS == 0 {
        return None;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { EXEMPT_CGROUPS.get(&cgroup) }.is_some() {
        return None;
    }
    Some(pod.flags)
}

/// Whether the agent's UDP DNS socket is bound in the caller's netns.
#[inline(always)]
fn proxy_bound(ctx: &SockAddrContext, v6: bool) -> bool {
    // SAFETY: an all-zero tuple is valid (any source).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if v6 {
        // SAFETY: writing a member of a plain-data union.
        unsafe {
            tuple.__bindgen_anon_1.ipv6.daddr = [0, 0, 0, LOOPBACK6_LAST];
            tuple.__bindgen_anon_1.ipv6.dport = DNS_PORT.to_be();
        }
        36
    } else {
        // SAFETY: writing a member of a plain-data union.
        unsafe {
            tuple.__bindgen_anon_1.ipv4.daddr = LOOPBACK4;
            tuple.__bindgen_anon_1.ipv4.dport = DNS_PORT.to_be();
        }
        12
    };
    // SAFETY: helper valid in cgroup/sock_addr programs; a found socket is released.
    let sk = unsafe { bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk as *mut _) };
    true
}

/// Remembers the resolver the app addressed: per socket, so its replies can be
/// shown as from it, and per pod, so the proxy knows where to forward.
#[inline(always)]
fn remember(ctx: &SockAddrContext, dst: &SockAddr) -> Result<(), i32> {
    // SAFETY: helpers valid in cgroup/sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    DNS_ORIG.insert(&cookie, dst, 0)?;
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    DNS_UPSTREAM.insert(&netns, dst, 0)
}

/// A UDP datagram or connect to port 53 of a non-loopback address, from a pod
/// whose DNS is captured: steered to the proxy when it is bound. `true` when
/// the address was rewritten.
#[inline(always)]
pub fn steer_udp4(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    let (protocol, ip, port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if protocol != IPPROTO_UDP || port != u32::from(DNS_QUERY_PORT.to_be()) || ip.to_ne_bytes()[0] == 127 || ip == 0 {
        return false;
    }
    if captures_dns(ctx).is_none() {
        return false;
    }
    if !proxy_bound(ctx, false) {
        count(stat::DNS_PASSED_NO_PROXY);
        return false;
    }
    let dst = SockAddr { addr: [ip, 0, 0, 0], port: DNS_QUERY_PORT, family: AF_INET };
    if remember(ctx, &dst).is_err() {
        // Without the record the reply could not be shown as the resolver's.
        return false;
    }
    // SAFETY: writable fields for connect4 and sendmsg4; full 32-bit stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), LOOPBACK4);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(DNS_PORT.to_be()));
    }
    count(stat::DNS_REDIRECTED);
    true
}

/// As [`steer_udp4`] for IPv6 sockets (v4-mapped destinations included).
#[inline(always)]
pub fn steer_udp6(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    let (protocol, ip, port) = unsafe { ((*sa).protocol, (*sa).user_ip6, (*sa).user_port) };
    if protocol != IPPROTO_UDP || port != u32::from(DNS_QUERY_PORT.to_be()) {
        return false;
    }
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD;
    let local = if mapped {
        ip[3].to_ne_bytes()[0] == 127 || ip[3] == 0
    } else {
        ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == 0 || ip[3] == LOOPBACK6_LAST)
    };
    if local {
        return false;
    }
    let Some(flags) = captures_dns(ctx) else { return false };
    // A native v6 query needs the proxy's [::1] socket; a v4-mapped one its 127.0.0.1.
    if (!mapped && flags & POD_FLAG_OUTBOUND_V6 == 0) || !proxy_bound(ctx, !mapped) {
        count(stat::DNS_PASSED_NO_PROXY);
        return false;
    }
    let dst = if mapped {
        SockAddr { addr: [ip[3], 0, 0, 0], port: DNS_QUERY_PORT, family: AF_INET }
    } else {
        SockAddr { addr: ip, port: DNS_QUERY_PORT, family: AF_INET6 }
    };
    if remember(ctx, &dst).is_err() {
        return false;
    }
    let to = if mapped { [0, 0, V4_MAPPED_WORD, LOOPBACK4] } else { [0, 0, 0, LOOPBACK6_LAST] };
    // SAFETY: writable fields for connect6 and sendmsg6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), to[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), to[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), to[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), to[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(DNS_PORT.to_be()));
    }
    count(stat::DNS_REDIRECTED);
    true
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pillion_sendmsg4(ctx: SockAddrContext) -> i32 {
    steer_udp4(&ctx);
    DONE
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pillion_sendmsg6(ctx: SockAddrContext) -> i32 {
    steer_udp6(&ctx);
    DONE
}

/// The resolver this socket addressed, for a datagram from the proxy.
#[inline(always)]
fn asked(ctx: &SockAddrContext) -> Option<SockAddr> {
    // SAFETY: the context pointer is valid for the program's run.
    let port = unsafe { (*ctx.sock_addr).user_port };
    // Every other datagram: no map lookup.
    if port != u32::from(DNS_PORT.to_be()) {
        return None;
    }
    // SAFETY: helper valid in cgroup/sock_addr programs; plain map lookup.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    unsafe { DNS_ORIG.get(&cookie) }.copied()
}

#[cgroup_sock_addr(recvmsg4)]
pub fn pillion_recvmsg4(ctx: SockAddrContext) -> i32 {
    let Some(dst) = asked(&ctx) else { return DONE };
    let sa = ctx.sock_addr;
    // SAFETY: the source read back must be the proxy's own address.
    if dst.family != AF_INET || unsafe { (*sa).user_ip4 } != LOOPBACK4 {
        return DONE;
    }
    // SAFETY: writable fields of bpf_sock_addr for recvmsg4.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), dst.addr[0]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    count(stat::DNS_REPLY_SOURCE_RESTORED);
    DONE
}

#[cgroup_sock_addr(recvmsg6)]
pub fn pillion_recvmsg6(ctx: SockAddrContext) -> i32 {
    let Some(dst) = asked(&ctx) else { return DONE };
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    let from = unsafe { (*sa).user_ip6 };
    let from_proxy = from[0] == 0
        && from[1] == 0
        && ((from[2] == 0 && from[3] == LOOPBACK6_LAST) || (from[2] == V4_MAPPED_WORD && from[3] == LOOPBACK4));
    if !from_proxy {
        return DONE;
    }
    let words = if dst.family == AF_INET6 { dst.addr } else { [0, 0, V4_MAPPED_WORD, dst.addr[0]] };
    // SAFETY: writable fields of bpf_sock_addr for recvmsg6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), words[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), words[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), words[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), words[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(dst.port.to_be()));
    }
    count(stat::DNS_REPLY_SOURCE_RESTORED);
    DONE
}
