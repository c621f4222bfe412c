//! The kernel programs: install (load, attach, pin) or adopt existing pins,
//! then operate on the pinned maps.
//!
//! Everything lives under `<bpffs>/pillion/<node>/`: `maps/`, `progs/`,
//! `links/` (the cgroup attachments) and `pods/` (one sk_lookup link per
//! enrolled pod). Pinned links keep capturing when the agent is gone, which is
//! what makes capture fail closed: nothing leaves an enrolled pod uncaptured.

pub mod addr;
pub mod mounts;
mod pins;
mod probes;
mod upgrade;

use std::{
    collections::BTreeMap,
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps,
        links::{FdLink, LinkError, PinnedLink},
        loaded_programs,
    },
};
use pillion_common::{IpKey, OrigDstKey, PodConfig, SockAddr, names, stat};

pub use pins::PinLayout;

use crate::{error::KernelError, netns::Netns};

/// The object built from `ebpf/pillion-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pillion"));

/// Whether [`Kernel::open`] found existing pins or installed fresh ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Adopted,
    Installed,
}

/// Handles on the pinned maps and the sk_lookup program.
pub struct Kernel {
    pins: PinLayout,
    origin: Origin,
    sk_lookup: Mutex<SkLookup>,
    enrolled: Mutex<HashMap<MapData, u64, PodConfig>>,
    exempt: Mutex<HashMap<MapData, u64, u32>>,
    orig_dst: Mutex<HashMap<MapData, OrigDstKey, SockAddr>>,
    pending: Mutex<HashMap<MapData, u64, SockAddr>>,
    dns_upstream: Mutex<HashMap<MapData, u64, SockAddr>>,
    pod_addrs: Mutex<HashMap<MapData, IpKey, u32>>,
    inbound: Mutex<SockHash<MapData, IpKey>>,
    stats: PerCpuArray<MapData, u64>,
    program_id: u32,
}

fn map_err(name: &str) -> impl Fn(aya::maps::MapError) -> KernelError + '_ {
    move |e| KernelError::Map { name: name.to_string(), message: e.to_string() }
}

fn prog_err(name: &str) -> impl Fn(aya::programs::ProgramError) -> KernelError + '_ {
    move |e| KernelError::Program { name: name.to_string(), message: e.to_string() }
}

impl Kernel {
    /// Adopts the node's pins when they are complete, else installs the
    /// programs at `cgroup_root` and pins them.
    pub fn open(pins: PinLayout, cgroup_root: &Path) -> Result<Kernel, KernelError> {
        mounts::ensure_bpffs(pins.bpffs())?;
        mounts::check_cgroup2(cgroup_root)?;
        pins.create_dirs()?;
        let origin = if pins.complete() {
            Origin::Adopted
        } else {
            install(&pins, cgroup_root)?;
            Origin::Installed
        };
        Self::from_pins(pins, origin)
    }

    /// Opens an already complete set of pins (never installs).
    pub fn adopt(pins: PinLayout) -> Result<Kernel, KernelError> {
        if !pins.complete() {
            return Err(KernelError::NotPinned(pins.root().to_path_buf()));
        }
        Self::from_pins(pins, Origin::Adopted)
    }

