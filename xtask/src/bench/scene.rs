//! One scenario's topology: two nodes, a client pod on A and a server pod on
//! B (plus `extra` idle pods per node for memory runs), with the agents the
//! scenario needs.

use pillion_e2e::{Agent, AgentOptions, Node, Pod, Topology, Waypoint, workload_yaml};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Passthrough,
    Hbone,
    Sidecar,
    /// C plus the service's waypoint in the path (HTTP through a VIP).
    Waypoint,
}

impl Scenario {
    pub fn letter(self) -> &'static str {
        match self {
            Scenario::Direct => "A",
            Scenario::Passthrough => "B",
            Scenario::Hbone => "C",
            Scenario::Sidecar => "D",
            Scenario::Waypoint => "W",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "A direct",
            Scenario::Passthrough => "B L4 passthrough",
            Scenario::Hbone => "C HBONE",
            Scenario::Sidecar => "D per-pod sidecar",
            Scenario::Waypoint => "W waypoint",
        }
    }
}

pub struct Scene {
    // Drop order: agents before the topology.
    pub agents: Vec<Agent>,
    pub client: Pod,
    pub server: Pod,
    pub node_a: Node,
    /// W: the waypoint process and its pod (whose cgroup holds its CPU time).
    pub waypoint: Option<(Waypoint, Pod)>,
    /// Owns the namespaces and cgroups; removed on drop.
    _topo: Topology,
}

/// W's service: `bench/server` at this VIP, behind waypoint `waypoint-0`.
pub const WAYPOINT_VIP: &str = "10.96.0.50:80";

pub fn waypoint_yaml(wp: &Pod, node: &Node) -> String {
    let mut y =
        workload_yaml("waypoint-0", "waypoint", "bench", wp, node, "app: waypoint, istio.io/use-waypoint: none");
    y += "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: waypoint, namespace: bench, labels: {istio.io/use-waypoint: none}}\n\
          spec: {clusterIPs: [10.96.9.1], ports: [{name: mesh, port: 15008}], selector: {app: waypoint}}\n---\n\
          apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: server, namespace: bench, labels: {istio.io/use-waypoint: waypoint}}\n\
          spec: {clusterIPs: [10.96.0.50], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: server}}\n---\n\
          apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: server, namespace: bench}\n\
          spec:\n  parentRefs: [{group: \"\", kind: Service, name: server, port: 80}]\n  rules:\n  - backendRefs: [{name: server, port: 80}]\n---\n";
    y
}

