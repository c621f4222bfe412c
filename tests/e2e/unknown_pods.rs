//! Enrolled pods that the model does not attribute (not listed yet, or their
//! address listed under another workload) fail closed: no plaintext in or
//! out, no borrowed identity; and a pod the model lists within the wait gets
//! through.

use std::time::{Duration, Instant};

use pillion_e2e::{Agent, AgentOptions, Node, Pod, Topology, workload_yaml as workload};
use serde_json::{Value, json};

use crate::{assert_ok, counter};

const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n\
                      spec: {mtls: {mode: STRICT}}\n---\n";
const NOT_IN_MODEL: &str = "not in the mesh model";

/// One node: `server` in the model, `ghost` enrolled but not in the model,
/// `outside` neither (a plaintext client from another pod).
struct Fixture {
    agent: Agent,
    server: Pod,
    ghost: Pod,
    outside: Pod,
    node: Node,
    config: std::path::PathBuf,
    topo: Topology,
}

impl Fixture {
    fn new(extra_yaml: &str, wait: Duration) -> Fixture {
        let topo = Topology::new();
        let node = topo.add_node("n");
        let server = topo.add_pod(&node, "server");
        let ghost = topo.add_pod(&node, "ghost");
        let outside = topo.add_pod(&node, "outside");
        let config = topo.write_config("mesh.yaml", &(Self::base(&server, &node) + extra_yaml));
        let opts = AgentOptions {
            config: Some(config.clone()),
            ca_dir: Some(topo.ca_dir()),
            env: vec![("PILLION_UNKNOWN_POD_WAIT_MS".into(), wait.as_millis().to_string())],
            ..Default::default()
        };
        let agent = Agent::start_with(&topo, &node, &opts);
        agent.enrol(&server).expect("enrol server");
        agent.enrol(&ghost).expect("enrol ghost");
        Fixture { agent, server, ghost, outside, node, config, topo }
    }

    fn base(server: &Pod, node: &Node) -> String {
        workload("server", "server", "default", server, node, "app: server")
    }

    fn model_version(&self) -> u64 {
        let (status, body) = self.topo.http_get(&self.node, "127.0.0.1:15000", "/config_dump");
        assert_eq!(status, 200, "{body}");
        let dump: Value = serde_json::from_str(&body).expect("config_dump is JSON");
        dump["model"]["version"].as_u64().expect("model version")
    }

    /// Rewrites the config with `extra` and waits (bounded) until the agent applied it.
    fn reconfigure(&self, extra: &str) {
        let before = self.model_version();
        self.topo.write_config("mesh.yaml", &(Self::base(&self.server, &self.node) + extra));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.model_version() <= before {
            assert!(Instant::now() < deadline, "the agent did not apply the new config {}", self.config.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The client got nothing from the app: refused, no banner, no echo.
fn assert_no_app_bytes(r: &Value, what: &str) {
    assert_eq!(r["ok"], json!(false), "{what}: accepted: {r}");
    assert!(r["banner"].as_str().unwrap_or("").is_empty(), "{what}: the app answered: {r}");
    assert_eq!(r["received"].as_u64().unwrap_or(0), 0, "{what}: the app answered: {r}");
}

#[test]
fn an_enrolled_pod_missing_from_the_model_refuses_plaintext() {
    let t = Fixture::new("", Duration::from_millis(500));
    let _ghost = t.ghost.echo_server("[::]:8080".parse().unwrap(), Some("ghost"));
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), Some("server"));
    // No PeerAuthentication (PERMISSIVE): a listed pod takes plaintext, an
    // unlisted one does not: no policy could be evaluated for it.
    assert_ok(&t.outside.client(t.server.addr4(8080), 100, &[]), "plaintext to a listed pod under PERMISSIVE");
    let r = t.outside.client(t.ghost.addr4(8080), 100, &["--timeout-ms", "5000"]);
    assert_no_app_bytes(&r, "plaintext to an unlisted pod under PERMISSIVE");
    let line = t.agent.wait_access_log("refusal under PERMISSIVE", |v| {
        v["direction"] == "inbound" && v["error"].as_str().is_some_and(|e| e.contains(NOT_IN_MODEL))
    });
    assert_eq!(line["dst.workload"], json!("ghost"), "{line}");
    // Mesh-wide STRICT: refused all the same, for the same reason.
    t.reconfigure(STRICT);
    let r = t.outside.client(t.ghost.addr6(8080), 100, &["--timeout-ms", "5000"]);
    assert_no_app_bytes(&r, "plaintext to an unlisted pod under STRICT");
    t.agent.wait_access_logs("a second refusal", 2, |v| {
        v["direction"] == "inbound" && v["error"].as_str().is_some_and(|e| e.contains(NOT_IN_MODEL))
    });
    assert!(counter(&t.agent, &t.ghost, "denied") >= 2);
}

#[test]
fn an_enrolled_pod_missing_from_the_model_opens_no_plaintext_outbound() {
    let wait = Duration::from_millis(1000);
    let t = Fixture::new("", wait);
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), Some("server"));
    let _out = t.outside.echo_server("[::]:8080".parse().unwrap(), Some("outside"));
    // To a mesh workload, and to a pod outside the mesh: neither in plaintext.
    for (to, what) in
        [(t.server.addr4(8080), "to a mesh workload"), (t.outside.addr4(8080), "to a pod outside the mesh")]
    {
        let r = t.ghost.client(to, 100, &["--timeout-ms", "10000"]);
        assert_no_app_bytes(&r, what);
        let line = t.agent.wait_access_log(what, |v| {
            v["direction"] == "outbound"
                && v["dst.addr"] == json!(to.to_string())
                && v["error"].as_str().is_some_and(|e| e.contains(NOT_IN_MODEL))
        });
        assert_eq!(line["src.workload"], json!("ghost"), "{line}");
        assert_eq!(line["src.identity"], json!(""), "{line}");
        let ms: u64 = line["duration"].as_str().and_then(|d| d.trim_end_matches("ms").parse().ok()).unwrap_or(0);
        assert!(ms >= wait.as_millis() as u64 - 50, "refused before the wait ended: {line}");
    }
    // The server saw nothing, not even a connection attempt.
    assert_eq!(counter(&t.agent, &t.server, "inbound_accepted"), 0);
    assert_eq!(counter(&t.agent, &t.server, "hbone_accepted"), 0);
}

