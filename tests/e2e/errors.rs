//! Bad input gets one clear error and leaves everything else working.

use pillion_e2e::{Agent, AgentOptions};
use serde_json::json;

use crate::{assert_ok, counter, one_node};

#[test]
fn bad_enrolment_requests_get_clear_errors_and_leave_other_pods_working() {
    let t = one_node();
    t.agent.enrol(&t.client).expect("enrol client");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    let base = |name: &str, netns: &str| -> Vec<String> {
        ["enrol", "--name", name, "--netns", netns, "--ip", "10.9.9.9"].iter().map(|s| s.to_string()).collect()
    };
    let not_a_netns = t.topo.tmp.join("plain-file");
    std::fs::write(&not_a_netns, b"x").unwrap();
    let node_netns = t.node.netns_path().display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base("ghost", "/var/run/netns/does-not-exist-pillion"), "cannot be opened"),
        (base("file", &not_a_netns.display().to_string()), "is not a network namespace"),
        (base("host", &format!("/proc/{}/ns/net", std::process::id())), "host's network namespace"),
        (base("agent", &node_netns), "agent's own network namespace"),
        (base("Bad_Name", &t.server.netns_path().display().to_string()), "invalid pod name"),
        ([base("dup", &t.client.netns_path().display().to_string())].concat(), "already belongs to enrolled pod"),
        ([base("client", &t.server.netns_path().display().to_string())].concat(), "already enrolled"),
        (
            [
                base("escaped", &t.server.netns_path().display().to_string()),
                vec!["--cgroup".into(), t.node.agent_cgroup.display().to_string()],
            ]
            .concat(),
            "outside the capture root",
        ),
    ];
    for (args, want) in cases {
        let err = t.agent.cli(&args).expect_err(&format!("{args:?} was accepted"));
        assert!(err.contains(want), "{args:?}: error {err:?} does not say {want:?}");
    }
    for (line, want) in [
        ("{not json", "malformed request"),
        (r#"{"op":"enrol","pod":{"name":"x"}}"#, "malformed request"),
        (r#"{"op":"selfdestruct"}"#, "malformed request"),
    ] {
        let reply = t.agent.call_raw(line);
        assert_eq!(reply["ok"], json!(false), "{line}");
        assert!(reply["error"].as_str().unwrap().contains(want), "{line}: {reply}");
    }
    // Nothing half-enrolled, and the good pod still works.
    assert_eq!(t.agent.status()["pods"].as_array().map(Vec::len), Some(1));
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "enrolled pod after bad requests");
    assert_eq!(counter(&t.agent, &t.client, "outbound_accepted"), 1);
}

#[test]
fn agent_start_up_errors_are_clear() {
    let t = one_node();
    let plain = t.topo.tmp.join("not-a-cgroup");
    std::fs::create_dir_all(&plain).unwrap();
    let opts = AgentOptions { cgroup_root: Some(plain), ..Default::default() };
    let (status, log) = Agent::start_expecting_failure(&t.topo, &t.node, &opts);
    assert!(!status.success());
    assert!(log.contains("not a cgroup v2 directory"), "{log}");

    let file = t.topo.tmp.join("bpffs-is-a-file");
    std::fs::write(&file, b"x").unwrap();
    let opts = AgentOptions { extra_args: vec!["--bpffs".into(), file.display().to_string()], ..Default::default() };
    let (status, log) = Agent::start_expecting_failure(&t.topo, &t.node, &opts);
    assert!(!status.success());
    assert!(log.contains("is not a bpffs mount"), "{log}");

    let opts = AgentOptions { uid: Some(65534), ..Default::default() };
    let (status, log) = Agent::start_expecting_failure(&t.topo, &t.node, &opts);
    assert!(!status.success());
    assert!(log.contains("needs root"), "{log}");

    // The running agent was not disturbed by the failed ones.
    t.agent.enrol(&t.client).expect("enrol after failed starts");
    let _app = t.server.echo_server("[::]:8080".parse().unwrap(), None);
    assert_ok(&t.client.client(t.server.addr4(8080), 1000, &[]), "capture still works");
}