impl Scene {
    /// Builds the scenario with `extra` idle pods on each node (memory runs).
    pub fn build(scenario: Scenario, extra: usize, agent_args: &[&str]) -> Scene {
        let topo = Topology::with_prefix("pd");
        let node_a = topo.add_node("a");
        let node_b = topo.add_node("b");
        topo.connect_nodes(&node_a, &node_b);
        let client = topo.add_pod(&node_a, "client");
        let server = topo.add_pod(&node_b, "server");
        let mut idle = Vec::new();
        for i in 0..extra {
            idle.push(topo.add_pod(&node_a, &format!("idle-a{i}")));
            idle.push(topo.add_pod(&node_b, &format!("idle-b{i}")));
        }
        let wp_pod = (scenario == Scenario::Waypoint).then(|| topo.add_pod(&node_b, "waypoint"));
        let config = matches!(scenario, Scenario::Hbone | Scenario::Sidecar | Scenario::Waypoint).then(|| {
            let mut y = workload_yaml("client", "client", "bench", &client, &node_a, "app: client");
            if let Some(wp) = &wp_pod {
                y += &waypoint_yaml(wp, &node_b);
            }
            y += &workload_yaml("server", "server", "bench", &server, &node_b, "app: server");
            for p in &idle {
                let node = if p.node == node_a.name { &node_a } else { &node_b };
                y += &workload_yaml(&p.name, "idle", "bench", p, node, "app: idle");
            }
            topo.write_config("mesh.yaml", &y)
        });
        let opts = |pins: Option<&Node>| AgentOptions {
            config: config.clone(),
            ca_dir: config.as_ref().map(|_| topo.ca_dir()),
            extra_args: agent_args
                .iter()
                .map(|s| s.to_string())
                .chain(pins.into_iter().flat_map(|n| ["--pins-node".to_string(), n.full.clone()]))
                .collect(),
            ..Default::default()
        };
        let mut agents = Vec::new();
        let pods_of = |node: &Node| -> Vec<&Pod> {
            [&client, &server].into_iter().chain(idle.iter()).filter(|p| p.node == node.name).collect()
        };
        match scenario {
            Scenario::Direct => {}
            Scenario::Passthrough | Scenario::Hbone | Scenario::Waypoint => {
                for node in [&node_a, &node_b] {
                    let agent = Agent::start_with(&topo, node, &opts(None));
                    for pod in pods_of(node) {
                        agent.enrol_as(pod, "bench", &pod.name).expect("enrol");
                    }
                    agents.push(agent);
                }
            }
            Scenario::Sidecar => {
                // One agent per pod, each its own "node" for state and ports
                // (it runs in its pod's node netns, so ports are per-node:
                // the sidecars get distinct telemetry ports), sharing the
                // node's pinned programs.
                for node in [&node_a, &node_b] {
                    for (i, pod) in pods_of(node).into_iter().enumerate() {
                        let sidecar = topo.add_sidecar_node(node, &format!("sc-{}", pod.name));
                        let mut o = opts(Some(node));
                        o.extra_args.extend([
                            format!("--metrics-addr=[::]:{}", 16000 + i),
                            format!("--readiness-addr=[::]:{}", 17000 + i),
                            format!("--admin-addr=127.0.0.1:{}", 18000 + i),
                        ]);
                        let agent = Agent::start_with(&topo, &sidecar, &o);
                        agent.enrol_as(pod, "bench", &pod.name).expect("enrol in sidecar");
                        agents.push(agent);
                    }
                }
            }
        }
        let waypoint = match (wp_pod, &config) {
            (Some(pod), Some(cfg)) => Some((Waypoint::start(&topo, &pod, "waypoint-0", "bench", cfg), pod)),
            _ => None,
        };
        Scene { agents, client, server, node_a, waypoint, _topo: topo }
    }

    /// Total CPU time (µs) of every agent process and the waypoint, from their cgroups.
    pub fn agent_cpu_us(&self) -> u64 {
        self.agents.iter().map(|a| cgroup_usage_us(&a.node.agent_cgroup)).sum::<u64>() + self.waypoint_cpu_us()
    }

    /// CPU time (µs) of the waypoint alone (0 without one).
    pub fn waypoint_cpu_us(&self) -> u64 {
        self.waypoint.as_ref().map_or(0, |(_, pod)| cgroup_usage_us(&pod.cgroup))
    }

    /// Context switches and page faults of every agent process, summed.
    pub fn agent_switches(&self) -> Switches {
        let mut total = Switches::default();
        for a in &self.agents {
            let s = process_switches(a.pid());
            total.context_switches += s.context_switches;
            total.page_faults += s.page_faults;
        }
        total
    }

    /// Sum of the agents' resident memory, in bytes.
    pub fn agent_rss(&self) -> u64 {
        self.agents.iter().map(|a| rss_bytes(a.pid())).sum()
    }
}

/// Context switches (all threads) and page faults of a set of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    pub context_switches: u64,
    pub page_faults: u64,
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` over the process's threads
/// (`/proc/<pid>/status` counts only the main one), and minor + major faults of the whole
/// process (`/proc/<pid>/stat` fields 10 and 12).
pub fn process_switches(pid: u32) -> Switches {
    let mut context_switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        context_switches += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Switches { context_switches, page_faults: field(10) + field(12) }
}

pub fn cgroup_usage_us(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The peak RSS since start or since [`reset_peak_rss`].
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Restarts the peak RSS count at the current RSS (`clear_refs` 5).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").map_err(|e| anyhow::anyhow!("reset peak RSS of {pid}: {e}"))
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