#[test]
fn a_pod_the_model_lists_within_the_wait_gets_connected() {
    let t = Fixture::new("", Duration::from_secs(30));
    let _srv = t.server.echo_server("[::]:8080".parse().unwrap(), Some("server"));
    let to = t.server.addr4(8080).to_string();
    let client = t.ghost.spawn(&["client", &to, "100", "--timeout-ms", "30000"]);
    // The agent holds the connection, waiting for the model.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&t.agent, &t.ghost, "outbound_accepted") == 0 {
        assert!(Instant::now() < deadline, "the connection never reached the agent");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.reconfigure(&workload("ghost", "ghost", "default", &t.ghost, &t.node, "app: ghost"));
    let r = client.next(Duration::from_secs(30));
    let r = if r["event"] == "connected" { client.next(Duration::from_secs(30)) } else { r };
    assert_ok(&r, "connection held until the model listed the pod");
    let line = t.agent.wait_access_log("outbound after the wait", |v| {
        v["direction"] == "outbound" && v["dst.addr"] == json!(to) && v["error"].is_null()
    });
    assert_eq!(line["src.identity"], json!("spiffe://cluster.local/ns/default/sa/ghost"), "{line}");
    assert_ne!(line["dst.hbone_addr"], json!(""), "not over HBONE: {line}");
}

#[test]
fn an_address_listed_under_another_workload_is_not_served_with_its_identity() {
    // The model still lists `old` at ghost's addresses (ghost reused them
    // before the model caught up). A mesh client dials `old` over HBONE;
    // ghost must neither present old's certificate nor deliver.
    let t = Fixture::new("", Duration::from_millis(500));
    t.reconfigure(&workload("old", "old", "default", &t.ghost, &t.node, "app: old"));
    let _ghost = t.ghost.echo_server("[::]:8080".parse().unwrap(), Some("ghost"));
    let r = t.server.client(t.ghost.addr4(8080), 100, &["--timeout-ms", "5000"]);
    assert_no_app_bytes(&r, "HBONE to an address reused by another pod");
    let line = t.agent.wait_access_log("HBONE refusal", |v| {
        v["error"].as_str().is_some_and(|e| e.contains("HBONE handshake refused") && e.contains("default/old"))
    });
    assert_eq!(line["dst.workload"], json!("ghost"), "{line}");
    assert!(
        !t.agent.access_logs().iter().any(|v| v["dst.identity"] == json!("spiffe://cluster.local/ns/default/sa/old")
            && v["direction"] == "inbound"
            && v["error"].is_null()),
        "ghost served as old:\n{}",
        t.agent.log_text()
    );
}
