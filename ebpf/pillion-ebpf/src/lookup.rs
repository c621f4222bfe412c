//! sk_lookup: steer inbound TCP for an enrolled pod to the agent's 15006.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;
use core::ptr::{addr_of, read_volatile};
use pillion_common::{AF_INET, AF_INET6, HBONE_PORT, IpKey, PROBE_SOURCE4_WORD, PROBE_SOURCE6_WORDS, stat};

use crate::{INBOUND, count};

const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn pillion_sk_lookup(ctx: SkLookupContext) -> u32 {
    // This program runs only in enrolled pods' namespaces: anything it cannot
    // decide is dropped, never handed to the app uncaptured.
    try_sk_lookup(&ctx).unwrap_or(SK_DROP)
}

/// Reads a context field with one load at a constant offset: the verifier
/// rejects loads through a context pointer that was moved (e.g. by a copy).
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { read_volatile(addr_of!((*$ctx.lookup).$($f)+)) }
    };
}

fn ip6(ctx: &SkLookupContext, remote: bool) -> [u32; 4] {
    if remote {
        [field!(ctx, remote_ip6[0]), field!(ctx, remote_ip6[1]), field!(ctx, remote_ip6[2]), field!(ctx, remote_ip6[3])]
    } else {
        [field!(ctx, local_ip6[0]), field!(ctx, local_ip6[1]), field!(ctx, local_ip6[2]), field!(ctx, local_ip6[3])]
    }
}

#[inline(always)]
fn is_probe_source(remote: &IpKey) -> bool {
    if remote.family == u32::from(AF_INET) {
        remote.addr[0] == PROBE_SOURCE4_WORD
    } else {
        remote.addr == PROBE_SOURCE6_WORDS
    }
}

fn try_sk_lookup(ctx: &SkLookupContext) -> Result<u32, i32> {
    let protocol = field!(ctx, protocol);
    let local_port = field!(ctx, local_port);
    if protocol != IPPROTO_TCP || local_port == u32::from(HBONE_PORT) {
        return Ok(SK_PASS);
    }
    // Through `lo`: the agent's own (transparent, marked) dial to the app, which
    // the pod routes through `lo` (agent/src/proxy/transparent.rs), and 127/8.
    // A process of the pod dialling its own address arrives with the address's
    // device, and is let through below (local == remote).
    if field!(ctx, ingress_ifindex) == LOOPBACK_IFINDEX {
        return Ok(SK_PASS);
    }
    let family = field!(ctx, family);
    let (local, remote) = if family == u32::from(AF_INET) {
        (
            IpKey { family, addr: [field!(ctx, local_ip4), 0, 0, 0] },
            IpKey { family, addr: [field!(ctx, remote_ip4), 0, 0, 0] },
        )
    } else if family == u32::from(AF_INET6) {
        (IpKey { family, addr: ip6(ctx, false) }, IpKey { family, addr: ip6(ctx, true) })
    } else {
        return Ok(SK_PASS);
    };
    // The pod talking to itself on its own address: not inbound traffic.
    if local == remote {
        return Ok(SK_PASS);
    }
    // Only the kubelet's probes, which the agent binds to the sentinel source
    // by cgroup, skip the agent. Every other source — node addresses
    // included (host-network pods, masqueraded NodePort clients) — meets
    // STRICT, policy and the access log.
    if is_probe_source(&remote) {
        count(stat::INBOUND_PROBE_PASSED);
        return Ok(SK_PASS);
    }
    // A program attached before ours (an older agent's, while an upgrade
    // swaps the pod's link) already steered this connection: keep its choice
    // rather than fail to assign over it.
    // SAFETY: the context pointer is valid for the program's run.
    if !unsafe { read_volatile(addr_of!((*ctx.lookup).__bindgen_anon_1.__bindgen_anon_1.sk)) }.is_null() {
        return Ok(SK_PASS);
    }
    match INBOUND.redirect_sk_lookup(ctx, local, 0) {
        Ok(()) => {
            count(stat::INBOUND_STEERED);
            Ok(SK_PASS)
        }
        Err(_) => {
            count(stat::INBOUND_DROPPED);
            warn!(ctx, "sk_lookup: no inbound listener for port {}, dropped", local_port);
            Ok(SK_DROP)
        }
    }
}
