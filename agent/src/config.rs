//! The agent's configuration, parsed once from flags/env and shared as `Arc`.

use std::{path::PathBuf, time::Duration};

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_STATE_ROOT: &str = "/var/run/pillion";
pub const DEFAULT_HOST_NETNS: &str = "/proc/1/ns/net";
pub const DEFAULT_DRAIN_SECS: u64 = 10;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_UNKNOWN_POD_WAIT_MS: u64 = 5000;

/// Where a node's agent keeps things. Several agents (one per simulated node)
/// may share one kernel: everything is keyed by the node name.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node name; keys the pin directory and the state directory.
    #[arg(long, env = "PILLION_NODE", default_value = "node")]
    pub node: String,
    /// bpffs mount under which `pillion/<node>/` holds the pins.
    #[arg(long, env = "PILLION_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// State directory root; the node's state lives in `<state-root>/<node>/`.
    #[arg(long, env = "PILLION_STATE_ROOT", default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
}

impl NodeArgs {
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("pillion").join(&self.node)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.node)
    }
    pub fn api_socket(&self) -> PathBuf {
        self.state_dir().join("agent.sock")
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// cgroup v2 directory the capture programs attach to; pods' cgroups must
    /// be below it.
    #[arg(long, env = "PILLION_CGROUP_ROOT", default_value = DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// Move the agent into this cgroup v2 directory (created if missing) before
    /// anything else; its id is exempt from capture.
    #[arg(long, env = "PILLION_AGENT_CGROUP")]
    pub agent_cgroup: Option<PathBuf>,
    /// The host's network namespace (enrolling it is refused). In a
    /// DaemonSet pod with hostNetwork this is also the agent's own.
    #[arg(long, env = "PILLION_HOST_NETNS", default_value = DEFAULT_HOST_NETNS)]
    pub host_netns: PathBuf,
    /// The local configuration file (workloads, services, policies), reloaded
    /// on change. Without it (and without `--kubernetes`) there is no mesh:
    /// enrolled pods' connections are captured and relayed in plaintext.
    #[arg(long, env = "PILLION_CONFIG")]
    pub config: Option<PathBuf>,
    /// Take the model from the Kubernetes API (in-cluster configuration or
    /// KUBECONFIG) instead of `--config`, and keep this node's pods enrolled.
    #[arg(long, env = "PILLION_KUBERNETES", conflicts_with = "config")]
    pub kubernetes: bool,
    /// Where the host's /proc is mounted (Kubernetes mode finds running pods'
    /// network namespaces there).
    #[arg(long, env = "PILLION_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where certificates come from. With `--ca-address` the agent asks for each local
    /// workload's certificate with its own projected token (impersonation). Without
    /// `--ca-address` or `--ca-dir` it makes a throwaway CA that no other node trusts
    /// (single-node use only).
    #[command(flatten)]
    pub ca: mesh::ca::CaArgs,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, env = "PILLION_METRICS_ADDR", default_value = "[::]:15020")]
    pub metrics_addr: std::net::SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "PILLION_READINESS_ADDR", default_value = "[::]:15021")]
    pub readiness_addr: std::net::SocketAddr,
    /// Admin (`/config_dump`, `/logging`); loopback only.
    #[arg(long, env = "PILLION_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: std::net::SocketAddr,
    /// The kubelet's cgroup v2 directory (repeat for several; relative paths
    /// are under `--cgroup-root`, e.g. `system.slice/kubelet.service` or
    /// `kubelet.slice`). Only its connects to enrolled pods skip capture, as
    /// probes from 169.254.7.127 / fd16:9254:7127:1337:ffff:ffff:ffff:ffff.
    /// Without it probes are captured like any other client (they fail
    /// under STRICT).
    #[arg(long = "probe-cgroup", env = "PILLION_PROBE_CGROUPS", value_delimiter = ',')]
    pub probe_cgroups: Vec<PathBuf>,
    /// Use the kernel programs pinned for this node name instead of `--node`
    /// (per-pod "sidecar" agents share one loaded set of programs).
    #[arg(long, env = "PILLION_PINS_NODE")]
    pub pins_node: Option<String>,
    /// Dial a new HBONE connection for every tunnel (benchmarks of fresh
    /// mutual-TLS handshakes); normal operation pools them.
    #[arg(long)]
    pub no_hbone_pooling: bool,
    /// Access-log and log format.
    #[arg(long, env = "PILLION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long SIGTERM waits for in-flight connections before forcing exit.
    #[arg(long, env = "PILLION_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// Upstream connect timeout.
    #[arg(long, env = "PILLION_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Per-pod connection caps and the HBONE idle timeout.
    #[command(flatten)]
    pub limits: crate::proxy::limits::LimitArgs,
    /// How long a connection of an enrolled pod that the model does not list
    /// (yet) waits for it before being refused (a CNI-enrolled pod is often a
    /// moment ahead of the model).
    #[arg(long, env = "PILLION_UNKNOWN_POD_WAIT_MS", default_value_t = DEFAULT_UNKNOWN_POD_WAIT_MS)]
    pub unknown_pod_wait_ms: u64,
}

impl RunArgs {
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    /// Refuse pods the model does not attribute, unless there is no model
    /// source at all (then there is no mesh to refuse on behalf of).
    pub fn unknown_pods(&self) -> crate::attribution::UnknownPods {
        if self.kubernetes || self.config.is_some() {
            crate::attribution::UnknownPods::Refuse { wait: Duration::from_millis(self.unknown_pod_wait_ms) }
        } else {
            crate::attribution::UnknownPods::Passthrough
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
