//! The L4 mesh across two nodes: HBONE mutual TLS with workload identities,
//! policy at the destination, telemetry, live configuration.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use pillion_e2e::{Agent, AgentOptions, Node, Pod, Topology};
use serde_json::{Value, json};

use crate::{assert_ok, counter};

const MARKER: &str = "PILLION-PLAINTEXT-MARKER";

/// Two connected nodes: `client` and `peer` (same node) on A, `server` on B,
/// an `outsider` on B that is not in the mesh (neither in the model nor
/// enrolled: an enrolled pod the model lacks is refused), agents with a
/// shared CA.
pub struct TwoNodes {
    pub a: Agent,
    pub b: Agent,
    pub client: Pod,
    pub peer: Pod,
    pub server: Pod,
    pub outsider: Pod,
    pub node_a: Node,
    pub node_b: Node,
    pub config: std::path::PathBuf,
    pub topo: Topology,
}

use pillion_e2e::workload_yaml as workload;

impl TwoNodes {
    pub fn new(extra_yaml: &str) -> TwoNodes {
        Self::with_outsider_as("", extra_yaml)
    }

    /// Like `new`, but when `outsider_name` is not empty the `outsider` pod is
    /// in the model as that workload (namespace default, node B), and enrolled.
    pub fn with_outsider_as(outsider_name: &str, extra_yaml: &str) -> TwoNodes {
        let topo = Topology::new();
        let node_a = topo.add_node("a");
        let node_b = topo.add_node("b");
        topo.connect_nodes(&node_a, &node_b);
        let client = topo.add_pod(&node_a, "client");
        let peer = topo.add_pod(&node_a, "peer");
        let server = topo.add_pod(&node_b, "server");
        let outsider = topo.add_pod(&node_b, "outsider");
        let mut extra = extra_yaml.to_string();
        if !outsider_name.is_empty() {
            extra += &workload(
                outsider_name,
                outsider_name,
                "default",
                &outsider,
                &node_b,
                &format!("app: {outsider_name}"),
            );
        }
        let config = topo.write_config("mesh.yaml", &Self::yaml(&node_a, &node_b, &[&client, &peer, &server], &extra));
        let opts = AgentOptions { config: Some(config.clone()), ca_dir: Some(topo.ca_dir()), ..Default::default() };
        let a = Agent::start_with(&topo, &node_a, &opts);
        let b = Agent::start_with(&topo, &node_b, &opts);
        for (agent, pod) in [(&a, &client), (&b, &server)] {
            agent.enrol(pod).expect("enrol");
        }
        a.enrol_as(&peer, "other", "peer").expect("enrol peer");
        if !outsider_name.is_empty() {
            b.enrol_as(&outsider, "default", outsider_name).expect("enrol outsider");
        }
        TwoNodes { a, b, client, peer, server, outsider, node_a, node_b, config, topo }
    }

    /// The base model: client (sa client, ns default), peer (sa peer, ns
    /// other) on A, server (sa server) on B; `outsider` is not in it.
    fn yaml(a: &Node, b: &Node, pods: &[&Pod; 3], extra: &str) -> String {
        let mut y = String::new();
        y += &workload("client", "client", "default", pods[0], a, "app: client");
        y += &workload("peer", "peer", "other", pods[1], a, "app: peer");
        y += &workload("server", "server", "default", pods[2], b, "app: server");
        y += "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n";
        y += extra;
        y
    }

