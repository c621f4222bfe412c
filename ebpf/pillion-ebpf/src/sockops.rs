//! sock_ops: copy a captured connection's original destination from its
//! socket cookie to the key the agent computes on accept, and forget the
//! cookie's entry when the socket closes (getpeername reads it until then).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use pillion_common::{AF_INET6, DNS_PORT, OrigDstKey, SIDE_DNS, SIDE_V4, SIDE_V6, stat};

use crate::{ORIG_DST, PENDING, count};

const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[sock_ops]
pub fn pillion_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // A failure here leaves no ORIG_DST entry; the agent then resets the
            // connection (fail closed), so there is nothing more to do.
            let _ = try_established(&ctx);
        }
        // Only captured sockets ask for state callbacks (below).
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: helper valid for sock_ops.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = PENDING.remove(&cookie);
        }
        _ => {}
    }
    1
}

fn try_established(ctx: &SockOpsContext) -> Result<(), i32> {
    // SAFETY: both helpers are valid for sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain map lookup.
    let Some(dst) = (unsafe { PENDING.get(&cookie) }).copied() else {
        return Ok(());
    };
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let side = if ctx.family() == u32::from(AF_INET6) {
        let local = ctx.local_ip6();
        let mapped = local[0] == 0 && local[1] == 0 && local[2] == V4_MAPPED_WORD;
        if mapped { SIDE_V4 } else { SIDE_V6 }
    } else {
        SIDE_V4
    };
    // sock_ops shows the remote port in network order, shifted into the high half
    // on little-endian machines; either spelling is the DNS proxy's.
    let remote = ctx.remote_port();
    let dns = u32::from(DNS_PORT.to_be());
    let side = if remote == dns || remote == dns << 16 { side + SIDE_DNS } else { side };
    let key = OrigDstKey { netns_cookie, side, client_port: ctx.local_port() };
    ORIG_DST.insert(&key, &dst, 0)?;
    // The cookie's entry stays for getpeername until the socket closes; without the
    // callback it stays until the LRU map ages it out.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    count(stat::ORIG_DST_RECORDED);
    Ok(())
}
