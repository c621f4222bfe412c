//! The abuse run's world: two nodes with real agents; on node a the
//! attacker (enrolled, identity `evil/attacker`), the victim tenant (enrolled,
//! `tenant/victim`) and an outsider (not in the mesh); on node b the server
//! (enrolled, PERMISSIVE) and the waypoint in front of its Service.

use std::time::Duration;

use pillion_e2e::{Agent, AgentOptions, Pod, Spawned, Topology, Waypoint, workload_yaml};

use crate::bench::scene::{WAYPOINT_VIP, waypoint_yaml};

/// The open pod's plain TCP echo port (idle connections through the agent's inbound).
pub const ECHO_PORT: u16 = 7000;

pub struct Scene {
    // Drop order: workloads and processes before the topology.
    _backend: Spawned,
    _echo: Spawned,
    pub agent_a: Agent,
    pub agent_b: Agent,
    pub waypoint: Waypoint,
    pub attacker: Pod,
    pub victim: Pod,
    pub outsider: Pod,
    pub open: Pod,
    /// The embedded CA every agent and the waypoint issue from.
    pub ca_dir: std::path::PathBuf,
    _topo: Topology,
}

impl Scene {
    pub fn build() -> Scene {
        let topo = Topology::with_prefix("pd");
        let a = topo.add_node("a");
        let b = topo.add_node("b");
        topo.connect_nodes(&a, &b);
        let attacker = topo.add_pod(&a, "attacker");
        let victim = topo.add_pod(&a, "victim");
        let outsider = topo.add_pod(&a, "outsider");
        let server = topo.add_pod(&b, "server");
        let wp = topo.add_pod(&b, "waypoint");
        let open = topo.add_pod(&b, "open");
        let mut y = waypoint_yaml(&wp, &b);
        y += &workload_yaml("server", "server", "bench", &server, &b, "app: server");
        y += &workload_yaml("attacker", "attacker", "evil", &attacker, &a, "app: attacker");
        y += &workload_yaml("victim", "victim", "tenant", &victim, &a, "app: victim");
        y += &workload_yaml("open", "open", "open", &open, &b, "app: open");
        let config = topo.write_config("mesh.yaml", &y);
        let opts = AgentOptions { config: Some(config.clone()), ca_dir: Some(topo.ca_dir()), ..Default::default() };
        let agent_a = Agent::start_with(&topo, &a, &opts);
        agent_a.enrol_as(&attacker, "evil", "attacker").expect("enrol the attacker");
        agent_a.enrol_as(&victim, "tenant", "victim").expect("enrol the victim");
        let agent_b = Agent::start_with(&topo, &b, &opts);
        agent_b.enrol_as(&server, "bench", "server").expect("enrol the server");
        agent_b.enrol_as(&open, "open", "open").expect("enrol the open pod");
        let backend = server.spawn(&["http-backend", "[::]:8080", "server"]);
        backend.wait_event("ready", Duration::from_secs(10));
        let echo = open.echo_server(format!("[::]:{ECHO_PORT}").parse().expect("echo address"), None);
        let waypoint = Waypoint::start(&topo, &wp, "waypoint-0", "bench", &config);
        Scene {
            _backend: backend,
            _echo: echo,
            agent_a,
            agent_b,
            waypoint,
            attacker,
            victim,
            outsider,
            open,
            ca_dir: topo.ca_dir(),
            _topo: topo,
        }
    }

    /// The processes whose cost is recorded: (name, pid).
    pub fn targets(&self) -> Vec<(&'static str, u32)> {
        vec![("waypoint", self.waypoint.pid()), ("agent_a", self.agent_a.pid()), ("agent_b", self.agent_b.pid())]
    }

    /// The Service behind the waypoint, as the attacker and the victim reach it.
    pub fn vip() -> &'static str {
        WAYPOINT_VIP
    }
}