    /// Rewrites the config with `extra` and waits until both agents applied it.
    pub fn reconfigure(&self, extra: &str) {
        let before: Vec<u64> = [&self.a, &self.b].iter().map(|ag| self.model_version(ag)).collect();
        let yaml = Self::yaml(&self.node_a, &self.node_b, &[&self.client, &self.peer, &self.server], extra);
        self.topo.write_config("mesh.yaml", &yaml);
        for (agent, v) in [&self.a, &self.b].into_iter().zip(before) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.model_version(agent) <= v {
                assert!(Instant::now() < deadline, "agent {} did not apply the new config", agent.node.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn model_version(&self, agent: &Agent) -> u64 {
        let (status, body) = self.topo.http_get(&agent.node, "127.0.0.1:15000", "/config_dump");
        assert_eq!(status, 200, "{body}");
        let dump: Value = serde_json::from_str(&body).expect("config_dump is JSON");
        dump["model"]["version"].as_u64().expect("model version")
    }

    pub fn metrics(&self, agent: &Agent) -> String {
        let (status, body) = self.topo.http_get(&agent.node, "127.0.0.1:15020", "/metrics");
        assert_eq!(status, 200);
        body
    }
}

/// The value of the first series of `name` whose labels include all `want`.
pub(crate) fn series(metrics: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| l.starts_with(&format!("{name}{{"))).find_map(|l| {
        let ok = want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| l.rsplit(' ').next().and_then(|v| v.parse().ok())).flatten()
    })
}

fn sa(name: &str, ns: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{name}")
}

#[test]
fn cross_node_and_same_node_traffic_is_mutual_tls_with_the_right_identities() {
    let t = TwoNodes::new("");
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), Some("server"));
    let _peer = t.peer.echo_server("[::]:8080".parse().unwrap(), Some("peer"));

    for target in [t.server.addr4(8080), t.server.addr6(8080)] {
        let mut cap = t.topo.spawn_on_node(&t.node_a, &["capture", "n2", "30", MARKER]);
        cap.wait_event("ready", Duration::from_secs(5));
        let r = t.client.client(target, 64 * 1024, &["--marker", MARKER]);
        assert_ok(&r, &format!("client → {target}"));
        // The server app sees the client pod (not its own address), of the family dialled.
        let client_ip = if target.is_ipv6() { format!("[{}]", t.client.ip6) } else { t.client.ip4.to_string() };
        let banner = r["banner"].as_str().unwrap_or_default();
        assert!(banner.starts_with(&format!("server {client_ip}:")), "the app saw {banner:?} for {target}");
        cap.write_line("stop");
        let c = cap.next(Duration::from_secs(10));
        assert!(c["hbone_segments"].as_u64().unwrap() > 0, "no HBONE on the node link: {c}");
        assert!(c["tls_records"].as_u64().unwrap() > 0, "no TLS records on the node link: {c}");
        assert_eq!(c["tcp_ports"], json!([15008]), "other TCP ports crossed the link: {c}");
        assert_eq!(c["marker_seen"], json!(false), "plaintext payload visible on the wire: {c}");
        let line = t.b.wait_access_log("inbound HBONE", |v| {
            v["direction"] == "inbound"
                && v["dst.addr"] == json!(target.to_string())
                && v["src.identity"] == json!(sa("client", "default"))
        });
        assert_eq!(line["dst.identity"], json!(sa("server", "default")));
        assert_eq!(line["bytes_sent"], json!(64 * 1024));
        let out = t.a.wait_access_log("outbound HBONE", |v| {
            v["direction"] == "outbound" && v["dst.addr"] == json!(target.to_string())
        });
        assert_eq!(out["dst.hbone_addr"], json!(SocketAddr::new(target.ip(), 15008).to_string()));
    }
    let (client_id, server_id) = (sa("client", "default"), sa("server", "default"));
    let want = [
        ("reporter", "destination"),
        ("source_principal", client_id.as_str()),
        ("destination_principal", server_id.as_str()),
        ("connection_security_policy", "mutual_tls"),
        ("destination_workload", "server"),
    ];
    let m = t.metrics(&t.b);
    assert_eq!(series(&m, "istio_tcp_connections_opened_total", &want), Some(2.0), "{m}");
    assert!(series(&m, "istio_tcp_received_bytes_total", &want).unwrap() >= (2 * 64 * 1024) as f64);
    let m = t.metrics(&t.a);
    assert_eq!(
        series(&m, "istio_tcp_connections_opened_total", &[("reporter", "source"), ("source_workload", "client")]),
        Some(2.0)
    );

    // Same node: client → peer, both on A, still through HBONE, still encrypted.
    let mut cap = t.topo.spawn_on_node(&t.node_a, &["capture", "p2", "30", MARKER]);
    cap.wait_event("ready", Duration::from_secs(5));
    let r = t.client.client(t.peer.addr4(8080), 32 * 1024, &["--marker", MARKER]);
    assert_ok(&r, "same-node");
    let banner = r["banner"].as_str().unwrap_or_default();
    assert!(banner.starts_with(&format!("peer {}:", t.client.ip4)), "same node: the app saw {banner:?}");
    let r = t.client.client(t.peer.addr6(8080), 1024, &[]);
    assert_ok(&r, "same-node v6");
    let banner = r["banner"].as_str().unwrap_or_default();
    assert!(banner.starts_with(&format!("peer [{}]:", t.client.ip6)), "same node v6: the app saw {banner:?}");
    cap.write_line("stop");
    let c = cap.next(Duration::from_secs(10));
    assert!(c["tls_records"].as_u64().unwrap() > 0 && c["marker_seen"] == json!(false), "{c}");
    assert_eq!(c["tcp_ports"], json!([15008]), "{c}");
    t.a.wait_access_log("same-node inbound", |v| {
        v["direction"] == "inbound"
            && v["dst.workload"] == json!("peer")
            && v["src.identity"] == json!(sa("client", "default"))
    });
}

