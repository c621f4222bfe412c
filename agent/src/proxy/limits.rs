//! Per-pod caps, so one pod (or whoever can reach it) cannot exhaust the agent that every
//! pod of the node depends on: proxied connections (15001, 15006 and HBONE tunnels share
//! one cap), HBONE handshakes and connections on 15008, and idle HBONE connections.

use std::time::Duration;

use mesh::hbone::HboneServerBuilder;
use mesh::limits::{ConnLimit, LimitMetrics, PerSourceLimit};

pub const DEFAULT_MAX_POD_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_HBONE_HANDSHAKES: usize = mesh::hbone::DEFAULT_MAX_HANDSHAKES;
pub const DEFAULT_MAX_HBONE_CONNECTIONS: usize = mesh::hbone::DEFAULT_MAX_CONNECTIONS;
pub const DEFAULT_HBONE_IDLE_TIMEOUT_SECS: u64 = mesh::hbone::DEFAULT_IDLE_TIMEOUT.as_secs();

/// The operator's settings (flags, see `RunArgs`), the same for every pod.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Connections proxied at once per pod: outbound (15001), inbound plaintext (15006) and
    /// HBONE tunnels together. Past it new ones are reset (15001/15006) or get 503 (HBONE).
    #[arg(long, env = "PILLION_MAX_POD_CONNECTIONS", default_value_t = DEFAULT_MAX_POD_CONNECTIONS)]
    pub max_pod_connections: usize,
    /// TLS handshakes in progress at once on a pod's 15008; the excess is closed at once.
    #[arg(long, env = "PILLION_MAX_HBONE_HANDSHAKES", default_value_t = DEFAULT_MAX_HBONE_HANDSHAKES)]
    pub max_hbone_handshakes: usize,
    /// HBONE connections held at once per pod.
    #[arg(long, env = "PILLION_MAX_HBONE_CONNECTIONS", default_value_t = DEFAULT_MAX_HBONE_CONNECTIONS)]
    pub max_hbone_connections: usize,
    /// An HBONE connection with no open tunnel for this long is closed (seconds).
    #[arg(long, env = "PILLION_HBONE_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_HBONE_IDLE_TIMEOUT_SECS)]
    pub hbone_idle_timeout_secs: u64,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_pod_connections: DEFAULT_MAX_POD_CONNECTIONS,
            max_hbone_handshakes: DEFAULT_MAX_HBONE_HANDSHAKES,
            max_hbone_connections: DEFAULT_MAX_HBONE_CONNECTIONS,
            hbone_idle_timeout_secs: DEFAULT_HBONE_IDLE_TIMEOUT_SECS,
        }
    }
}

/// The settings plus where refusals are counted.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub args: LimitArgs,
    pub metrics: LimitMetrics,
}

impl Limits {
    /// Fresh caps for the pod `key` (`namespace/name`).
    pub fn for_pod(&self, key: &str) -> PodLimits {
        let a = &self.args;
        PodLimits {
            connections: ConnLimit::new("pod_connections", key, a.max_pod_connections, &self.metrics),
            hbone_handshakes: ConnLimit::new("hbone_handshakes", key, a.max_hbone_handshakes, &self.metrics),
            hbone_handshakes_per_source: PerSourceLimit::new(
                "hbone_handshakes_per_source",
                mesh::hbone::per_source_share(a.max_hbone_handshakes),
                &self.metrics,
            ),
            hbone_connections: ConnLimit::new("hbone_connections", key, a.max_hbone_connections, &self.metrics),
            hbone_idle: Duration::from_secs(a.hbone_idle_timeout_secs),
        }
    }
}

/// One pod's caps.
#[derive(Debug, Clone)]
pub struct PodLimits {
    /// Proxied connections, all three listeners together.
    pub connections: ConnLimit,
    pub hbone_handshakes: ConnLimit,
    /// A quarter of the handshakes per source address.
    pub hbone_handshakes_per_source: PerSourceLimit,
    pub hbone_connections: ConnLimit,
    pub hbone_idle: Duration,
}

impl PodLimits {
    /// The pod's HBONE server, bounded by these caps.
    pub fn apply<R, H, D>(&self, builder: HboneServerBuilder<R, H, D>) -> HboneServerBuilder<R, H, D>
    where
        R: mesh::hbone::ServerCertResolver,
        H: mesh::hbone::ConnectHook,
        D: mesh::hbone::UpstreamDialer,
    {
        builder
            .handshake_limit(self.hbone_handshakes.clone())
            .per_source_handshake_limit(self.hbone_handshakes_per_source.clone())
            .connection_limit(self.hbone_connections.clone())
            .tunnel_limit(self.connections.clone())
            .idle_timeout(self.hbone_idle)
    }
}
