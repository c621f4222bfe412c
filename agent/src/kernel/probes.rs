//! The probe programs' links: one per kubelet cgroup and family, pinned as
//! `probes/<cgroup id>_4` and `_6`. Pins outlive the agent, so a restart keeps
//! probes working; pins of cgroups no longer configured, or that were removed
//! and recreated (a restarted kubelet gets a new systemd cgroup, a new id),
//! are dropped by exact name.

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr,
    cgroup_sock_addr::CgroupSockAddrAttachType,
    links::{FdLink, LinkError},
};
use pillion_common::names;

use super::{Kernel, link_info, prog_err, remove_pin};
use crate::error::KernelError;

const FAMILIES: [(&str, &str, CgroupSockAddrAttachType); 2] = [
    ("4", names::PROG_PROBE4, CgroupSockAddrAttachType::Connect4),
    ("6", names::PROG_PROBE6, CgroupSockAddrAttachType::Connect6),
];

impl Kernel {
    /// Runs the probe programs for sockets of `cgroup` (a cgroup v2
    /// directory); idempotent. Returns the cgroup's id.
    pub fn attach_probes(&self, cgroup: &Path) -> Result<u64, KernelError> {
        let dir = File::open(cgroup).map_err(|source| KernelError::Open { path: cgroup.into(), source })?;
        let id = dir.metadata().map_err(|source| KernelError::Open { path: cgroup.into(), source })?.ino();
        for (family, prog_name, attach_type) in FAMILIES {
            let pin = self.probe_pin(id, family);
            let mut prog =
                CgroupSockAddr::from_pin(self.pins.prog(prog_name), attach_type).map_err(prog_err(prog_name))?;
            let prog_id = prog.info().map_err(prog_err(prog_name))?.id();
            // Kept when it runs this agent's program; replaced after an upgrade.
            if link_info(&pin).is_some_and(|(_, running)| running == prog_id) {
                continue;
            }
            let link_id = prog.attach(&dir, CgroupAttachMode::Single).map_err(prog_err(prog_name))?;
            let link: FdLink = prog
                .take_link(link_id)
                .map_err(prog_err(prog_name))?
                .try_into()
                .map_err(|e: LinkError| KernelError::Program { name: prog_name.into(), message: e.to_string() })?;
            // The old link (if any) detaches when its pin goes; the new one is
            // already attached, so no probe leaves from a node address meanwhile.
            remove_pin(&pin)?;
            link.pin(&pin).map_err(|e| KernelError::Pin { path: pin.clone(), message: e.to_string() })?;
        }
        Ok(id)
    }

    /// Detaches the probe programs from every cgroup whose id is not in `keep`.
    pub fn retain_probes(&self, keep: &BTreeSet<u64>) -> Result<(), KernelError> {
        let Ok(entries) = std::fs::read_dir(self.pins.probes_dir()) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.split_once('_').and_then(|(id, _)| id.parse::<u64>().ok());
            if !id.is_some_and(|id| keep.contains(&id)) {
                remove_pin(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Ids of the cgroups the probe programs are attached to.
    pub fn probe_cgroups(&self) -> BTreeSet<u64> {
        let Ok(entries) = std::fs::read_dir(self.pins.probes_dir()) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().split_once('_').and_then(|(id, _)| id.parse().ok()))
            .collect()
    }

    fn probe_pin(&self, cgroup_id: u64, family: &str) -> PathBuf {
        self.pins.probes_dir().join(format!("{cgroup_id}_{family}"))
    }
}