    fn from_pins(pins: PinLayout, origin: Origin) -> Result<Kernel, KernelError> {
        let open_map = |name: &'static str| -> Result<Map, KernelError> {
            let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        let sk_path = pins.prog(names::PROG_SK_LOOKUP);
        let sk_lookup = SkLookup::from_pin(&sk_path).map_err(prog_err(names::PROG_SK_LOOKUP))?;
        let program_id = sk_lookup.info().map_err(prog_err(names::PROG_SK_LOOKUP))?.id();
        Ok(Kernel {
            origin,
            sk_lookup: Mutex::new(sk_lookup),
            enrolled: Mutex::new(open_map(names::MAP_ENROLLED)?.try_into().map_err(map_err(names::MAP_ENROLLED))?),
            exempt: Mutex::new(
                open_map(names::MAP_EXEMPT_CGROUPS)?.try_into().map_err(map_err(names::MAP_EXEMPT_CGROUPS))?,
            ),
            orig_dst: Mutex::new(open_map(names::MAP_ORIG_DST)?.try_into().map_err(map_err(names::MAP_ORIG_DST))?),
            pending: Mutex::new(open_map(names::MAP_PENDING)?.try_into().map_err(map_err(names::MAP_PENDING))?),
            dns_upstream: Mutex::new(
                open_map(names::MAP_DNS_UPSTREAM)?.try_into().map_err(map_err(names::MAP_DNS_UPSTREAM))?,
            ),
            pod_addrs: Mutex::new(open_map(names::MAP_POD_ADDRS)?.try_into().map_err(map_err(names::MAP_POD_ADDRS))?),
            inbound: Mutex::new(open_map(names::MAP_INBOUND)?.try_into().map_err(map_err(names::MAP_INBOUND))?),
            stats: open_map(names::MAP_STATS)?.try_into().map_err(map_err(names::MAP_STATS))?,
            pins,
            program_id,
        })
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Id of a loaded program whose log buffer carries the programs' aya-log
    /// output (they all share one).
    pub fn log_program_id(&self) -> u32 {
        self.program_id
    }

    pub fn exempt_cgroup(&self, id: u64) -> Result<(), KernelError> {
        let mut map = self.exempt.lock().expect("map lock");
        map.insert(id, 1, 0).map_err(map_err(names::MAP_EXEMPT_CGROUPS))
    }

    pub fn enrol_netns(&self, cookie: u64, config: PodConfig) -> Result<(), KernelError> {
        let mut map = self.enrolled.lock().expect("map lock");
        map.insert(cookie, config, 0).map_err(map_err(names::MAP_ENROLLED))
    }

    pub fn unenrol_netns(&self, cookie: u64) -> Result<(), KernelError> {
        let _ = self.dns_upstream.lock().expect("map lock").remove(&cookie);
        let mut map = self.enrolled.lock().expect("map lock");
        match map.remove(&cookie) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::MAP_ENROLLED)(e)),
        }
    }

    /// The resolver the pod (by netns cookie) last sent a DNS query to.
    pub fn dns_upstream(&self, cookie: u64) -> Option<std::net::SocketAddr> {
        let dst = self.dns_upstream.lock().expect("map lock").get(&cookie, 0).ok()?;
        addr::socket_addr(&dst)
    }

    pub fn netns_config(&self, cookie: u64) -> Option<PodConfig> {
        self.enrolled.lock().expect("map lock").get(&cookie, 0).ok()
    }

    /// Takes (reads and deletes) a captured connection's original destination.
    pub fn take_orig_dst(&self, key: OrigDstKey) -> Option<SockAddr> {
        let mut map = self.orig_dst.lock().expect("map lock");
        let value = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(value)
    }

    /// Points inbound traffic for `ip` at `listener` (the pod's 15006), and
    /// makes `ip` a target of the kubelet's probes (`POD_ADDRS`).
    pub fn set_inbound(&self, ip: IpAddr, listener: &impl AsRawFd) -> Result<(), KernelError> {
        let key = addr::ip_key(ip);
        let mut map = self.inbound.lock().expect("map lock");
        map.insert(key, listener.as_raw_fd(), 0).map_err(map_err(names::MAP_INBOUND))?;
        self.pod_addrs.lock().expect("map lock").insert(key, 1, 0).map_err(map_err(names::MAP_POD_ADDRS))
    }

    pub fn remove_inbound(&self, ip: IpAddr) {
        let key = addr::ip_key(ip);
        let _ = self.pod_addrs.lock().expect("map lock").remove(&key);
        let _ = self.inbound.lock().expect("map lock").remove(&key);
    }

    /// Attaches sk_lookup to a pod's netns and pins the link as `pods/<name>`.
    /// An existing pin running this program is kept (adoption after a
    /// restart); one running an older program (an upgrade) is replaced
    /// without a moment uncaptured: the new link is attached beside it first
    /// (sk_lookup keeps the socket an earlier program chose), then the old
    /// pin is dropped and the new one takes its name.
    pub fn attach_sk_lookup(&self, netns: &Netns, pin_name: &str) -> Result<u32, KernelError> {
        let path = self.pins.pod_link(pin_name);
        let current = link_info(&path);
        if let Some((id, _)) = current.filter(|(_, prog)| *prog == self.program_id) {
            return Ok(id);
        }
        let target = if current.is_some() { self.pins.swap_link(pin_name) } else { path.clone() };
        let mut prog = self.sk_lookup.lock().expect("program lock");
        let file =
            File::open(netns.path()).map_err(|source| KernelError::Open { path: netns.path().into(), source })?;
        let id = prog.attach(&file).map_err(prog_err(names::PROG_SK_LOOKUP))?;
        let link: FdLink = prog.take_link(id).map_err(prog_err(names::PROG_SK_LOOKUP))?.into();
        let link_id = link.info().map(|i| i.id()).unwrap_or_default();
        let pin_err = |p: &Path| {
            let p = p.to_path_buf();
            move |message: String| KernelError::Pin { path: p, message }
        };
        remove_pin(&target)?;
        link.pin(&target).map_err(|e| pin_err(&target)(e.to_string()))?;
        if target != path {
            tracing::info!(pod = pin_name, "sk_lookup link upgraded to this agent's program");
            remove_pin(&path)?;
            std::fs::rename(&target, &path).map_err(|e| pin_err(&path)(e.to_string()))?;
        }
        Ok(link_id)
    }

    /// Removes a pod's sk_lookup pin, which detaches it.
    pub fn detach_sk_lookup(&self, pin_name: &str) -> Result<(), KernelError> {
        remove_pin(&self.pins.pod_link(pin_name))
    }

    pub fn has_sk_lookup(&self, pin_name: &str) -> bool {
        self.pins.pod_link(pin_name).exists()
    }

    /// Link ids of the cgroup attachments, every pod's sk_lookup link and
    /// the probe links (`probe/<cgroup id>_<4|6>`).
    pub fn link_ids(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for name in pins::CGROUP_LINKS {
            if let Some(id) = link_id(&self.pins.link(name)) {
                out.insert(name.to_string(), id);
            }
        }
        for (dir, prefix) in [(self.pins.pods_dir(), "pod"), (self.pins.probes_dir(), "probe")] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Some(id) = link_id(&entry.path()) {
                    out.insert(format!("{prefix}/{}", entry.file_name().to_string_lossy()), id);
                }
            }
        }
        out
    }

    /// Kernel-side counters, summed over CPUs, by name.
    pub fn stats(&self) -> BTreeMap<&'static str, u64> {
        let names = [
            (stat::CONNECT_REDIRECTED, "connect_redirected"),
            (stat::CONNECT_NO_V6_LISTENER, "connect_refused_no_v6_listener"),
            (stat::ORIG_DST_RECORDED, "orig_dst_recorded"),
            (stat::INBOUND_STEERED, "inbound_steered"),
            (stat::INBOUND_DROPPED, "inbound_dropped"),
            (stat::INBOUND_PROBE_PASSED, "inbound_probe_passed"),
            (stat::PROBE_SOURCE_BOUND, "probe_source_bound"),
            (stat::PROBE_SOURCE_BIND_FAILED, "probe_source_bind_failed"),
            (stat::BIND_TO_PROBE_SOURCE_REFUSED, "bind_to_probe_source_refused"),
            (stat::PEER_NAME_ANSWERED, "peer_name_answered"),
            (stat::DNS_REDIRECTED, "dns_redirected"),
            (stat::DNS_PASSED_NO_PROXY, "dns_passed_no_proxy"),
            (stat::DNS_REPLY_SOURCE_RESTORED, "dns_reply_source_restored"),
        ];
        let mut out: BTreeMap<&'static str, u64> =
            names.into_iter().map(|(i, n)| (n, self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))).collect();
        // A gauge, not a counter: captured sockets whose destination the kernel holds
        // (connecting or open); it falls back as they close.
        let parked = self.pending.lock().expect("map lock").keys().filter(Result::is_ok).count();
        out.insert("parked_destinations", parked as u64);
        out
    }
}

