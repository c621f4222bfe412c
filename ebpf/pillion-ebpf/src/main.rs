//! Pillion's kernel programs.
//!
//! - `pillion_connect4` / `pillion_connect6` (cgroup/connect4, connect6): an
//!   enrolled pod's TCP connect is rewritten to the agent's outbound listener
//!   in the pod's own netns; the original destination is parked by socket
//!   cookie.
//! - `pillion_sockops` (sock_ops): once that socket is established, the parked
//!   destination is copied to a key the agent can compute from the accepted
//!   socket: (netns cookie, listener side, client port); the parked entry is
//!   dropped when the socket closes.
//! - `pillion_getpeername4` / `6` (cgroup/getpeername4, getpeername6): a
//!   captured socket's peer reads as the destination the app dialled, not the
//!   agent's listener.
//! - `pillion_sendmsg4` / `6`, `pillion_recvmsg4` / `6` (cgroup/sendmsg,
//!   recvmsg) and the connect programs: an enrolled pod's DNS goes to the
//!   agent's DNS proxy in its netns, replies read as from the resolver asked
//!   (`dns.rs`).
//! - `pillion_sk_lookup` (sk_lookup, one link per enrolled netns): inbound
//!   TCP to the pod is handed to the agent's 15006 listener; only the probe
//!   source (169.254.7.127 / fd16:9254:7127:1337:ffff:ffff:ffff:ffff) skips it.
//! - `pillion_probe_connect4` / `6` (cgroup/connect4, connect6 on the
//!   kubelet's cgroup): the kubelet's connects to enrolled pods are bound to
//!   that probe source.
//! - `pillion_bind4` / `6` (cgroup/bind4, bind6 at the capture root): no
//!   other process may bind the probe source itself.
//!
//! Pods are selected by netns cookie (`ENROLLED`), so several agents can share
//! one kernel and one cgroup tree without acting on each other's pods.
#![no_std]
#![no_main]

mod bind;
mod connect;
mod dns;
mod getpeername;
mod lookup;
mod probe;
mod sockops;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
};
use pillion_common::{IpKey, OrigDstKey, PodConfig, SockAddr, stat};

/// Enrolled pods of this agent's node: netns cookie → configuration.
#[map(name = "ENROLLED")]
static ENROLLED: HashMap<u64, PodConfig> = HashMap::pinned(4096, 0);

/// Cgroup ids whose sockets are never captured (the agent's own).
#[map(name = "EXEMPT_CGROUPS")]
static EXEMPT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(4096, 0);

/// Original destination by socket cookie, from connect until the socket
/// closes: sock_ops copies it to `ORIG_DST` for the agent, getpeername reads
/// it. LRU: a connect that never completes leaves an entry that ages out; past
/// 16,384 open captured sockets the oldest entries go first (their
/// getpeername then shows the agent's listener; capture is unaffected).
#[map(name = "PENDING")]
static PENDING: LruHashMap<u64, SockAddr> = LruHashMap::pinned(16384, 0);

/// Original destination of an established captured connection, read (and
/// deleted) by the agent when it accepts the connection.
#[map(name = "ORIG_DST")]
static ORIG_DST: LruHashMap<OrigDstKey, SockAddr> = LruHashMap::pinned(16384, 0);

/// Addresses of this node's enrolled pods: the kubelet's connects to them
/// get the probe source (`probe.rs`). Sized like `INBOUND`.
#[map(name = "POD_ADDRS")]
static POD_ADDRS: HashMap<IpKey, u32> = HashMap::pinned(8192, 0);

/// Inbound listener (15006) of each enrolled pod, keyed by the pod's address.
/// The kernel drops an entry when its socket closes: with the agent gone the
/// lookup misses and inbound is dropped (fail closed).
#[map(name = "INBOUND")]
static INBOUND: SockHash<IpKey> = SockHash::pinned(8192, 0);

/// The resolver a UDP socket last addressed on port 53, by socket cookie: its
/// replies from the DNS proxy read as from that resolver. LRU: DNS sockets are
/// short-lived and UDP has no close callback.
#[map(name = "DNS_ORIG")]
static DNS_ORIG: LruHashMap<u64, SockAddr> = LruHashMap::pinned(16384, 0);

/// The resolver each pod last addressed (netns cookie → address): where the DNS
/// proxy forwards the names it does not answer itself.
#[map(name = "DNS_UPSTREAM")]
static DNS_UPSTREAM: LruHashMap<u64, SockAddr> = LruHashMap::pinned(4096, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
