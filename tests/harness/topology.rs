//! Nodes and pods: network namespaces, veth pairs, addresses, cgroups.
//!
//! Addresses are deterministic. Node `k` (1-based) has pods `p` (1-based):
//! pod `10.k.p.2/24` and `fd00:k:p::2/64`, gateway (the node's end of the
//! pod's veth) `10.k.p.1` / `fd00:k:p::1`. Two nodes are joined by a veth with
//! `10.254.0.k/24` and `fd00:fe::k/64` on node `k`'s end.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use crate::{
    process::{Spawned, Workload, enter},
    sweep::{CGROUP_DIR, PIN_DIR, TMP_DIR, remove_pin_tree, sweep_leftovers},
    sys::{cgroup2_root, ip, ip_quiet, netns_sysctl, remove_cgroup_tree},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

#[derive(Debug, Clone)]
pub struct Node {
    /// Short name as the test gave it.
    pub name: String,
    /// Full, unique name: the agent's `--node` (and, for real nodes, the netns).
    pub full: String,
    /// The network namespace the node's agent runs in.
    pub netns: String,
    pub index: u8,
    pub cgroup_root: PathBuf,
    pub agent_cgroup: PathBuf,
    /// The node's "kubelet": the agent's `--probe-cgroup`. Only connects
    /// from here reach pods as probes (from the probe source, uncaptured).
    pub kubelet_cgroup: PathBuf,
    pub link4: Ipv4Addr,
    pub link6: Ipv6Addr,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub full: String,
    pub node: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The node's address on this pod's link (what host-network clients come from).
    pub gw4: Ipv4Addr,
    pub cgroup: PathBuf,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.full)
    }

    pub fn ips(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ip4), IpAddr::V6(self.ip6)]
    }

    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    fn tool(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(Workload::tool());
        cmd.args(args);
        cmd
    }

    /// Any program, started inside the pod's netns and cgroup (e.g. iperf3).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter(&mut cmd, &self.netns_path(), Some(&self.cgroup.join("cgroup.procs")));
        cmd
    }

    /// Starts a long-running workload inside the pod (netns and cgroup).
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        Spawned::new(self.tool(args))
    }

    /// Starts an echo server in the pod and waits until it listens.
    pub fn echo_server(&self, addr: SocketAddr, banner: Option<&str>) -> Spawned {
        let addr = addr.to_string();
        let mut args = vec!["echo-server", addr.as_str()];
        args.extend(banner);
        let s = self.spawn(&args);
        s.wait_event("ready", Duration::from_secs(10));
        s
    }

    /// Runs a one-shot workload in the pod and returns its JSON result.
    pub fn run(&self, args: &[&str]) -> Value {
        run_json(self.tool(args))
    }

    /// `client <addr> <bytes>` in the pod.
    pub fn client(&self, to: SocketAddr, bytes: usize, extra: &[&str]) -> Value {
        let (to, bytes) = (to.to_string(), bytes.to_string());
        let mut args = vec!["client", to.as_str(), bytes.as_str()];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn run_json(mut cmd: Command) -> Value {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    match last.and_then(|l| serde_json::from_str(l).ok()) {
        Some(v) => v,
        None => panic!("workload {cmd:?} printed no JSON result: {stdout} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// `ip -n <netns> <words…>`.
fn ipn(netns: &str, command: &str) {
    let mut args = vec!["-n", netns];
    args.extend(command.split_whitespace());
    ip(&args);
}

/// One test's private world. Drop removes all of it.
pub struct Topology {
    pub id: String,
    pub tmp: PathBuf,
    cgroup_base: PathBuf,
    netns: Mutex<Vec<String>>,
    nodes: Mutex<Vec<Node>>,
    pods_per_node: Mutex<Vec<u8>>,
}

impl Topology {
    /// `prefix` is `pe` for tests and `pd` for the demo.
    pub fn with_prefix(prefix: &str) -> Topology {
        crate::require_root();
        SWEEP.call_once(sweep_leftovers);
        let id = format!("{prefix}{}x{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let cgroup_base = cgroup2_root().join(CGROUP_DIR).join(&id);
        std::fs::create_dir_all(&cgroup_base).expect("create the test's cgroup");
        let tmp = Path::new(TMP_DIR).join(&id);
        std::fs::create_dir_all(&tmp).expect("create the test's temp dir");
        Topology {
            id,
            tmp,
            cgroup_base,
            netns: Mutex::new(Vec::new()),
            nodes: Mutex::new(Vec::new()),
            pods_per_node: Mutex::new(Vec::new()),
        }
    }

    pub fn new() -> Topology {
        Self::with_prefix("pe")
    }

    fn add_netns(&self, name: &str) -> String {
        let full = format!("{}-{name}", self.id);
        ip(&["netns", "add", &full]);
        self.netns.lock().unwrap().push(full.clone());
        ip(&["-n", &full, "link", "set", "lo", "up"]);
        // No duplicate-address detection on link-local addresses either: a
        // tentative gateway address would drop the first IPv6 packets.
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            netns_sysctl(&full, key, "0");
        }
        full
    }

    pub fn add_node(&self, name: &str) -> Node {
        let full = self.add_netns(name);
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            netns_sysctl(&full, key, "1");
        }
        let mut nodes = self.nodes.lock().unwrap();
        let index = nodes.len() as u8 + 1;
        let cgroup_root = self.cgroup_base.join(name);
        std::fs::create_dir_all(&cgroup_root).expect("create node cgroup");
        let kubelet_cgroup = self.cgroup_base.join(format!("{name}-kubelet"));
        std::fs::create_dir_all(&kubelet_cgroup).expect("create the node's kubelet cgroup");
        let node = Node {
            name: name.into(),
            netns: full.clone(),
            full,
            index,
            agent_cgroup: self.cgroup_base.join(format!("{name}-agent")),
            kubelet_cgroup,
            cgroup_root,
            link4: Ipv4Addr::new(10, 254, 0, index),
            link6: Ipv6Addr::new(0xfd00, 0xfe, 0, 0, 0, 0, 0, u16::from(index)),
        };
        nodes.push(node.clone());
        self.pods_per_node.lock().unwrap().push(0);
        node
    }

    pub fn add_pod(&self, node: &Node, name: &str) -> Pod {
        let full = self.add_netns(name);
        let p = {
            let mut counts = self.pods_per_node.lock().unwrap();
            counts[usize::from(node.index - 1)] += 1;
            counts[usize::from(node.index - 1)]
        };
        let k = node.index;
        let (ip4, gw4) = (Ipv4Addr::new(10, k, p, 2), Ipv4Addr::new(10, k, p, 1));
        let ip6 = Ipv6Addr::new(0xfd00, u16::from(k), u16::from(p), 0, 0, 0, 0, 2);
        let gw6 = Ipv6Addr::new(0xfd00, u16::from(k), u16::from(p), 0, 0, 0, 0, 1);
        let dev = format!("p{p}");
        let nd = &node.netns;
        // Fixed MACs and static neighbour entries: no ARP/ND round trips, and
        // no first IPv6 packet lost while the forwarding node resolves.
        let (pod_mac, gw_mac) = (format!("02:00:{k:02x}:{p:02x}:00:02"), format!("02:00:{k:02x}:{p:02x}:00:01"));
        ipn(&full, &format!("link add eth0 address {pod_mac} type veth peer name {dev} address {gw_mac} netns {nd}"));
        ipn(&full, &format!("addr add {ip4}/24 dev eth0"));
        ipn(&full, &format!("addr add {ip6}/64 dev eth0 nodad"));
        ipn(&full, "link set eth0 up");
        ipn(nd, &format!("addr add {gw4}/24 dev {dev}"));
        ipn(nd, &format!("addr add {gw6}/64 dev {dev} nodad"));
        ipn(nd, &format!("link set {dev} up"));
        for (ns, addr, mac, on) in [
            (&full, gw4.to_string(), &gw_mac, "eth0"),
            (&full, gw6.to_string(), &gw_mac, "eth0"),
            (nd, ip4.to_string(), &pod_mac, dev.as_str()),
            (nd, ip6.to_string(), &pod_mac, dev.as_str()),
        ] {
            ipn(ns, &format!("neigh replace {addr} lladdr {mac} dev {on} nud permanent"));
        }
        ipn(&full, &format!("route add default via {gw4}"));
        ipn(&full, &format!("-6 route add default via {gw6}"));
        let cgroup = node.cgroup_root.join(name);
        std::fs::create_dir_all(&cgroup).expect("create pod cgroup");
        Pod { name: name.into(), full, node: node.name.clone(), ip4, ip6, gw4, cgroup }
    }

    /// A second agent identity on `node` (per-pod "sidecar" agents): same
    /// netns and capture root, its own `--node` name, state and cgroup.
    pub fn add_sidecar_node(&self, node: &Node, name: &str) -> Node {
        Node {
            name: format!("{}-{name}", node.name),
            full: format!("{}-{name}", node.full),
            netns: node.netns.clone(),
            index: node.index,
            cgroup_root: node.cgroup_root.clone(),
            agent_cgroup: self.cgroup_base.join(format!("{}-{name}-agent", node.name)),
            kubelet_cgroup: node.kubelet_cgroup.clone(),
            link4: node.link4,
            link6: node.link6,
        }
    }

    /// Joins two nodes with a veth and routes each one's pod ranges via it.
    pub fn connect_nodes(&self, a: &Node, b: &Node) {
        let (ia, ib) = (format!("n{}", b.index), format!("n{}", a.index));
        let mac = |n: &Node| format!("02:fe:00:00:00:{:02x}", n.index);
        ipn(
            &a.netns,
            &format!("link add {ia} address {} type veth peer name {ib} address {} netns {}", mac(a), mac(b), b.netns),
        );
        for (node, dev, other) in [(a, &ia, b), (b, &ib, a)] {
            let ns = &node.netns;
            ipn(ns, &format!("addr add {}/24 dev {dev}", node.link4));
            ipn(ns, &format!("addr add {}/64 dev {dev} nodad", node.link6));
            ipn(ns, &format!("link set {dev} up"));
            for addr in [other.link4.to_string(), other.link6.to_string()] {
                ipn(ns, &format!("neigh replace {addr} lladdr {} dev {dev} nud permanent", mac(other)));
            }
            ipn(ns, &format!("route add 10.{}.0.0/16 via {}", other.index, other.link4));
            ipn(ns, &format!("-6 route add fd00:{:x}::/32 via {}", other.index, other.link6));
        }
    }

    fn node_tool(node: &Node, args: &[&str]) -> Command {
        let mut cmd = Command::new(Workload::tool());
        cmd.args(args);
        enter(&mut cmd, &node.netns_path(), None);
        cmd
    }

    /// Runs a one-shot workload in a node's netns, outside the kubelet's
    /// cgroup: a host-network client, captured like any other.
    pub fn run_on_node(&self, node: &Node, args: &[&str]) -> Value {
        run_json(Self::node_tool(node, args))
    }

    /// Runs a one-shot workload in a node's netns and its kubelet cgroup: a
    /// kubelet probe, which reaches the pod from the probe source.
    pub fn run_as_kubelet(&self, node: &Node, args: &[&str]) -> Value {
        self.run_on_node_in(node, &node.kubelet_cgroup, args)
    }

    /// Runs a one-shot workload in a node's netns and the given cgroup.
    pub fn run_on_node_in(&self, node: &Node, cgroup: &Path, args: &[&str]) -> Value {
        let mut cmd = Command::new(Workload::tool());
        cmd.args(args);
        enter(&mut cmd, &node.netns_path(), Some(&cgroup.join("cgroup.procs")));
        run_json(cmd)
    }

    /// `GET http://<addr><path>` from inside a node's netns: (status, body).
    pub fn http_get(&self, node: &Node, addr: &str, path: &str) -> (u16, String) {
        let v = self.run_on_node(node, &["http-get", addr, path]);
        assert_eq!(v["ok"], serde_json::json!(true), "GET {addr}{path}: {v}");
        (v["status"].as_u64().unwrap_or(0) as u16, v["body"].as_str().unwrap_or_default().to_string())
    }

    /// Starts a long-running workload in a node's netns (e.g. a capture).
    pub fn spawn_on_node(&self, node: &Node, args: &[&str]) -> Spawned {
        Spawned::new(Self::node_tool(node, args))
    }

    /// A CA shared by every agent of this topology (made once, with
    /// `pillion-agent ca-init`).
    pub fn ca_dir(&self) -> PathBuf {
        let dir = self.tmp.join("ca");
        if !dir.join("root-cert.pem").exists() {
            let out = Command::new(crate::locate_binary("pillion-agent", "PILLION_AGENT_BIN"))
                .args(["ca-init", "--dir"])
                .arg(&dir)
                .output()
                .expect("run pillion-agent ca-init");
            assert!(out.status.success(), "ca-init: {}", String::from_utf8_lossy(&out.stderr));
        }
        dir
    }

    /// Writes (or rewrites, atomically) a config file in the topology's dir.
    pub fn write_config(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.tmp.join(name);
        let tmp = self.tmp.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &path).expect("replace config");
        path
    }

    pub fn state_root(&self) -> PathBuf {
        self.tmp.join("state")
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.nodes.lock().unwrap().clone()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Agents and workloads are owned by the test and dropped first; what
        // remains here is removed by exact name.
        let agent = std::env::var_os("PILLION_AGENT_BIN").map(PathBuf::from);
        for node in self.nodes.lock().unwrap().iter() {
            let bin = agent.clone().unwrap_or_else(|| crate::locate_binary("pillion-agent", "PILLION_AGENT_BIN"));
            // In the node's netns: reset removes the probe source from its `lo`.
            let mut reset = Command::new(bin);
            reset.args(["reset", "--node", &node.full, "--state-root"]).arg(self.state_root());
            if node.netns_path().exists() {
                enter(&mut reset, &node.netns_path(), None);
            }
            let _ = reset.output();
            remove_pin_tree(&Path::new(PIN_DIR).join(&node.full));
        }
        for name in self.netns.lock().unwrap().drain(..).rev() {
            ip_quiet(&["netns", "del", &name]);
        }
        remove_cgroup_tree(&self.cgroup_base);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