#[test]
fn authorization_policy_by_namespace_principal_and_port_with_live_reevaluation() {
    let t = TwoNodes::new("");
    let _a = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let _b = t.server.echo_server("[::]:9090".parse().unwrap(), None);
    let to = |pod: &Pod, port| pod.client(t.server.addr4(port), 1000, &["--timeout-ms", "5000"]);
    // No policy: everything allowed.
    assert_ok(&to(&t.client, 8080), "no policy");
    assert_ok(&to(&t.peer, 8080), "no policy (peer)");

    // ALLOW only principal client on port 8080.
    t.reconfigure(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/client\"]}\n    to:\n    - operation: {ports: [\"8080\"]}\n",
    );
    assert_ok(&to(&t.client, 8080), "allowed principal and port");
    assert_eq!(to(&t.client, 9090)["ok"], json!(false), "port 9090 is not allowed");
    assert_eq!(to(&t.peer, 8080)["ok"], json!(false), "principal peer is not allowed");
    let denied = t.b.wait_access_log("denial of peer", |v| {
        v["src.identity"] == json!(sa("peer", "other"))
            && v["error"].as_str().is_some_and(|e| e.contains("authorization policy"))
    });
    assert_eq!(denied["dst.addr"], json!(t.server.addr4(8080).to_string()), "{denied}");

    // DENY by namespace wins over everything.
    t.reconfigure(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-other, namespace: default}\n\
         spec:\n  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [\"other\"]}\n",
    );
    assert_ok(&to(&t.client, 9090), "namespace default is not denied");
    assert_eq!(to(&t.peer, 8080)["ok"], json!(false), "namespace other is denied");

    // A live connection the new policy denies is closed; one it allows stays.
    let mut kept = t.client.spawn(&["client", &t.server.addr4(8080).to_string(), "1000", "--hold"]);
    let mut cut = t.client.spawn(&["client", &t.server.addr4(9090).to_string(), "1000", "--hold"]);
    kept.wait_event("connected", Duration::from_secs(10));
    cut.wait_event("connected", Duration::from_secs(10));
    // Make sure the server side has registered both before the change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&t.b, &t.server, "hbone_accepted") < 2 + 2 {
        assert!(Instant::now() < deadline, "the held connections never reached the server");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.reconfigure(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-9090, namespace: default}\n\
         spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [\"9090\"]}\n",
    );
    kept.write_line("go");
    cut.write_line("go");
    assert_ok(&kept.next(Duration::from_secs(20)), "a connection the new policy allows stays up");
    let r = cut.next(Duration::from_secs(20));
    assert_eq!(r["ok"], json!(false), "a connection the new policy denies was not closed: {r}");
}

#[test]
fn strict_refuses_plaintext_from_outside_the_mesh_but_kubelet_probes_still_reach_the_pod() {
    let t = TwoNodes::new("");
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    // PERMISSIVE (the default): a client outside the mesh gets through in plaintext.
    assert_ok(&t.outsider.client(t.server.addr4(8080), 1000, &[]), "plaintext under PERMISSIVE");
    t.reconfigure(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n\
         spec: {mtls: {mode: STRICT}}\n",
    );
    let r = t.outsider.client(t.server.addr4(8080), 1000, &["--timeout-ms", "3000"]);
    assert_eq!(r["ok"], json!(false), "plaintext accepted under STRICT: {r}");
    t.b.wait_access_log("STRICT refusal", |v| v["error"].as_str().is_some_and(|e| e.contains("STRICT")));
    // Mesh clients still get through (over HBONE), and so does the kubelet's probe.
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "mTLS under STRICT");
    let probe = t.topo.run_as_kubelet(&t.node_b, &["client", &t.server.addr4(8080).to_string(), "100"]);
    assert_ok(&probe, "kubelet probe under STRICT");
}

