//! Pillion's network-namespace test harness.
//!
//! A [`Topology`] builds nodes and pods — network namespaces joined by veth
//! pairs, deterministic addresses, a cgroup v2 directory per pod — starts real
//! agents, and runs workloads inside pods. Everything it creates carries a
//! prefix naming the owning process (`pe<pid>x<n>`), is removed by exact name
//! on drop (also after a panic), and is swept by a later run if the owner was
//! killed before it could clean up. Needs root.

mod agent;
pub mod kube;
mod process;
mod sweep;
mod sys;
mod topology;
mod waypoint;

pub use agent::{Agent, AgentOptions};
pub use kube::FakeApiServer;
pub use process::{Spawned, Workload, enter};
pub use sweep::sweep_leftovers;
pub use sys::{is_root, locate_binary};
pub use topology::{Node, Pod, Topology};
pub use waypoint::{Waypoint, WaypointPods, waypoint_scene_yaml};

/// A `pillion.dev/v1alpha1` `Workload` document for `pod` on `node`
/// (both of its addresses; each node is a zone of its own, `r1/z-<node>`),
/// followed by a document separator.
pub fn workload_yaml(
    name: &str,
    service_account: &str,
    namespace: &str,
    pod: &Pod,
    node: &Node,
    labels: &str,
) -> String {
    format!(
        "apiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}\n\
         spec: {{serviceAccount: {service_account}, ips: [{}, \"{}\"], node: {}, locality: r1/z-{}}}\n---\n",
        pod.ip4, pod.ip6, node.full, node.name
    )
}

/// Whether attempt `n` (1-based) fails: about `pct`% of attempts, from a
/// seeded generator, but never three in a row — so a request retried up to
/// twice always succeeds on a backend that serves its attempts in order.
pub fn schedule_fails(seed: u64, pct: u64, n: u64) -> bool {
    let draw = |k: u64| {
        let mut x = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x % 100 < pct
    };
    if !draw(n) {
        return false;
    }
    // Two failures just before: this attempt must succeed.
    !(n > 2 && schedule_fails(seed, pct, n - 1) && schedule_fails(seed, pct, n - 2))
}

/// Fails the calling test with a clear message unless running as root.
pub fn require_root() {
    assert!(
        is_root(),
        "this end-to-end test needs root (network namespaces, cgroups, eBPF); run `sudo cargo xtask test`"
    );
}
