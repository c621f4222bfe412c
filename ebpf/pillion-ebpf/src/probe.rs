//! cgroup/connect4 and connect6 on the kubelet's cgroup: a connect to one of
//! this node's enrolled pods leaves from the probe source, the one source
//! sk_lookup lets through to the app uncaptured.
//!
//! The kubelet is selected by where these programs are attached (its cgroup),
//! never by address: a host-network process outside that cgroup reaches pods
//! from a node address, and that is captured like any other client.

use aya_ebpf::{bindings::sockaddr, helpers::generated::bpf_bind, macros::cgroup_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::warn;
use core::{
    mem::size_of,
    ptr::{addr_of, read_volatile},
};
use pillion_common::{AF_INET, AF_INET6, IpKey, PROBE_SOURCE4_WORD, PROBE_SOURCE6_WORDS, stat};

use crate::{POD_ADDRS, count};

const ALLOW: i32 = 1;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;

/// `struct sockaddr_in` (the bindings carry only the generic `sockaddr`).
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

// Both entries always allow the connect: should the bind fail, the probe
// leaves from a node address and is captured (under STRICT it fails) —
// the exemption fails closed, the kubelet's other connections are untouched.

#[cgroup_sock_addr(connect4)]
pub fn pillion_probe_connect4(ctx: SockAddrContext) -> i32 {
    probe4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn pillion_probe_connect6(ctx: SockAddrContext) -> i32 {
    probe6(&ctx);
    ALLOW
}

#[inline(always)]
fn is_tcp(ctx: &SockAddrContext) -> bool {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    sa.protocol == IPPROTO_TCP && sa.type_ == SOCK_STREAM
}

#[inline(always)]
fn is_pod(key: &IpKey) -> bool {
    // SAFETY: plain map lookup.
    unsafe { POD_ADDRS.get(key) }.is_some()
}

fn probe4(ctx: &SockAddrContext) {
    if !is_tcp(ctx) {
        return;
    }
    // SAFETY: read of the context the kernel handed us.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    if !is_pod(&IpKey { family: u32::from(AF_INET), addr: [ip, 0, 0, 0] }) {
        return;
    }
    // Port 0: the kernel picks the port at connect (as IP_BIND_ADDRESS_NO_PORT).
    let mut source = SockaddrIn { family: AF_INET, port: 0, addr: PROBE_SOURCE4_WORD, zero: [0; 8] };
    // SAFETY: bpf_bind is valid in connect hooks; `source` is a full sockaddr_in on the stack.
    let ret = unsafe {
        bpf_bind(ctx.sock_addr, (&raw mut source).cast::<sockaddr>(), size_of::<SockaddrIn>() as i32)
    };
    bound(ctx, ret);
}

fn probe6(ctx: &SockAddrContext) {
    if !is_tcp(ctx) {
        return;
    }
    let ip = user_ip6(ctx);
    // A v4-mapped destination on a v6 socket is left alone (a Go kubelet
    // dials IPv4 pods with IPv4 sockets): it is captured.
    if !is_pod(&IpKey { family: u32::from(AF_INET6), addr: ip }) {
        return;
    }
    let mut source = SockaddrIn6 { family: AF_INET6, port: 0, flowinfo: 0, addr: PROBE_SOURCE6_WORDS, scope_id: 0 };
    // SAFETY: bpf_bind is valid in connect hooks; `source` is a full sockaddr_in6 on the stack.
    let ret = unsafe {
        bpf_bind(ctx.sock_addr, (&raw mut source).cast::<sockaddr>(), size_of::<SockaddrIn6>() as i32)
    };
    bound(ctx, ret);
}

#[inline(always)]
fn bound(ctx: &SockAddrContext, ret: i64) {
    if ret == 0 {
        count(stat::PROBE_SOURCE_BOUND);
    } else {
        // Most likely the agent has not (yet) put the probe source on `lo`.
        count(stat::PROBE_SOURCE_BIND_FAILED);
        warn!(ctx, "probe: binding the probe source failed ({}); the probe will be captured", ret);
    }
}

/// The four words of `user_ip6`, one load each at a constant offset: the
/// verifier rejects loads through a moved context pointer (an array copy).
#[inline(always)]
pub(crate) fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    let sa = ctx.sock_addr;
    // SAFETY: reads of the context the kernel handed us.
    unsafe {
        [
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
        ]
    }
}
