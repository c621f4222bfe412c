//! Capture: outbound and inbound are proxied by the agent, and only those.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;

use crate::{assert_ok, counter, kernel_stat, local_port, one_node};

const MIB: usize = 1 << 20;

#[test]
fn outbound_capture_keeps_the_destination_and_relays_exactly_over_v4_v6_and_mapped() {
    let t = one_node();
    t.agent.enrol(&t.client).expect("enrol client");
    let _server = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let mapped: SocketAddr = format!("[::ffff:{}]:8080", t.server.ip4).parse().unwrap();
    let cases = [
        (t.server.addr4(8080), t.server.addr4(8080)),
        (t.server.addr6(8080), t.server.addr6(8080)),
        (mapped, t.server.addr4(8080)),
    ];
    for (target, expected_dst) in cases {
        let before = counter(&t.agent, &t.client, "outbound_accepted");
        let answered = kernel_stat(&t.agent, "peer_name_answered");
        let result = t.client.client(target, MIB, &[]);
        assert_ok(&result, &format!("1 MiB echo to {target}"));
        assert_eq!(result["received"], json!(MIB));
        // getpeername on the captured socket: the address dialled, spelled as dialled
        // (v4-mapped stays v4-mapped), not the agent's 127.0.0.1:15001.
        assert_eq!(result["peer"], json!(target.to_string()), "getpeername after capture");
        assert!(kernel_stat(&t.agent, "peer_name_answered") > answered);
        let port = local_port(&result);
        let src_ip = if expected_dst.is_ipv6() { t.client.ip6.to_string() } else { t.client.ip4.to_string() };
        let expected_src = SocketAddr::new(src_ip.parse().unwrap(), port).to_string();
        let line = t.agent.wait_access_log(&format!("outbound {target}"), |v| {
            v["direction"] == "outbound"
                && v["src.addr"] == json!(expected_src)
                && v["dst.addr"] == json!(expected_dst.to_string())
        });
        assert_eq!(line["bytes_sent"], json!(MIB), "{line}");
        assert_eq!(line["bytes_recv"], json!(MIB), "{line}");
        assert_eq!(line["src.workload"], json!("client"));
        // Exactly one accept: the agent's own dial was not captured again.
        assert_eq!(counter(&t.agent, &t.client, "outbound_accepted"), before + 1, "target {target}");
    }
    assert_eq!(counter(&t.agent, &t.client, "inbound_accepted"), 0);
    assert_eq!(counter(&t.agent, &t.client, "no_orig_dst"), 0);
    // The kernel forgets each socket's destination when it closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kernel_stat(&t.agent, "parked_destinations") != 0 {
        assert!(std::time::Instant::now() < deadline, "destinations still parked: {}", t.agent.status());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn inbound_capture_shows_the_app_the_real_client_and_only_kubelet_probes_bypass_it() {
    let t = one_node();
    t.agent.enrol(&t.server).expect("enrol server");
    let _app = t.server.echo_server("[::]:9090".parse().unwrap(), Some("app"));
    for target in [t.server.addr4(9090), t.server.addr6(9090)] {
        let before = counter(&t.agent, &t.server, "inbound_accepted");
        let result = t.client.client(target, 64 * 1024, &[]);
        assert_ok(&result, &format!("inbound to {target}"));
        // The app sees the real client (the agent dials it transparently), never the
        // pod's own address or 127.0.0.1.
        let banner = result["banner"].as_str().unwrap();
        let client_ip =
            if target.is_ipv6() { format!("app [{}]:", t.client.ip6) } else { format!("app {}:", t.client.ip4) };
        assert!(banner.starts_with(&client_ip), "banner {banner:?}, want prefix {client_ip:?}");
        let src = result["local"].as_str().unwrap().to_string();
        t.agent.wait_access_log("inbound", |v| {
            v["direction"] == "inbound" && v["src.addr"] == json!(src) && v["dst.addr"] == json!(target.to_string())
        });
        assert_eq!(counter(&t.agent, &t.server, "inbound_accepted"), before + 1);
    }

    // A kubelet probe (by cgroup) reaches the app directly, from the probe source.
    let before = counter(&t.agent, &t.server, "inbound_accepted");
    let probes_before = kernel_stat(&t.agent, "inbound_probe_passed");
    let probe = t.topo.run_as_kubelet(&t.node, &["client", &t.server.addr4(9090).to_string(), "100"]);
    assert_ok(&probe, "probe from the kubelet");
    let banner = probe["banner"].as_str().unwrap();
    assert!(banner.starts_with("app 169.254.7.127:"), "probe seen as {banner:?}");
    assert_eq!(counter(&t.agent, &t.server, "inbound_accepted"), before);
    assert!(kernel_stat(&t.agent, "inbound_probe_passed") > probes_before);

    // Any other process of the node comes from a node address and is captured.
    let host = t.topo.run_on_node(&t.node, &["client", &t.server.addr4(9090).to_string(), "100"]);
    assert_ok(&host, "a host-network client (PERMISSIVE)");
    let banner = host["banner"].as_str().unwrap();
    // The node reaches the pod from its end of the pod's veth.
    assert!(banner.starts_with(&format!("app {}:", t.server.gw4)), "host client seen as {banner:?}");
    assert_eq!(counter(&t.agent, &t.server, "inbound_accepted"), before + 1);
}

#[test]
fn udp_unenrolled_pods_and_unenrolled_traffic_are_untouched() {
    let t = one_node();
    let bystander = t.topo.add_pod(&t.node, "bystander");
    t.agent.enrol(&t.client).expect("enrol client");
    let _tcp = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let udp = t.server.spawn(&["udp-echo", "0.0.0.0:5353"]);
    udp.wait_event("ready", Duration::from_secs(10));

    let redirected = kernel_stat(&t.agent, "connect_redirected");
    let result = t.client.run(&["udp-client", &t.server.addr4(5353).to_string()]);
    assert_ok(&result, "UDP query from an enrolled pod");
    assert_eq!(kernel_stat(&t.agent, "connect_redirected"), redirected, "UDP connect was rewritten");
    assert_eq!(counter(&t.agent, &t.client, "outbound_accepted"), 0);

    let result = bystander.client(t.server.addr4(8080), 1000, &[]);
    assert_ok(&result, "TCP from a pod that is not enrolled");
    assert_eq!(kernel_stat(&t.agent, "connect_redirected"), redirected);

    // Captured while enrolled ...
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "captured TCP");
    assert_eq!(counter(&t.agent, &t.client, "outbound_accepted"), 1);
    // ... and not after unenrol.
    t.agent.unenrol(&t.client).expect("unenrol");
    assert_eq!(t.agent.status()["pods"], json!([]));
    let redirected = kernel_stat(&t.agent, "connect_redirected");
    let result = t.client.client(t.server.addr4(8080), 1000, &[]);
    assert_ok(&result, "TCP after unenrol");
    assert_eq!(kernel_stat(&t.agent, "connect_redirected"), redirected, "still captured after unenrol");
    assert!(result["local"].as_str().unwrap().starts_with(&t.client.ip4.to_string()), "{result}");
}

