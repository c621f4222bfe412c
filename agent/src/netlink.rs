//! The agent's few rtnetlink requests (rtnetlink crate), in the calling
//! thread's network namespace, so nodes and pods need no `ip` binary:
//! - the probe source on the node's `lo` ([`add_to_lo`], [`remove_from_lo`]);
//! - in a pod, marked packets delivered through `lo` ([`route_mark_to_lo`]), for
//!   the transparent dial to the app (`proxy::transparent`).
//!
//! Each call runs on a short-lived thread of its own (created by the caller's
//! thread, so in the caller's netns) with a one-thread runtime: callers are
//! synchronous, some of them on the agent's async runtime.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressScope, CacheInfo},
        route::{RouteMessage, RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

/// `lo` is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Runs `request` against a netlink socket opened in the calling thread's netns.
fn run<F, Fut>(request: F) -> io::Result<()>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), rtnetlink::Error>>,
{
    let worker = std::thread::Builder::new().name("pillion-netlink".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            request(handle).await.map_err(to_io)
        })
    })?;
    worker.join().map_err(|_| io::Error::other("netlink worker thread panicked"))?
}

/// A kernel refusal keeps its errno (callers match on EEXIST, ENOENT, …).
fn to_io(e: rtnetlink::Error) -> io::Error {
    match &e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() < 0 => io::Error::from_raw_os_error(-m.raw_code()),
        _ => io::Error::other(e.to_string()),
    }
}

/// Puts `ip` on `lo`, host-local only: IPv4 with scope `host`, IPv6
/// deprecated (preferred lifetime 0) and `nodad`, so source selection never
/// picks it by itself. Replacing an existing one makes this idempotent.
pub fn add_to_lo(ip: IpAddr) -> io::Result<()> {
    run(move |handle| async move {
        let prefix = if ip.is_ipv6() { 128 } else { 32 };
        let mut add = handle.address().add(LOOPBACK_IFINDEX, ip, prefix).replace();
        let message = add.message_mut();
        if ip.is_ipv6() {
            message.header.flags = AddressHeaderFlags::Nodad;
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = u32::MAX;
            message.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        } else {
            message.header.scope = AddressScope::Host;
        }
        add.execute().await
    })
}

/// Removes `ip` from `lo`; an address already gone is not an error.
pub fn remove_from_lo(ip: IpAddr) -> io::Result<()> {
    let removed = run(move |handle| async move {
        let message = match ip {
            IpAddr::V4(v4) => {
                rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new().index(LOOPBACK_IFINDEX).address(v4, 32).build()
            }
            IpAddr::V6(v6) => {
                rtnetlink::AddressMessageBuilder::<Ipv6Addr>::new().index(LOOPBACK_IFINDEX).address(v6, 128).build()
            }
        };
        handle.address().del(message).execute().await
    });
    match removed {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

/// Whether `ip` is on `lo` (as the kernel reports the netns's addresses).
pub fn on_lo(ip: IpAddr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut list| {
        list.any(|ifa| {
            ifa.interface_name == "lo"
                && ifa.address.is_some_and(|a| {
                    a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                        || a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
                })
        })
    })
}

/// The table a fresh netns consults first, at priority 0.
const LOCAL_TABLE: u32 = 255;

/// Makes packets carrying `mark` be delivered in this netns, whatever their
/// destination, *through `lo`*: for each family,
/// - `ip rule add pref <local_priority> lookup local`, then `ip rule del pref 0
///   lookup local` (the local table moves behind the mark rule, as Cilium does
///   on nodes; unmarked traffic meets the same tables in the same order);
/// - `ip rule add pref <mark_priority> fwmark <mark> lookup <table>`;
/// - `ip route replace local default dev lo table <table>`.
///
/// Through `lo` matters: a marked packet to one of the pod's own addresses then
/// arrives with `lo` as its ingress interface (from the local table it would
/// carry the address's device), which is how the kernel programs' sk_lookup
/// tells the agent's own dial to the app from inbound traffic. Idempotent; IPv6
/// is skipped where the netns has it disabled.
pub fn route_mark_to_lo(mark: u32, table: u32, mark_priority: u32, local_priority: u32) -> io::Result<()> {
    run(move |handle| async move {
        for v6 in [false, true] {
            let local = handle.rule().add().table_id(LOCAL_TABLE).priority(local_priority).action(RuleAction::ToTable);
            match exists_ok(if v6 { local.v6().execute().await } else { local.v4().execute().await }) {
                Err(rtnetlink::Error::NetlinkError(e)) if v6 && e.raw_code() == -libc::EAFNOSUPPORT => continue,
                other => other?,
            }
            // The action must be said: left unset the kernel keeps a rule that routes nothing.
            let marked =
                handle.rule().add().table_id(table).fw_mark(mark).priority(mark_priority).action(RuleAction::ToTable);
            exists_ok(if v6 { marked.v6().execute().await } else { marked.v4().execute().await })?;
            let route = if v6 {
                local_via_lo(RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(Ipv6Addr::UNSPECIFIED, 0), table)
            } else {
                local_via_lo(RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(Ipv4Addr::UNSPECIFIED, 0), table)
            };
            handle.route().add(route).replace().execute().await?;
            // Last, and only if it is still there: a delete without a priority would
            // take the first local rule, which after a first run is the moved one.
            let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
            let rules: Vec<RuleMessage> = handle.rule().get(version).execute().try_collect().await?;
            let first_local = rules.into_iter().find(|r| rule_table(r) == LOCAL_TABLE && rule_priority(r) == 0);
            if let Some(rule) = first_local {
                handle.rule().del(rule).execute().await?;
            }
        }
        Ok(())
    })
}

/// An add that finds its rule already there succeeded (a second run).
fn exists_ok(added: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match added {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

/// `route` as `local … dev lo table <table>`.
fn local_via_lo<T>(route: RouteMessageBuilder<T>, table: u32) -> RouteMessage {
    route.table_id(table).kind(RouteType::Local).scope(RouteScope::Host).output_interface(LOOPBACK_IFINDEX).build()
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(rule.header.table))
}

fn rule_priority(rule: &RuleMessage) -> u32 {
    rule.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}
