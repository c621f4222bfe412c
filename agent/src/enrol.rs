//! Enrolment: tie a pod to the kernel programs and to its listeners, persist
//! it, and undo all of it on unenrol. Each step that fails rolls back the
//! steps before it, so a bad request never leaves a half-enrolled pod and
//! never disturbs the pods already enrolled.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use pillion_common::{POD_FLAG_OUTBOUND_V6, PodConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    drain::Drain,
    error::EnrolError,
    kernel::Kernel,
    listeners::PodListeners,
    meshctx::MeshCtx,
    netns::Netns,
    pod::PodSpec,
    proxy::{self, PodContext, PodDialer},
    state::{PodRecord, StateDir},
    stats::{CounterSnapshot, Counters},
};

pub struct Registry {
    kernel: Arc<Kernel>,
    mesh: Arc<MeshCtx>,
    state: StateDir,
    cgroup_root: PathBuf,
    host_netns: Option<Netns>,
    counters: Arc<Counters>,
    drain: Drain,
    connect_timeout: Duration,
    hbone_pooling: bool,
    /// Where sysctls can be written when `/proc/sys` is read-only (a container's).
    proc_root: PathBuf,
    limits: proxy::limits::Limits,
    pods: Mutex<BTreeMap<String, Arc<PodContext>>>,
}

/// A pod as `list`/`status` report it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PodStatus {
    pub pod: PodSpec,
    pub netns_cookie: u64,
    pub counters: CounterSnapshot,
}

impl Registry {
    #[expect(clippy::too_many_arguments, reason = "wired once, in run.rs")]
    pub fn new(
        kernel: Arc<Kernel>,
        mesh: Arc<MeshCtx>,
        state: StateDir,
        cgroup_root: &Path,
        host_netns: &Path,
        counters: Arc<Counters>,
        drain: Drain,
        connect_timeout: Duration,
        hbone_pooling: bool,
        proc_root: &Path,
    ) -> Self {
        Self {
            kernel,
            mesh,
            state,
            cgroup_root: cgroup_root.canonicalize().unwrap_or_else(|_| cgroup_root.to_path_buf()),
            host_netns: match Netns::open(host_netns) {
                Ok(n) => Some(n),
                Err(e) => {
                    // The own-netns check still applies; say what is missing.
                    tracing::warn!(path = %host_netns.display(), error = %e, "cannot open the host netns; pass --host-netns so enrolling it can be refused");
                    None
                }
            },
            counters,
            drain,
            connect_timeout,
            hbone_pooling,
            proc_root: proc_root.to_path_buf(),
            limits: proxy::limits::Limits::default(),
            pods: Mutex::new(BTreeMap::new()),
        }
    }

