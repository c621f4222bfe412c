//! Kubelet probes: the one inbound source that skips capture.
//!
//! The kubelet is selected by its cgroup (`--probe-cgroup`), never by address:
//! the probe programs run on that cgroup and bind the kubelet's connects to
//! enrolled pods to the probe source (169.254.7.127 /
//! fd16:9254:7127:1337:ffff:ffff:ffff:ffff), which sk_lookup passes to the
//! app. The source is a host-local address on `lo` so replies come back; the
//! bind guard at the capture root keeps every other process from binding it.
//!
//! Everything fails closed: without the address, the links or the flag, a
//! probe leaves from a node address and is captured like any other client
//! (under STRICT it fails) — nothing else is ever exempt.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use pillion_common::{PROBE_SOURCE4, PROBE_SOURCE6};
use tokio_util::sync::CancellationToken;

use crate::{kernel::Kernel, netlink};

/// How often the probe setup is checked: a restarted kubelet gets a new
/// cgroup (a new id), which needs the programs attached again.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// The probe sources, IPv4 first.
pub fn sources() -> [IpAddr; 2] {
    [IpAddr::V4(Ipv4Addr::from(PROBE_SOURCE4)), IpAddr::V6(Ipv6Addr::from(PROBE_SOURCE6))]
}

/// The kubelet cgroups the agent was told about, and what it installs for them.
pub struct Probes {
    kernel: Arc<Kernel>,
    cgroups: Vec<PathBuf>,
    /// Problems already logged: a lasting one (IPv6 disabled, a wrong path)
    /// is said once, not every 10 s.
    failing: Mutex<BTreeSet<String>>,
}

impl Probes {
    /// Relative `cgroups` are taken under `cgroup_root` (the cgroup2 mount in
    /// production, so `system.slice/kubelet.service` works as written).
    pub fn new(kernel: Arc<Kernel>, cgroups: &[PathBuf], cgroup_root: &Path) -> Self {
        let cgroups = cgroups.iter().map(|c| if c.is_absolute() { c.clone() } else { cgroup_root.join(c) }).collect();
        Self { kernel, cgroups, failing: Mutex::new(BTreeSet::new()) }
    }

    /// Puts the probe sources on `lo` and the probe programs on each kubelet
    /// cgroup, and detaches them from cgroups that are gone. Idempotent.
    /// Called on the agent's own netns (never from a pod's netns thread).
    pub fn reconcile(&self) {
        for ip in sources() {
            if netlink::on_lo(ip) {
                continue;
            }
            match netlink::add_to_lo(ip) {
                Ok(()) => {
                    self.recovered(&ip.to_string());
                    tracing::info!(%ip, "probe source added to lo");
                }
                Err(e) if self.first_failure(&ip.to_string()) => {
                    tracing::warn!(%ip, error = %e, "cannot add the probe source to lo; probes from this family will be captured")
                }
                Err(_) => {}
            }
        }
        let before = self.kernel.probe_cgroups();
        let mut attached = BTreeSet::new();
        for cgroup in &self.cgroups {
            let key = cgroup.display().to_string();
            match self.kernel.attach_probes(cgroup) {
                Ok(id) => {
                    self.recovered(&key);
                    attached.insert(id);
                }
                Err(e) if self.first_failure(&key) => tracing::warn!(
                    cgroup = %key,
                    error = %e,
                    "cannot attach the probe programs; probes from this cgroup will be captured (check --probe-cgroup names the kubelet's cgroup)"
                ),
                Err(_) => {}
            }
        }
        if let Err(e) = self.kernel.retain_probes(&attached) {
            tracing::warn!(error = %e, "cannot detach the probe programs from old kubelet cgroups");
        }
        if before != attached {
            tracing::info!(cgroups = ?attached, "probe programs attached to the kubelet's cgroups (by id)");
        }
    }

    fn first_failure(&self, what: &str) -> bool {
        self.failing.lock().expect("probe lock").insert(what.to_string())
    }

    fn recovered(&self, what: &str) {
        self.failing.lock().expect("probe lock").remove(what);
    }

    /// Reconciles every [`RECONCILE_EVERY`] until `stop` (call
    /// [`Probes::reconcile`] once first, before the agent reports ready).
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONCILE_EVERY) => self.reconcile(),
                }
            }
        });
    }
}

/// Removes the probe sources from `lo` of the calling thread's netns
/// (uninstall and reset; the programs go with the node's pins).
pub fn remove_sources() {
    for ip in sources() {
        if let Err(e) = netlink::remove_from_lo(ip) {
            tracing::warn!(%ip, error = %e, "cannot remove the probe source from lo; remove it with `ip addr del`");
        }
    }
}
