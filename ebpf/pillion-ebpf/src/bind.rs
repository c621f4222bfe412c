//! cgroup/bind4 and bind6 at the capture root: nothing binds the probe source
//! itself. The probe source is a local address of the node (so replies to
//! probes are delivered), and without this guard any host-network process
//! could bind it and pass as the kubelet. The kubelet's own sockets get it
//! from `bpf_bind` in `probe.rs`, which does not run these hooks.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use pillion_common::{PROBE_SOURCE4_WORD, PROBE_SOURCE6_WORDS, stat};

use crate::{count, probe::user_ip6};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// The third word of a v4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[cgroup_sock_addr(bind4)]
pub fn pillion_bind4(ctx: SockAddrContext) -> i32 {
    // SAFETY: read of the context the kernel handed us.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    verdict(ip == PROBE_SOURCE4_WORD)
}

#[cgroup_sock_addr(bind6)]
pub fn pillion_bind6(ctx: SockAddrContext) -> i32 {
    let ip = user_ip6(&ctx);
    let mapped4 = ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD && ip[3] == PROBE_SOURCE4_WORD;
    verdict(ip == PROBE_SOURCE6_WORDS || mapped4)
}

#[inline(always)]
fn verdict(probe_source: bool) -> i32 {
    if probe_source {
        count(stat::BIND_TO_PROBE_SOURCE_REFUSED);
        REFUSE
    } else {
        ALLOW
    }
}