#[test]
fn two_pods_using_the_same_client_port_each_reach_their_own_destination() {
    let t = one_node();
    let other = t.topo.add_pod(&t.node, "other");
    let other_server = t.topo.add_pod(&t.node, "other-server");
    t.agent.enrol(&t.client).expect("enrol client");
    t.agent.enrol(&other).expect("enrol other");
    let _a = t.server.echo_server("0.0.0.0:7000".parse().unwrap(), Some("A"));
    let _b = other_server.echo_server("0.0.0.0:7000".parse().unwrap(), Some("B"));
    let hold = ["--bind", "0.0.0.0:40123", "--hold"];
    let (ta, tb) = (t.server.addr4(7000).to_string(), other_server.addr4(7000).to_string());
    let mut ca = t.client.spawn(&["client", &ta, "5000", hold[0], hold[1], hold[2]]);
    let mut cb = other.spawn(&["client", &tb, "5000", hold[0], hold[1], hold[2]]);
    // Both connections are open at once before either finishes.
    let a = ca.wait_event("connected", Duration::from_secs(10));
    let b = cb.wait_event("connected", Duration::from_secs(10));
    assert_eq!(local_port(&a), 40123);
    assert_eq!(local_port(&b), 40123);
    ca.write_line("go");
    cb.write_line("go");
    let ra = ca.next(Duration::from_secs(20));
    let rb = cb.next(Duration::from_secs(20));
    assert_ok(&ra, "pod A");
    assert_ok(&rb, "pod B");
    assert!(ra["banner"].as_str().unwrap().starts_with("A "), "pod A reached {}", ra["banner"]);
    assert!(rb["banner"].as_str().unwrap().starts_with("B "), "pod B reached {}", rb["banner"]);
    for (pod, dst) in [(&t.client, &ta), (&other, &tb)] {
        let src = format!("{}:40123", pod.ip4);
        t.agent.wait_access_log("same-port", |v| v["src.addr"] == json!(src) && v["dst.addr"] == json!(dst));
    }
}