#[test]
fn a_service_vip_is_balanced_over_endpoints_and_a_dead_one_is_skipped() {
    // Three endpoints: server and backup (the `outsider` pod, node B) answer;
    // nothing listens on client's 8080 (node A), so that one is dead.
    let svc = "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: echo, namespace: default}\n\
               spec:\n  clusterIPs: [10.96.0.10]\n  ports: [{name: tcp, port: 80, targetPort: 8080}]\n  endpoints: [server, backup, client]\n---\n";
    let t = TwoNodes::with_outsider_as("backup", svc);
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), Some("server"));
    let _backup = t.outsider.echo_server("[::]:8080".parse().unwrap(), Some("backup"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let r = t.client.client("10.96.0.10:80".parse().unwrap(), 1000, &["--timeout-ms", "5000"]);
        assert_ok(&r, "connection to the service VIP");
        *seen.entry(r["banner"].as_str().unwrap().split(' ').next().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.values().sum::<i32>(), 12);
    assert!(
        seen.get("server").copied().unwrap_or(0) >= 3 && seen.get("backup").copied().unwrap_or(0) >= 3,
        "not balanced: {seen:?}"
    );
    let out = t.a.wait_access_log("service", |v| v["dst.service"] == json!("echo.default.svc.cluster.local"));
    assert!(out["dst.workload"] == json!("server") || out["dst.workload"] == json!("backup"), "{out}");
}

#[test]
fn traffic_that_skips_the_waypoint_is_rejected() {
    // `server` sits behind waypoint `wp` (served by `peer`'s workload identity).
    let extra = "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: wp, namespace: other, labels: {istio.io/use-waypoint: none}}\n\
                 spec:\n  clusterIPs: [10.96.0.20]\n  ports: [{name: mesh, port: 15008}]\n  endpoints: [peer]\n---\n\
                 apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: guarded, namespace: default, labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: other}}\n\
                 spec:\n  clusterIPs: [10.96.0.11]\n  ports: [{name: tcp, port: 80, targetPort: 8080}]\n  endpoints: [server]\n---\n";
    let t = TwoNodes::new(extra);
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    // Straight to the pod IP, bypassing the waypoint: refused by the destination.
    let r = t.client.client(t.server.addr4(8080), 1000, &["--timeout-ms", "5000"]);
    assert_eq!(r["ok"], json!(false), "waypoint bypass accepted: {r}");
    t.b.wait_access_log("waypoint bypass", |v| v["error"].as_str().is_some_and(|e| e.contains("waypoint")));
    // Plaintext from outside the mesh is refused too.
    let r = t.outsider.client(t.server.addr4(8080), 1000, &["--timeout-ms", "3000"]);
    assert_eq!(r["ok"], json!(false), "{r}");
}

#[test]
fn hot_reload_adds_a_workload_and_a_bad_file_keeps_the_old_config() {
    let t = TwoNodes::new("");
    let _srv = t.outsider.echo_server("[::]:8080".parse().unwrap(), None);
    // outsider is not in the mesh: plaintext passthrough, no identity.
    assert_ok(&t.client.client(t.outsider.addr4(8080), 1000, &[]), "to a pod outside the mesh");
    t.a.wait_access_log("passthrough", |v| {
        v["dst.addr"] == json!(t.outsider.addr4(8080).to_string()) && v["dst.hbone_addr"] == json!("")
    });
    // Add it to the mesh without restarting anything: now HBONE.
    let added = workload("outsider", "outsider", "default", &t.outsider, &t.node_b, "app: outsider");
    t.reconfigure(&added);
    t.b.enrol(&t.outsider).expect("enrol the added workload");
    assert_ok(&t.client.client(t.outsider.addr4(8080), 1000, &[]), "to the newly added workload");
    t.b.wait_access_log("HBONE to the added workload", |v| {
        v["direction"] == "inbound"
            && v["dst.workload"] == json!("outsider")
            && v["src.identity"] == json!(sa("client", "default"))
    });
    // A broken file is rejected with its line; the last good model stays.
    let version = t.model_version(&t.a);
    std::fs::write(
        &t.config,
        "apiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {name: x}\nspec: {ips: [not-an-ip]}\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.a.log_text().contains("not-an-ip") && !t.a.log_text().contains("rejected") {
        assert!(Instant::now() < deadline, "the bad file was never reported:\n{}", t.a.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(t.model_version(&t.a), version, "a bad file replaced the model");
    assert_ok(&t.client.client(t.outsider.addr4(8080), 1000, &[]), "old config still in force");
}

#[test]
fn after_an_agent_restart_new_connections_succeed_without_re_enrolment() {
    let mut t = TwoNodes::new("");
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "before restart");
    t.b.kill();
    let opts = AgentOptions { config: Some(t.config.clone()), ca_dir: Some(t.topo.ca_dir()), ..Default::default() };
    t.b = Agent::start_with(&t.topo, &t.node_b, &opts);
    assert_eq!(t.b.status()["pods"].as_array().map(Vec::len), Some(1), "pods not adopted");
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &["--timeout-ms", "5000"]), "after restart");
    t.b.wait_access_log("after restart", |v| v["src.identity"] == json!(sa("client", "default")));
}