    /// Per-pod connection caps (default: the documented defaults, uncounted).
    pub fn with_limits(mut self, limits: proxy::limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Enrols a new pod (API `enrol`).
    pub fn enrol(&self, spec: PodSpec) -> Result<PodStatus, EnrolError> {
        spec.validate()?;
        let mut pods = self.pods.lock().expect("registry lock");
        if pods.contains_key(&spec.key()) {
            return Err(EnrolError::AlreadyEnrolled(spec.key()));
        }
        let netns = self.open_pod_netns(&spec.netns)?;
        if let Some(other) = pods.values().find(|p| p.netns.same_as(&netns)) {
            return Err(EnrolError::NetnsInUse { netns: spec.netns.clone(), pod: other.spec.key() });
        }
        if let Some(cgroup) = &spec.cgroup {
            let resolved = cgroup.canonicalize().unwrap_or_else(|_| cgroup.clone());
            if !resolved.is_dir() || !resolved.starts_with(&self.cgroup_root) {
                return Err(EnrolError::CgroupOutsideRoot { cgroup: cgroup.clone(), root: self.cgroup_root.clone() });
            }
        }
        let cookie = netns.cookie().map_err(EnrolError::InPod)?;
        let record = PodRecord { spec: spec.clone(), netns_cookie: cookie, netns_inode: netns.inode() };
        let pod = self.attach(spec, netns, cookie)?;
        if let Err(e) = self.state.save(&record) {
            self.detach(&pod);
            return Err(EnrolError::State(e));
        }
        let status = status_of(&pod);
        pods.insert(pod.spec.key(), pod);
        tracing::info!(pod = %record.spec.key(), netns = %record.spec.netns.display(), cookie, "pod enrolled");
        Ok(status)
    }

    /// Re-attaches the pods persisted by an earlier agent. A pod whose netns
    /// is gone (or now names another namespace) is cleaned up instead.
    pub fn adopt_persisted(&self) -> Result<usize, EnrolError> {
        let (records, bad) = self.state.load().map_err(EnrolError::State)?;
        for (path, error) in bad {
            tracing::error!(path = %path.display(), %error, "unreadable enrolment record skipped; remove it or re-enrol the pod");
        }
        let mut adopted = 0;
        let mut pods = self.pods.lock().expect("registry lock");
        for record in records {
            let key = record.spec.key();
            let still_there = Netns::open(&record.spec.netns)
                .ok()
                .filter(|n| n.inode() == record.netns_inode)
                .and_then(|n| n.cookie().ok().filter(|c| *c == record.netns_cookie).map(|_| n));
            let Some(netns) = still_there else {
                tracing::warn!(pod = %key, "enrolled pod's netns is gone; cleaning up its enrolment");
                let _ = self.kernel.unenrol_netns(record.netns_cookie);
                let _ = self.kernel.detach_sk_lookup(&record.spec.file_name());
                let _ = self.state.remove(&record.spec);
                continue;
            };
            match self.attach(record.spec.clone(), netns, record.netns_cookie) {
                Ok(pod) => {
                    pods.insert(key.clone(), pod);
                    adopted += 1;
                    tracing::info!(pod = %key, "adopted enrolled pod");
                }
                Err(e) => {
                    tracing::error!(pod = %key, error = %e, "cannot adopt enrolled pod; it stays captured but unserved (fail closed)")
                }
            }
        }
        Ok(adopted)
    }

    pub fn unenrol(&self, namespace: &str, name: &str) -> Result<(), EnrolError> {
        self.unenrol_sandbox(namespace, name, None)
    }

    /// As [`Registry::unenrol`], but only if the pod was enrolled with `netns` (when
    /// given): a late CNI DEL for an old sandbox must not unenrol the pod's successor of
    /// the same name (a StatefulSet pod re-created on this node).
    pub fn unenrol_sandbox(&self, namespace: &str, name: &str, netns: Option<&Path>) -> Result<(), EnrolError> {
        let key = format!("{namespace}/{name}");
        let mut pods = self.pods.lock().expect("registry lock");
        if let (Some(asked), Some(pod)) = (netns, pods.get(&key))
            && pod.spec.netns != asked
        {
            return Err(EnrolError::OtherSandbox {
                pod: key,
                enrolled: pod.spec.netns.clone(),
                asked: asked.to_path_buf(),
            });
        }
        let pod = pods.remove(&key).ok_or_else(|| EnrolError::NotEnrolled(key.clone()))?;
        self.detach(&pod);
        self.state.remove(&pod.spec).map_err(EnrolError::State)?;
        tracing::info!(pod = %key, "pod unenrolled");
        Ok(())
    }

    /// Unenrols every pod (uninstall). Returns how many were unenrolled.
    pub fn unenrol_all(&self) -> usize {
        let pods: Vec<(String, String)> =
            self.list().into_iter().map(|s| (s.pod.namespace.clone(), s.pod.name.clone())).collect();
        pods.iter().filter(|(ns, name)| self.unenrol(ns, name).is_ok()).count()
    }

    pub fn list(&self) -> Vec<PodStatus> {
        self.pods.lock().expect("registry lock").values().map(|p| status_of(p)).collect()
    }

    fn open_pod_netns(&self, path: &Path) -> Result<Netns, EnrolError> {
        let netns = Netns::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidInput => EnrolError::NotANetns(path.to_path_buf()),
            _ => EnrolError::NetnsMissing { path: path.to_path_buf(), source },
        })?;
        if self.host_netns.as_ref().is_some_and(|h| h.same_as(&netns)) {
            return Err(EnrolError::HostNetns(path.to_path_buf()));
        }
        if Netns::own().same_as(&netns) {
            return Err(EnrolError::AgentNetns(path.to_path_buf()));
        }
        Ok(netns)
    }

    /// Binds the pod's listeners and programs the kernel for it, in the order
    /// that never exposes a gap: inbound listeners and sk_lookup first, then
    /// outbound capture (the `ENROLLED` entry) last.
    fn attach(&self, spec: PodSpec, netns: Netns, cookie: u64) -> Result<Arc<PodContext>, EnrolError> {
        let listeners = PodListeners::bind(&netns, &self.proc_root).map_err(EnrolError::InPod)?;
        let proc_root = self.proc_root.clone();
        let transparent = match netns.run_on_thread(move || proxy::transparent::prepare(&proc_root)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pod = %spec.key(), error = %e, "cannot route replies to the agent in the pod; the app will see the pod's own address as the client's");
                false
            }
        };
        let mut added: Vec<IpAddr> = Vec::new();
        let undo = |added: &[IpAddr]| added.iter().for_each(|ip| self.kernel.remove_inbound(*ip));
        for ip in &spec.ips {
            let listener = match (ip.is_ipv6(), &listeners.inbound_v6) {
                (false, _) => &listeners.inbound_v4,
                (true, Some(v6)) => v6,
                (true, None) => {
                    undo(&added);
                    return Err(EnrolError::InPod(std::io::Error::other(format!(
                        "the pod has IPv6 address {ip} but no ::1 on its loopback; bring `lo` up with IPv6 enabled"
                    ))));
                }
            };
            if let Err(e) = self.kernel.set_inbound(*ip, listener) {
                undo(&added);
                return Err(e.into());
            }
            added.push(*ip);
        }
        if let Err(e) = self.kernel.attach_sk_lookup(&netns, &spec.file_name()) {
            undo(&added);
            return Err(e.into());
        }
        let flags = if listeners.outbound_v6.is_some() { POD_FLAG_OUTBOUND_V6 } else { 0 };
        if let Err(e) = self.kernel.enrol_netns(cookie, PodConfig { flags, _pad: 0 }) {
            let _ = self.kernel.detach_sk_lookup(&spec.file_name());
            undo(&added);
            return Err(e.into());
        }
        let netns = Arc::new(netns);
        let pool = mesh::hbone::Pool::new(
            mesh::hbone::PoolConfig {
                connect_timeout: self.connect_timeout,
                // Without pooling every tunnel gets its own connection: close
                // them as soon as they are idle.
                idle_timeout: if self.hbone_pooling { Duration::from_secs(60) } else { Duration::from_millis(100) },
                ..Default::default()
            },
            PodDialer { netns: netns.clone(), timeout: self.connect_timeout },
            Arc::new(self.mesh.certs.clone()),
        );
        let limits = self.limits.for_pod(&spec.key());
        let pod = Arc::new(PodContext {
            spec,
            netns,
            cookie,
            counters: Counters::default(),
            agent_counters: self.counters.clone(),
            kernel: self.kernel.clone(),
            connect_timeout: self.connect_timeout,
            drain: self.drain.clone(),
            cancel: CancellationToken::new(),
            mesh: self.mesh.clone(),
            pool,
            hbone_pooling: self.hbone_pooling,
            limits,
            attribution: Default::default(),
            transparent,
        });
        serve(&pod, listeners).map_err(EnrolError::InPod)?;
        Ok(pod)
    }

    /// Undoes `attach`: outbound capture first, then inbound steering, then
    /// the listeners (by cancelling the accept loops).
    fn detach(&self, pod: &PodContext) {
        if let Err(e) = self.kernel.unenrol_netns(pod.cookie) {
            tracing::error!(pod = %pod.spec.key(), error = %e, "removing the pod from capture failed");
        }
        if let Err(e) = self.kernel.detach_sk_lookup(&pod.spec.file_name()) {
            tracing::error!(pod = %pod.spec.key(), error = %e, "detaching the pod's sk_lookup failed");
        }
        for ip in &pod.spec.ips {
            self.kernel.remove_inbound(*ip);
        }
        pod.cancel.cancel();
    }
}

fn status_of(pod: &PodContext) -> PodStatus {
    PodStatus { pod: pod.spec.clone(), netns_cookie: pod.cookie, counters: pod.counters.snapshot() }
}

/// Starts the pod's accept loops.
fn serve(pod: &Arc<PodContext>, listeners: PodListeners) -> std::io::Result<()> {
    let tokio_listener = tokio::net::TcpListener::from_std;
    let outbound = [Some(listeners.outbound_v4), listeners.outbound_v6];
    for l in outbound.into_iter().flatten() {
        tokio::spawn(proxy::accept_loop(pod.clone(), tokio_listener(l)?, "outbound", proxy::outbound::handle));
    }
    let inbound = [Some(listeners.inbound_v4), listeners.inbound_v6];
    for l in inbound.into_iter().flatten() {
        tokio::spawn(proxy::accept_loop(pod.clone(), tokio_listener(l)?, "inbound", proxy::inbound::handle));
    }
    let hbone = [Some(listeners.hbone_v4), listeners.hbone_v6];
    let hbone = hbone.into_iter().flatten().map(tokio_listener).collect::<std::io::Result<Vec<_>>>()?;
    proxy::hbone_in::serve(pod, hbone);
    Ok(())
}