#[test]
fn a_refused_upstream_reaches_the_client_as_a_reset_not_a_hang() {
    let t = one_node();
    t.agent.enrol(&t.client).expect("enrol client");
    // Nothing listens on the server's port 9999.
    let result = t.client.client(t.server.addr4(9999), 1000, &["--timeout-ms", "5000"]);
    assert_eq!(result["ok"], json!(false), "{result}");
    assert!(
        matches!(result["error_kind"].as_str(), Some("reset" | "refused")),
        "the client should see a reset, got {result}"
    );
    assert!(result["ms"].is_null() || result["ms"].as_u64().unwrap() < 4000, "{result}");
    t.agent.wait_access_log("refused upstream", |v| {
        v["dst.addr"] == json!(t.server.addr4(9999).to_string())
            && v["error"].as_str().is_some_and(|e| e.contains("refused"))
    });
    assert_eq!(counter(&t.agent, &t.client, "upstream_failed"), 1);
}

/// M6: past the pod's connection cap a new connection is reset at once and counted in
/// `pillion_limit_refusals_total`, and the slots come back when connections end. Before,
/// nothing bounded the connections one pod could make the agent hold.
#[test]
fn past_the_pod_connection_cap_new_connections_are_reset_and_counted() {
    let topo = pillion_e2e::Topology::new();
    let node = topo.add_node("node");
    let client = topo.add_pod(&node, "client");
    let server = topo.add_pod(&node, "server");
    let opts = pillion_e2e::AgentOptions {
        extra_args: vec!["--max-pod-connections".into(), "3".into()],
        ..Default::default()
    };
    let agent = pillion_e2e::Agent::start_with(&topo, &node, &opts);
    agent.enrol(&client).expect("enrol client");
    let _echo = server.echo_server("[::]:8080".parse().unwrap(), None);
    let target = server.addr4(8080).to_string();
    let mut held = client.spawn(&["hold", &target, "5"]);
    let v = held.wait_event("held", Duration::from_secs(30));
    assert_eq!((&v["held"], &v["errors"]), (&json!(3), &json!(2)), "{v}");
    let (_, metrics) = topo.http_get(&node, "127.0.0.1:15020", "/metrics");
    let line = r#"pillion_limit_refusals_total{limit="pod_connections"} 2"#;
    assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    // Let go: the relays end and their slots come back.
    held.write_line("");
    held.wait(Duration::from_secs(10));
    let ok = (0..20).any(|_| client.client(server.addr4(8080), 1024, &[])["ok"] == json!(true));
    assert!(ok, "slots must come back when connections end");
    drop(agent);
}
