//! Probes: only the kubelet (selected by its cgroup) reaches pods uncaptured,
//! from the probe source; every other host-network client meets STRICT,
//! policy and the access log (H4 of reviews/security-2026-12).

use std::net::SocketAddr;

use serde_json::json;

use crate::{assert_ok, counter, kernel_stat, mesh::TwoNodes, one_node};

const STRICT_AND_DENY_ALL: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n\
     spec: {mtls: {mode: STRICT}}\n---\n\
     apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\n\
     spec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - {}\n";

const PROBE_SOURCE4: &str = "169.254.7.127";
const PROBE_SOURCE6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";

fn targets(t: &TwoNodes) -> [SocketAddr; 2] {
    [t.server.addr4(8080), t.server.addr6(8080)]
}

#[test]
fn a_host_network_client_gets_strict_and_policy() {
    let t = TwoNodes::new("");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), Some("app"));
    t.reconfigure(STRICT_AND_DENY_ALL);
    for target in targets(&t) {
        let before = counter(&t.b, &t.server, "inbound_accepted");
        // The server's node, outside the kubelet's cgroup: a host-network pod,
        // or kube-proxy's masquerade of a NodePort client.
        let r = t.topo.run_on_node(&t.node_b, &["client", &target.to_string(), "100", "--timeout-ms", "3000"]);
        assert_eq!(r["ok"], json!(false), "a host-network client reached the app under STRICT + DENY: {r}");
        assert!(!r["banner"].as_str().unwrap_or_default().starts_with("app"), "the app answered: {r}");
        assert_eq!(counter(&t.b, &t.server, "inbound_accepted"), before + 1, "not captured: {target}");
    }
    let gw = format!("{}:", t.server.gw4);
    let line = t.b.wait_access_log("refusal of the node's own address", |v| {
        v["direction"] == "inbound" && v["src.addr"].as_str().is_some_and(|s| s.starts_with(&gw))
    });
    assert!(line["error"].as_str().is_some_and(|e| e.contains("STRICT")), "{line}");
    // The kubelet (by cgroup) still gets through, from the probe source.
    let probe = t.topo.run_as_kubelet(&t.node_b, &["client", &t.server.addr4(8080).to_string(), "100"]);
    assert_ok(&probe, "kubelet probe under STRICT + DENY");
}

#[test]
fn a_kubelet_probe_reaches_the_app_under_strict_from_the_probe_source() {
    let t = TwoNodes::new("");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), Some("app"));
    t.reconfigure(STRICT_AND_DENY_ALL);
    for (target, source) in
        targets(&t).into_iter().zip([format!("app {PROBE_SOURCE4}:"), format!("app [{PROBE_SOURCE6}]:")])
    {
        let before = counter(&t.b, &t.server, "inbound_accepted");
        let (bound, passed) = (kernel_stat(&t.b, "probe_source_bound"), kernel_stat(&t.b, "inbound_probe_passed"));
        let probe = t.topo.run_as_kubelet(&t.node_b, &["client", &target.to_string(), "100"]);
        assert_ok(&probe, &format!("kubelet probe to {target} under STRICT"));
        let banner = probe["banner"].as_str().unwrap();
        assert!(banner.starts_with(&source), "the app saw the probe as {banner:?}, want {source:?}");
        assert_eq!(counter(&t.b, &t.server, "inbound_accepted"), before, "the probe went through the agent");
        assert!(kernel_stat(&t.b, "probe_source_bound") > bound);
        assert!(kernel_stat(&t.b, "inbound_probe_passed") > passed);
    }
    // The kubelet's other connections (API server, other nodes' pods) keep
    // the node's address, whose replies are routed back.
    let bound = kernel_stat(&t.b, "probe_source_bound");
    let _ =
        t.topo.run_as_kubelet(&t.node_b, &["client", &t.client.addr4(8080).to_string(), "10", "--timeout-ms", "2000"]);
    assert_eq!(kernel_stat(&t.b, "probe_source_bound"), bound, "a connect to another node's pod got the probe source");
}

#[test]
fn a_host_process_cannot_bind_the_probe_source() {
    let t = one_node();
    t.agent.enrol(&t.server).expect("enrol server");
    let _app = t.server.echo_server("[::]:9090".parse().unwrap(), Some("app"));
    // A host process under the capture root, but not the kubelet.
    let host = t.node.cgroup_root.join("host-daemon");
    std::fs::create_dir_all(&host).expect("create cgroup");
    let refused = kernel_stat(&t.agent, "bind_to_probe_source_refused");
    for (target, source) in
        [(t.server.addr4(9090), format!("{PROBE_SOURCE4}:0")), (t.server.addr6(9090), format!("[{PROBE_SOURCE6}]:0"))]
    {
        let r = t.topo.run_on_node_in(&t.node, &host, &["client", &target.to_string(), "10", "--bind", &source]);
        assert_eq!(r["ok"], json!(false), "a host process passed as the kubelet: {r}");
        assert_eq!(r["error_kind"], json!("denied"), "{r}");
    }
    assert!(kernel_stat(&t.agent, "bind_to_probe_source_refused") >= refused + 2);
}