/// Loads the object, pins maps, programs and cgroup links. Stale program and
/// link pins from a half-finished earlier install are replaced; pinned maps
/// (and so the enrolled pods) are reused.
fn install(pins: &PinLayout, cgroup_root: &Path) -> Result<(), KernelError> {
    upgrade::retire_stale_maps(pins)?;
    let mut ebpf =
        EbpfLoader::new().default_map_pin_directory(pins.maps_dir()).load(OBJECT).map_err(KernelError::Load)?;
    for name in pins::PROGRAMS {
        remove_pin(&pins.prog(name))?;
    }
    for name in pins::CGROUP_LINKS {
        remove_pin(&pins.link(name))?;
    }
    let cgroup = File::open(cgroup_root).map_err(|source| KernelError::Open { path: cgroup_root.into(), source })?;
    let pin_err =
        |path: PathBuf| move |e: aya::pin::PinError| KernelError::Pin { path: path.clone(), message: e.to_string() };

    for (prog_name, link_name) in [
        (names::PROG_CONNECT4, "connect4"),
        (names::PROG_CONNECT6, "connect6"),
        (names::PROG_BIND4, "bind4"),
        (names::PROG_BIND6, "bind6"),
        (names::PROG_GETPEERNAME4, "getpeername4"),
        (names::PROG_GETPEERNAME6, "getpeername6"),
        (names::PROG_SENDMSG4, "sendmsg4"),
        (names::PROG_SENDMSG6, "sendmsg6"),
        (names::PROG_RECVMSG4, "recvmsg4"),
        (names::PROG_RECVMSG6, "recvmsg6"),
    ] {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, prog_name)?;
        prog.load().map_err(prog_err(prog_name))?;
        prog.pin(pins.prog(prog_name)).map_err(pin_err(pins.prog(prog_name)))?;
        let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(prog_err(prog_name))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(prog_err(prog_name))?
            .try_into()
            .map_err(|e: LinkError| KernelError::Program { name: prog_name.into(), message: e.to_string() })?;
        link.pin(pins.link(link_name)).map_err(pin_err(pins.link(link_name)))?;
    }

    let prog: &mut SockOps = program(&mut ebpf, names::PROG_SOCKOPS)?;
    prog.load().map_err(prog_err(names::PROG_SOCKOPS))?;
    prog.pin(pins.prog(names::PROG_SOCKOPS)).map_err(pin_err(pins.prog(names::PROG_SOCKOPS)))?;
    let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(prog_err(names::PROG_SOCKOPS))?;
    let link: FdLink =
        prog.take_link(id).map_err(prog_err(names::PROG_SOCKOPS))?.try_into().map_err(|e: LinkError| {
            KernelError::Program { name: names::PROG_SOCKOPS.into(), message: e.to_string() }
        })?;
    link.pin(pins.link("sockops")).map_err(pin_err(pins.link("sockops")))?;

    // Loaded and pinned only: `probes.rs` attaches them to the kubelet's cgroups.
    for prog_name in [names::PROG_PROBE4, names::PROG_PROBE6] {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, prog_name)?;
        prog.load().map_err(prog_err(prog_name))?;
        prog.pin(pins.prog(prog_name)).map_err(pin_err(pins.prog(prog_name)))?;
    }

    let prog: &mut SkLookup = program(&mut ebpf, names::PROG_SK_LOOKUP)?;
    prog.load().map_err(prog_err(names::PROG_SK_LOOKUP))?;
    prog.pin(pins.prog(names::PROG_SK_LOOKUP)).map_err(pin_err(pins.prog(names::PROG_SK_LOOKUP)))?;
    // Dropping `ebpf` now releases our fds; the pins keep everything alive.
    Ok(())
}

