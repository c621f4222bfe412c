//! The layout of a node's pins under `<bpffs>/pillion/<node>/`.

use std::path::{Path, PathBuf};

use pillion_common::names;

use crate::error::KernelError;

pub const PROGRAMS: [&str; 14] = [
    names::PROG_CONNECT4,
    names::PROG_CONNECT6,
    names::PROG_SENDMSG4,
    names::PROG_SENDMSG6,
    names::PROG_RECVMSG4,
    names::PROG_RECVMSG6,
    names::PROG_GETPEERNAME4,
    names::PROG_GETPEERNAME6,
    names::PROG_SOCKOPS,
    names::PROG_SK_LOOKUP,
    names::PROG_PROBE4,
    names::PROG_PROBE6,
    names::PROG_BIND4,
    names::PROG_BIND6,
];
/// Links at the capture root. Pins of an older agent that lack one of these
/// are incomplete, so a new agent installs (upgrades) rather than adopts.
pub const CGROUP_LINKS: [&str; 11] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    "sockops",
    "bind4",
    "bind6",
];

#[derive(Debug, Clone)]
pub struct PinLayout {
    bpffs: PathBuf,
    root: PathBuf,
}

impl PinLayout {
    /// `node`'s dots become `_` (bpffs refuses dots; node names such as
    /// `ip-10-0-0-1.ec2.internal` have them, and none has `_`).
    pub fn new(bpffs: &Path, node: &str) -> Self {
        Self { bpffs: bpffs.to_path_buf(), root: bpffs.join("pillion").join(node.replace('.', "_")) }
    }
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }
    /// Where a pod's replacement sk_lookup link is pinned for a moment
    /// during an upgrade, before it takes the old pin's name.
    pub fn swap_dir(&self) -> PathBuf {
        self.root.join("swap")
    }
    /// The probe programs' links, one per kubelet cgroup and family.
    pub fn probes_dir(&self) -> PathBuf {
        self.root.join("probes")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }
    pub fn pod_link(&self, pin_name: &str) -> PathBuf {
        self.pods_dir().join(pin_name)
    }
    pub fn swap_link(&self, pin_name: &str) -> PathBuf {
        self.swap_dir().join(pin_name)
    }

    pub fn create_dirs(&self) -> Result<(), KernelError> {
        for dir in
            [self.maps_dir(), self.progs_dir(), self.links_dir(), self.pods_dir(), self.swap_dir(), self.probes_dir()]
        {
            std::fs::create_dir_all(&dir)
                .map_err(|e| KernelError::Pin { path: dir.clone(), message: e.to_string() })?;
        }
        Ok(())
    }

    /// Every program, cgroup link and map is pinned: the node can be adopted.
    pub fn complete(&self) -> bool {
        PROGRAMS.iter().all(|p| self.prog(p).exists())
            && CGROUP_LINKS.iter().all(|l| self.link(l).exists())
            && names::ALL_MAPS.iter().all(|m| self.map(m).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_node_names_make_bpffs_names() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf"), "ip-10-0-0-1.ec2.internal");
        assert_eq!(l.root(), Path::new("/sys/fs/bpf/pillion/ip-10-0-0-1_ec2_internal"));
    }
}
