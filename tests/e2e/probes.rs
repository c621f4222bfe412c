//! Probes: only the kubelet (selected by its cgroup) reaches pods uncaptured,
//! from the probe source; every other host-network client meets STRICT,
//! policy and the access log (H4 of reviews/security-2026-12).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::{
    maps::HashMap,
    programs::{SkLookup, links::FdLink},
};
use pillion_agent::kernel::addr::ip_key;
use pillion_common::{IpKey, names};
use pillion_e2e::Agent;
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

/// An agent of this version on pins an older one left (node addresses exempt
/// through `NODE_ADDRS`, no bind guard, pods' sk_lookup links running an
/// older program) upgrades them in place: no reset, and no pod left exempt.
#[test]
fn an_agent_upgrades_pins_that_exempted_node_addresses() {
    let t = one_node();
    t.agent.enrol(&t.server).expect("enrol server");
    let mut agent = t.agent;
    agent.terminate();
    let pins = Path::new("/sys/fs/bpf/pillion").join(&t.node.full);

    // What the older agent left: no bind-guard link (so the pins are not
    // complete), a NODE_ADDRS map holding the node's address, and the pod's
    // sk_lookup link running another program (a second load of the object).
    std::fs::remove_file(pins.join("links/bind4")).expect("unpin bind4");
    let scratch = pins.join("legacy");
    std::fs::create_dir_all(&scratch).expect("scratch pin dir");
    let mut old = pillion_agent::kernel::load_detached(&scratch).expect("load a second copy");
    {
        let mut map: HashMap<_, IpKey, u32> = old.map_mut(names::MAP_POD_ADDRS).unwrap().try_into().unwrap();
        map.insert(ip_key(IpAddr::V4(t.server.gw4)), 1, 0).unwrap();
    }
    std::fs::rename(scratch.join(names::MAP_POD_ADDRS), pins.join("maps").join(names::MAP_NODE_ADDRS_LEGACY))
        .expect("pin the legacy map");
    let prog: &mut SkLookup = old.program_mut(names::PROG_SK_LOOKUP).unwrap().try_into().unwrap();
    prog.load().unwrap();
    let netns = std::fs::File::open(t.server.netns_path()).unwrap();
    let id = prog.attach(&netns).unwrap();
    let link: FdLink = prog.take_link(id).unwrap().into();
    let old_link = link.info().unwrap().id();
    let pod_pin = pins.join("pods/default_server");
    std::fs::remove_file(&pod_pin).expect("unpin the pod's link");
    let _pinned = link.pin(&pod_pin).expect("pin the older link");

    let agent = Agent::start(&t.topo, &t.node);
    let status = agent.status();
    assert_eq!(status["origin"], json!("installed"), "{status}");
    assert!(!pins.join("maps").join(names::MAP_NODE_ADDRS_LEGACY).exists(), "the legacy map is still pinned");
    {
        let map: HashMap<_, IpKey, u32> = old.map(names::MAP_POD_ADDRS).unwrap().try_into().unwrap();
        assert_eq!(map.keys().count(), 0, "the legacy map was not emptied");
    }
    assert_ne!(status["links"]["pod/default_server"], json!(old_link), "the pod still runs the older program");

    // The upgraded pod: a host client is captured, the kubelet's probe passes.
    let _app = t.server.echo_server("[::]:9090".parse().unwrap(), Some("app"));
    let before = counter(&agent, &t.server, "inbound_accepted");
    let host = t.topo.run_on_node(&t.node, &["client", &t.server.addr4(9090).to_string(), "10"]);
    assert_ok(&host, "a host client after the upgrade");
    assert_eq!(counter(&agent, &t.server, "inbound_accepted"), before + 1, "not captured: {host}");
    let probe = t.topo.run_as_kubelet(&t.node, &["client", &t.server.addr4(9090).to_string(), "10"]);
    assert!(probe["banner"].as_str().unwrap_or_default().starts_with("app 169.254.7.127:"), "{probe}");
    drop(old);
    for entry in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let _ = std::fs::remove_dir(&scratch);
}

fn lo_addresses(netns: &str) -> String {
    let out = std::process::Command::new("ip").args(["-n", netns, "-o", "addr", "show", "dev", "lo"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reset_in_the_node_netns_removes_the_probe_source_and_the_probe_links() {
    let mut t = one_node();
    let pins = Path::new("/sys/fs/bpf/pillion").join(&t.node.full);
    let lo = lo_addresses(&t.node.netns);
    assert!(lo.contains(&format!("{PROBE_SOURCE4}/32")) && lo.contains(&format!("{PROBE_SOURCE6}/128")), "{lo}");
    assert_eq!(std::fs::read_dir(pins.join("probes")).unwrap().count(), 2, "one link per family");
    assert!(t.agent.terminate().success());
    let mut reset = std::process::Command::new(pillion_e2e::locate_binary("pillion-agent", "PILLION_AGENT_BIN"));
    reset.args(["reset", "--node", &t.node.full, "--state-root"]).arg(t.topo.state_root());
    pillion_e2e::enter(&mut reset, &t.node.netns_path(), None);
    let out = reset.output().unwrap();
    assert!(out.status.success(), "reset: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.exists(), "pins left behind");
    let lo = lo_addresses(&t.node.netns);
    assert!(!lo.contains(PROBE_SOURCE4) && !lo.contains(PROBE_SOURCE6), "probe source left on lo: {lo}");
}