/// Loads the object without attaching anything, its maps pinned under
/// `map_dir` (a scratch directory on bpffs). For `BPF_PROG_TEST_RUN` tests.
pub fn load_detached(map_dir: &Path) -> Result<aya::Ebpf, KernelError> {
    EbpfLoader::new().default_map_pin_directory(map_dir).load(OBJECT).map_err(KernelError::Load)
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| KernelError::Program { name: name.into(), message: "missing from the object".into() })?;
    prog.try_into().map_err(prog_err(name))
}

fn remove_pin(path: &Path) -> Result<(), KernelError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(KernelError::Pin { path: path.into(), message: e.to_string() }),
    }
}

/// The kernel id of a pinned link, if the pin exists.
pub fn link_id(path: &Path) -> Option<u32> {
    link_info(path).map(|(id, _)| id)
}

/// A pinned link's id and the id of the program it runs.
fn link_info(path: &Path) -> Option<(u32, u32)> {
    let link = PinnedLink::from_pin(path).ok()?;
    let fd: FdLink = link.into();
    fd.info().ok().map(|i| (i.id(), i.program_id()))
}

/// Removes every pin of a node (detaching its programs) — the explicit reset.
/// Pods' sk_lookup links go first so inbound stops being steered before the
/// outbound capture is removed.
pub fn unpin_all(pins: &PinLayout) -> Result<(), KernelError> {
    if !pins.root().exists() {
        return Ok(());
    }
    for dir in
        [pins.pods_dir(), pins.swap_dir(), pins.probes_dir(), pins.links_dir(), pins.progs_dir(), pins.maps_dir()]
    {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                remove_pin(&entry.path())?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    std::fs::remove_dir(pins.root())
        .map_err(|e| KernelError::Pin { path: pins.root().into(), message: e.to_string() })?;
    let _ = std::fs::remove_dir(pins.root().parent().unwrap_or(pins.root()));
    Ok(())
}

/// Whether any of our programs is loaded (used by tests and `status`).
pub fn loaded_program_count() -> usize {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("pillion_")))
        .count()
}
