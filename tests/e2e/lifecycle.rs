//! Agent lifecycle: fail closed when it dies, adopt on restart, hand off
//! without refusing a connection, reset cleanly.

use std::time::Duration;

use pillion_e2e::Agent;
use serde_json::json;

use crate::{assert_ok, counter, one_node};

#[test]
fn a_killed_agent_fails_closed_and_a_restarted_one_adopts_pins_and_pods() {
    let mut t = one_node();
    let outsider = t.topo.add_pod(&t.node, "outsider");
    t.agent.enrol(&t.client).expect("enrol client");
    t.agent.enrol(&t.server).expect("enrol server");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "before the kill");
    let links = t.agent.status()["links"].clone();
    assert!(links["connect4"].is_u64() && links["pod/default_client"].is_u64(), "links: {links}");
    // The kubelet's probe links too: a restart keeps them (compared below).
    assert!(links.as_object().unwrap().keys().any(|k| k.starts_with("probe/")), "links: {links}");

    t.agent.kill();
    let out = t.client.client(t.server.addr4(8080), 1000, &["--timeout-ms", "1000"]);
    assert_eq!(out["ok"], json!(false), "outbound escaped with the agent gone: {out}");
    assert_eq!(out["error_kind"], json!("refused"), "{out}");
    let inbound = outsider.client(t.server.addr4(8080), 1000, &["--timeout-ms", "1000"]);
    assert_eq!(inbound["ok"], json!(false), "inbound reached the app uncaptured: {inbound}");

    let restarted = Agent::start(&t.topo, &t.node);
    let status = restarted.status();
    assert_eq!(status["origin"], json!("adopted"));
    assert_eq!(status["links"], links, "restart re-created links instead of adopting them");
    assert_eq!(status["pods"].as_array().map(Vec::len), Some(2), "pods not adopted: {status}");
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "outbound after restart");
    assert_ok(&outsider.client(t.server.addr4(8080), 1000, &[]), "inbound after restart");
    assert_eq!(counter(&restarted, &t.client, "outbound_accepted"), 1);
    // The outsider's connection and the client's relayed one both went through inbound.
    assert_eq!(counter(&restarted, &t.server, "inbound_accepted"), 2);
    t.agent = restarted;
}

#[test]
fn an_overlapping_handoff_refuses_no_connection() {
    let mut t = one_node();
    t.agent.enrol(&t.client).expect("enrol client");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let mut traffic = t.client.spawn(&["loop", &t.server.addr4(8080).to_string(), "300", "5", "2048"]);
    loop {
        let p = traffic.wait_event("progress", Duration::from_secs(20));
        if p["done"].as_u64().unwrap() >= 30 {
            break;
        }
    }
    let new = Agent::start(&t.topo, &t.node);
    assert!(t.agent.terminate().success(), "old agent did not exit cleanly");
    let summary = traffic.wait_event("summary", Duration::from_secs(120));
    assert_eq!(summary["failures"], json!(0), "handoff refused connections: {summary}");
    traffic.wait(Duration::from_secs(10));
    // The old agent wrote its last lines when it exited; the new one may still hold a batch.
    let old_served = t.agent.access_logs().len();
    let new_served = new.wait_access_logs("the rest of the connections", 300 - old_served.min(300), |_| true).len();
    assert!(old_served >= 30, "old agent served {old_served}");
    assert!(new_served > 0, "new agent served nothing");
    assert_eq!(old_served + new_served, 300, "every connection was served exactly once");
    t.agent = new;
}

#[test]
fn reset_unenrols_and_unpins_everything() {
    let mut t = one_node();
    t.agent.enrol(&t.client).expect("enrol client");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let pins = std::path::Path::new("/sys/fs/bpf/pillion").join(&t.node.full);
    assert!(pins.join("links/connect4").exists());
    // Refused while the agent runs.
    let err = t.agent.cli(&["reset".into()]).unwrap_err();
    assert!(err.contains("stop it first"), "{err}");
    assert!(t.agent.terminate().success());
    t.agent.cli(&["reset".into()]).expect("reset");
    assert!(!pins.exists(), "pins left behind");
    let result = t.client.client(t.server.addr4(8080), 1000, &[]);
    assert_ok(&result, "traffic after reset goes direct");
    assert!(result["local"].as_str().unwrap().starts_with(&t.client.ip4.to_string()), "{result}");
}

#[test]
fn a_pod_that_vanished_while_the_agent_was_down_is_cleaned_up_on_restart() {
    let mut t = one_node();
    let doomed = t.topo.add_pod(&t.node, "doomed");
    t.agent.enrol(&t.client).expect("enrol client");
    t.agent.enrol(&doomed).expect("enrol doomed");
    let pin = std::path::Path::new("/sys/fs/bpf/pillion").join(&t.node.full).join("pods/default_doomed");
    assert!(pin.exists());
    t.agent.kill();
    let out = std::process::Command::new("ip").args(["netns", "del", &doomed.full]).output().unwrap();
    assert!(out.status.success());

    let restarted = Agent::start(&t.topo, &t.node);
    let pods = restarted.status()["pods"].clone();
    let names: Vec<&str> = pods.as_array().unwrap().iter().filter_map(|p| p["pod"]["name"].as_str()).collect();
    assert_eq!(names, vec!["client"], "the vanished pod is still listed");
    assert!(!pin.exists(), "the vanished pod's sk_lookup pin was left behind");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "the other pod still works");
    t.agent = restarted;
}
