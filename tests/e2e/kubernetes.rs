//! The agents and the waypoint in `--kubernetes` mode, as real processes in network
//! namespaces, reading the cluster from `pillion-fake-api` (the only stand-in: there is
//! no API server here): the model (pods, Services, EndpointSlices, the waypoint Gateway)
//! and the waypoint's L7 objects come over HTTP list/watch, and changes arrive live.

use std::time::Duration;

use pillion_e2e::kube::{self, AUTHZ, FakeApiServer, ROUTES, waypoint_scene_objects};
use pillion_e2e::{Agent, AgentOptions, Topology, Waypoint, WaypointPods};
use serde_json::{Value, json};

use crate::assert_ok;

fn requests(client: &pillion_e2e::Pod, count: u64, path: &str) -> Value {
    let r = client.run(&["http-requests", "10.96.0.1:80", &count.to_string(), path]);
    assert_ok(&r, "http-requests");
    r
}

/// Repeats `requests` (bounded) until `f` holds for a batch: changes reach the waypoint
/// through a watch, a moment after the API server took them.
fn until(client: &pillion_e2e::Pod, what: &str, count: u64, path: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = requests(client, count, path);
        if f(&r) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}; last: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agents_and_waypoint_follow_the_cluster_through_the_api() {
    let topo = Topology::new();
    let WaypointPods { a: na, b: nb, client, wp, v1, v2 } = WaypointPods::add(&topo);
    let objects = waypoint_scene_objects((&client, &na), (&wp, &nb), (&v1, &nb), (&v2, &nb));
    let mut api = FakeApiServer::start(&topo, &na, &objects);

    let opts = AgentOptions {
        extra_args: vec!["--kubernetes".into()],
        ca_dir: Some(topo.ca_dir()),
        env: api.env(),
        ..Default::default()
    };
    let a = Agent::start_with(&topo, &na, &opts);
    let b = Agent::start_with(&topo, &nb, &opts);
    // What the CNI plugin does in a cluster (tested on its own in `cni`).
    a.enrol_as(&client, "web", "client-0").expect("enrol client");
    for (p, name) in [(&v1, "reviews-v1-0"), (&v2, "reviews-v2-0")] {
        b.enrol_as(p, "shop", name).expect("enrol backend");
    }
    let mut backends = Vec::new();
    for (pod, name) in [(&v1, "v1"), (&v2, "v2")] {
        let s = pod.spawn(&["http-backend", "[::]:8080", name, ""]);
        s.wait_event("ready", Duration::from_secs(10));
        backends.push(s);
    }
    let _waypoint = Waypoint::start_kube(&topo, &wp, "waypoint-0", "shop", "waypoint", &api.env());

    // The 90/10 split of the HTTPRoute the waypoint listed, through both agents.
    let r = requests(&client, 400, "/");
    assert_eq!(r["statuses"], json!({"200": 400}), "{r}");
    let v1_share = r["backends"]["v1"].as_u64().unwrap_or(0) as f64 / 400.0;
    assert!((0.84..=0.96).contains(&v1_share), "90/10 split landed at {v1_share:.3} for v1: {r}");
    // Identities come from the pods' service accounts in the API.
    a.wait_access_log("to the waypoint", |v| {
        v["src.identity"] == json!("spiffe://cluster.local/ns/web/sa/client")
            && v["dst.identity"] == json!("spiffe://cluster.local/ns/shop/sa/waypoint")
    });
    // The waypoint keeps its connections to the backends open for reuse, and agents write
    // an access-log line when a connection ends: agent b's metrics count them at open.
    let from_waypoint =
        [("reporter", "destination"), ("source_principal", "spiffe://cluster.local/ns/shop/sa/waypoint")];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, m) = topo.http_get(&b.node, "127.0.0.1:15020", "/metrics");
        assert_eq!(status, 200, "{m}");
        let opened = crate::mesh::series(&m, "istio_tcp_connections_opened_total", &from_waypoint).unwrap_or(0.0);
        if opened >= 1.0 {
            assert!(opened < 400.0, "{opened} connections from the waypoint for 400 requests: not pooled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "agent b counted no connection from the waypoint:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The listed AuthorizationPolicy denies /admin at L7.
    let forbidden = requests(&client, 1, "/admin");
    assert_eq!(forbidden["statuses"], json!({"403": 1}), "{forbidden}");

    // A changed route arrives by watch: everything to v2.
    api.apply(ROUTES, kube::split_route(0, 100));
    until(&client, "all traffic on v2", 20, "/", |r| r["backends"]["v2"] == json!(20));

    // A policy that cannot be read is enforced as deny-all on its target.
    api.apply(AUTHZ, kube::deny_paths("typo", json!("/report")));
    until(&client, "deny-all from the bad policy", 5, "/", |r| r["statuses"] == json!({"403": 5}));
    api.delete(AUTHZ, kube::deny_paths("typo", json!([])));
    until(&client, "allowed again once it is gone", 5, "/", |r| r["statuses"] == json!({"200": 5}));
}
