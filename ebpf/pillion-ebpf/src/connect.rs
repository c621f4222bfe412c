//! cgroup/connect4 and connect6: outbound capture.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use core::ptr::{addr_of_mut, write_volatile};
use pillion_common::{
    AF_INET, AF_INET6, DNS_PORT, DNS_QUERY_PORT, OUTBOUND_PORT, POD_FLAG_DNS, POD_FLAG_OUTBOUND_V6, PodConfig, SockAddr,
    stat,
};

use crate::dns::{steer_udp4, steer_udp6};
use crate::{ENROLLED, EXEMPT_CGROUPS, PENDING, count};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;

/// 127.0.0.1 as the kernel stores it (network byte order in a native u32).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The third word of a v4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

#[cgroup_sock_addr(connect4)]
pub fn pillion_connect4(ctx: SockAddrContext) -> i32 {
    // A connected UDP socket's DNS (glibc's way): to the DNS proxy.
    if steer_udp4(&ctx) {
        return ALLOW;
    }
    // Fail closed: an error inside an enrolled pod refuses the connect rather
    // than letting it leave uncaptured.
    try_connect4(&ctx).unwrap_or_else(|_| {
        warn!(&ctx, "connect4: capture failed, connect refused");
        REFUSE
    })
}

#[cgroup_sock_addr(connect6)]
pub fn pillion_connect6(ctx: SockAddrContext) -> i32 {
    if steer_udp6(&ctx) {
        return ALLOW;
    }
    try_connect6(&ctx).unwrap_or_else(|_| {
        warn!(&ctx, "connect6: capture failed, connect refused");
        REFUSE
    })
}

/// The enrolled pod this connect belongs to, or `None` when it is not ours
/// to capture (not TCP, not an enrolled netns, or the agent's own socket).
#[inline(always)]
fn enrolled_pod(ctx: &SockAddrContext) -> Option<PodConfig> {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || sa.type_ != SOCK_STREAM {
        return None;
    }
    // SAFETY: helpers valid in cgroup/connect programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain map lookups.
    let pod = unsafe { ENROLLED.get(&netns) }.copied()?;
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { EXEMPT_CGROUPS.get(&cgroup) }.is_some() {
        return None;
    }
    Some(pod)
}

#[inline(always)]
fn park(ctx: &SockAddrContext, dst: &SockAddr) -> Result<(), i32> {
    // SAFETY: helper valid in cgroup/connect programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    PENDING.insert(&cookie, dst, 0)
}

/// The agent's listener for a captured TCP connect to `port`: its DNS proxy for
/// DNS (where the pod's DNS is captured), else its outbound proxy.
#[inline(always)]
fn listener_port(pod: &PodConfig, port: u16) -> u16 {
    if port == DNS_QUERY_PORT && pod.flags & POD_FLAG_DNS != 0 { DNS_PORT } else { OUTBOUND_PORT }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let Some(pod) = enrolled_pod(ctx) else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    if is_local4(ip) {
        return Ok(ALLOW);
    }
    let dst = SockAddr { addr: [ip, 0, 0, 0], port: u16::from_be(port as u16), family: AF_INET };
    park(ctx, &dst)?;
    let to = listener_port(&pod, dst.port);
    // Full 32-bit volatile stores: the verifier rejects narrower or merged
    // writes to these context fields.
    // SAFETY: writable fields of bpf_sock_addr for connect4.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), LOOPBACK4);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(to.to_be()));
    }
    count(stat::CONNECT_REDIRECTED);
    Ok(ALLOW)
}

fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let Some(pod) = enrolled_pod(ctx) else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    let (ip, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    let port = u16::from_be(port as u16);
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD;
    if mapped {
        if is_local4(ip[3]) {
            return Ok(ALLOW);
        }
        let dst = SockAddr { addr: [ip[3], 0, 0, 0], port, family: AF_INET };
        park(ctx, &dst)?;
        let to = listener_port(&pod, port);
        // ::ffff:127.0.0.1 reaches the IPv4 outbound listener.
        // SAFETY: writable fields of bpf_sock_addr for connect6.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), 0);
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), 0);
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), V4_MAPPED_WORD);
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), LOOPBACK4);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(to.to_be()));
        }
        count(stat::CONNECT_REDIRECTED);
        return Ok(ALLOW);
    }
    let unspecified_or_loopback = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == 0 || ip[3] == LOOPBACK6_LAST);
    if unspecified_or_loopback {
        return Ok(ALLOW);
    }
    if pod.flags & POD_FLAG_OUTBOUND_V6 == 0 {
        // No [::1]:15001 in this pod: refuse rather than let it out uncaptured.
        count(stat::CONNECT_NO_V6_LISTENER);
        return Ok(REFUSE);
    }
    let dst = SockAddr { addr: ip, port, family: AF_INET6 };
    park(ctx, &dst)?;
    let to = listener_port(&pod, port);
    // SAFETY: writable fields of bpf_sock_addr for connect6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), 0);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), 0);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), 0);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), LOOPBACK6_LAST);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(to.to_be()));
    }
    count(stat::CONNECT_REDIRECTED);
    Ok(ALLOW)
}

/// 127.0.0.0/8 or 0.0.0.0: traffic that never leaves the pod.
#[inline(always)]
fn is_local4(ip: u32) -> bool {
    let first = ip.to_ne_bytes()[0];
    first == 127 || ip == 0
}
