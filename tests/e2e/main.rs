//! End-to-end tests: real kernel programs, real agents, real network
//! namespaces. Root only; `cargo xtask test` runs them with at most two at a
//! time (2-core machines).

mod capture;
mod cni;
mod errors;
mod kubernetes;
mod lifecycle;
mod mesh;
mod probes;
mod progtest;
mod unknown_pods;
mod waypoint;

use pillion_e2e::{Agent, Node, Pod, Topology};
use serde_json::Value;

/// One node with a client and a server pod, and a running agent.
pub struct OneNode {
    // Field order is drop order: the agent goes before the topology.
    pub agent: Agent,
    pub client: Pod,
    pub server: Pod,
    pub node: Node,
    pub topo: Topology,
}

pub fn one_node() -> OneNode {
    let topo = Topology::new();
    let node = topo.add_node("node");
    let client = topo.add_pod(&node, "client");
    let server = topo.add_pod(&node, "server");
    let agent = Agent::start(&topo, &node);
    OneNode { agent, client, server, node, topo }
}

/// The client port in a tool result's `local` address.
pub fn local_port(result: &Value) -> u16 {
    let local = result["local"].as_str().unwrap_or_else(|| panic!("no local address in {result}"));
    local.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad local address {local}"))
}

pub fn counter(agent: &Agent, pod: &Pod, name: &str) -> u64 {
    agent.pod_counters(pod)[name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

pub fn kernel_stat(agent: &Agent, name: &str) -> u64 {
    agent.status()["kernel"][name].as_u64().unwrap_or_else(|| panic!("no kernel stat {name}"))
}

pub fn assert_ok(result: &Value, what: &str) {
    assert_eq!(result["ok"], Value::Bool(true), "{what} failed: {result}");
}
