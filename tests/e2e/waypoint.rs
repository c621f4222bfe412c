//! The waypoint in the real data path: client pod → its agent (captured) →
//! HBONE to the waypoint → HTTP routing, retries, timeouts, L7 policy →
//! HBONE to the chosen backend → the backend's agent → the backend pod.

use std::time::Duration;

use pillion_e2e::{Agent, AgentOptions, Pod, Topology, Waypoint, WaypointPods, schedule_fails, waypoint_scene_yaml};
use serde_json::{Value, json};

use crate::assert_ok;

const SEED: u64 = 7;
const FAIL_PCT: u64 = 30;

struct Scene {
    waypoint: Waypoint,
    _backends: Vec<pillion_e2e::Spawned>,
    a: Agent,
    b: Agent,
    client: Pod,
    wp: Pod,
    flaky: Pod,
    v1: Pod,
    v2: Pod,
    _topo: Topology,
}

fn scene() -> Scene {
    let topo = Topology::new();
    let WaypointPods { a: na, b: nb, client, wp, v1, v2 } = WaypointPods::add(&topo);
    let flaky = topo.add_pod(&nb, "flaky");
    let cfg = topo.write_config(
        "mesh.yaml",
        &waypoint_scene_yaml((&client, &na), (&wp, &nb), (&v1, &nb), (&v2, &nb), (&flaky, &nb)),
    );
    let opts = AgentOptions { config: Some(cfg.clone()), ca_dir: Some(topo.ca_dir()), ..Default::default() };
    let a = Agent::start_with(&topo, &na, &opts);
    let b = Agent::start_with(&topo, &nb, &opts);
    a.enrol_as(&client, "web", "client").expect("enrol client");
    // The waypoint pod is not captured (istio.io/dataplane-mode=none in Kubernetes terms).
    for (p, name) in [(&v1, "reviews-v1-0"), (&v2, "reviews-v2-0"), (&flaky, "flaky-0")] {
        b.enrol_as(p, "shop", name).expect("enrol backend");
    }
    let mut backends = Vec::new();
    for (pod, name, extra) in [
        (&v1, "v1", "slow-path-ms=3000".to_string()),
        (&v2, "v2", "slow-path-ms=3000".to_string()),
        (&flaky, "flaky", format!("fail={SEED}:{FAIL_PCT} fail-uploads-over={}", 1 << 20)),
    ] {
        let args: Vec<&str> = ["http-backend", "[::]:8080", name].into_iter().chain(extra.split(' ')).collect();
        let b = pod.spawn(&args);
        b.wait_event("ready", Duration::from_secs(10));
        backends.push(b);
    }
    let waypoint = Waypoint::start(&topo, &wp, "waypoint-0", "shop", &cfg);
    Scene { waypoint, _backends: backends, a, b, client, wp, flaky, v1, v2, _topo: topo }
}

fn requests(s: &Scene, vip: &str, count: u64, path: &str) -> Value {
    let r = s.client.run(&["http-requests", vip, &count.to_string(), path]);
    assert_ok(&r, "http-requests");
    r
}

#[test]
fn the_waypoint_splits_90_10_cuts_slow_requests_and_denies_by_path() {
    let s = scene();
    let r = requests(&s, "10.96.0.1:80", 2000, "/");
    assert_eq!(r["statuses"], json!({"200": 2000}), "{r}");
    let v1 = r["backends"]["v1"].as_u64().unwrap_or(0) as f64 / 2000.0;
    assert!((0.87..=0.93).contains(&v1), "90/10 split landed at {v1:.3} for v1: {r}");
    // The backend's connection comes from the waypoint; the client pod is named in
    // X-Forwarded-For, as Envoy's waypoint does.
    let seen: Value = serde_json::from_str(r["last_body"].as_str().unwrap()).unwrap();
    let xff = format!("x-forwarded-for={}", s.client.ip4);
    assert!(seen["headers"].as_array().unwrap().iter().any(|h| h == &json!(xff)), "{seen}");
    // The waypoint pooled its connections to the backends: a handful for 2,000 requests
    // (each one a tunnel to agent b and a connection from it to the app), not one each.
    for pod in [&s.v1, &s.v2] {
        let stats = pod.run(&["http-requests", "127.0.0.1:8080", "1", "/__stats"]);
        let seen: Value = serde_json::from_str(stats["last_body"].as_str().unwrap()).unwrap();
        // One more: this stats request's own.
        assert!(seen["connections"].as_u64().unwrap() <= 5, "backend connections for 2,000 requests: {seen}");
    }
    let forbidden = requests(&s, "10.96.0.1:80", 1, "/admin");
    assert_eq!(forbidden["statuses"], json!({"403": 1}), "{forbidden}");
    // The route's 500 ms request timeout cuts a backend that takes 3 s.
    let slow = requests(&s, "10.96.0.1:80", 1, "/slow/report");
    assert_eq!(slow["statuses"], json!({"504": 1}), "{slow}");
    assert!(slow["max_ms"].as_u64().unwrap() < 2500, "the timeout did not cut the request: {slow}");
    // The agent saw the client's connection go to the waypoint over HBONE.
    s.a.wait_access_log("to the waypoint", |v| {
        v["dst.service"] == json!("reviews.shop.svc.cluster.local")
            && v["dst.identity"] == json!("spiffe://cluster.local/ns/shop/sa/waypoint")
    });
    // Backends accepted the waypoint's identity, not the client's.
    s.b.wait_access_log("from the waypoint", |v| {
        v["direction"] == "inbound" && v["src.identity"] == json!("spiffe://cluster.local/ns/shop/sa/waypoint")
    });
    let metrics = s.wp.run(&["http-get", "127.0.0.1:15020", "/metrics"]);
    let body = metrics["body"].as_str().unwrap_or_default();
    assert!(body.contains("istio_requests_total{") && body.contains("reporter=\"waypoint\""), "{body}");
    assert!(s.waypoint.log.exists());
}

#[test]
fn a_flaky_backend_is_retried_to_full_success_within_the_budget() {
    let s = scene();
    let n = 200u64;
    let r = requests(&s, "10.96.0.4:80", n, "/item");
    assert_eq!(r["statuses"], json!({"200": n}), "retries did not hide the failures: {r}");
    // Attempts the schedule implies: each request retried until its attempt succeeds.
    let (mut attempt, mut failures) = (0u64, 0u64);
    for _ in 0..n {
        loop {
            attempt += 1;
            if !schedule_fails(SEED, FAIL_PCT, attempt) {
                break;
            }
            failures += 1;
        }
    }
    assert!(failures > n / 5, "the schedule should fail about 30% of attempts, got {failures}");
    let stats = s.flaky.run(&["http-requests", "127.0.0.1:8080", "1", "/__stats"]);
    let seen: Value = serde_json::from_str(stats["last_body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["attempts"], json!(attempt), "backend attempts differ from the schedule: {seen}");
    assert_eq!(seen["failed"], json!(failures));
    // Every retry stayed inside the 60% budget (failures ≈ 30% of requests).
    assert!((failures as f64) < 0.6 * n as f64);
}

/// A `/proc/<pid>/status` figure in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("waypoint status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing"))
}

#[test]
fn large_uploads_stream_through_the_waypoint_and_are_not_retried_past_its_buffer() {
    let s = scene();
    const MIB: usize = 1 << 20;
    let peak_before = status_kib(s.waypoint.pid(), "VmHWM:");
    // Through the split route (no timeout) to a backend that checks every byte.
    let up = s.client.run(&["http-upload", "10.96.0.1:80", "/upload", &(64 * MIB).to_string()]);
    assert_eq!(up["status"], json!(200), "{up}");
    let seen: Value = serde_json::from_str(up["body"].as_str().unwrap()).unwrap();
    assert_eq!((seen["body_bytes"].clone(), seen["body_ok"].clone()), (json!(64 * MIB), json!(true)), "{seen}");
    // `flaky` retries 503 three times, and refuses uploads over 1 MiB with 503: a body past
    // the waypoint's 64 KiB retry buffer is sent once and its 503 passed on, flagged.
    let stats = || {
        let r = s.flaky.run(&["http-requests", "127.0.0.1:8080", "1", "/__stats"]);
        serde_json::from_str::<Value>(r["last_body"].as_str().unwrap()).unwrap()["attempts"].as_u64().unwrap()
    };
    let before = stats();
    let refused = s.client.run(&["http-upload", "10.96.0.4:80", "/upload", &(100 * MIB).to_string()]);
    assert_eq!(refused["status"], json!(503), "{refused}");
    assert!(refused["body"].as_str().unwrap().contains("refused an upload of 104857600 bytes"), "{refused}");
    assert_eq!(stats() - before, 1, "the upload was tried once");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&s.waypoint.log).unwrap_or_default().contains("response_flags=RBO") {
        assert!(
            std::time::Instant::now() < deadline,
            "no RBO access-log line:\n{}",
            std::fs::read_to_string(&s.waypoint.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 164 MiB went through; the waypoint's peak memory barely moved (it was 4 MiB of
    // buffered body per request, and 413 beyond).
    let grew = status_kib(s.waypoint.pid(), "VmHWM:").saturating_sub(peak_before);
    assert!(grew < 24 * 1024, "the waypoint's peak RSS grew {grew} KiB for streamed uploads");
    eprintln!(
        "uploads: 64 MiB at {} MiB/s, 100 MiB at {} MiB/s; waypoint peak RSS +{grew} KiB",
        up["mib_per_s"], refused["mib_per_s"]
    );
}

#[test]
fn a_websocket_is_routed_through_the_waypoint_and_echoed_until_it_closes() {
    let s = scene();
    let ws = s.client.run(&["ws-client", "10.96.0.1:80", "reviews.shop.svc.cluster.local", "/chat", "200"]);
    assert_eq!(ws["status"], json!(101), "{ws}");
    assert_eq!((ws["echoed"].clone(), ws["clean_close"].clone()), (json!(200), json!(true)), "{ws}");
    // One request, logged when the connection closed, with the bytes both ways
    // (200 messages of 100..20,000 bytes, plus WebSocket framing).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(&s.waypoint.log).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("path=/chat") && l.contains("response_code=101")) {
            break l.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no access-log line for the WebSocket:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let field = |k: &str| -> u64 {
        line.split_whitespace().find_map(|f| f.strip_prefix(k)?.parse().ok()).unwrap_or_else(|| panic!("{k} in {line}"))
    };
    let payload = (1..=200u64).map(|n| n * 100).sum::<u64>();
    assert!(field("bytes_received=") > payload && field("bytes_sent=") > payload, "{line}");
    // The denied path stays denied for upgrades.
    let denied = s.client.run(&["ws-client", "10.96.0.1:80", "reviews.shop.svc.cluster.local", "/admin/chat", "1"]);
    assert!(denied["error"].as_str().is_some_and(|e| e.contains("403")), "{denied}");
}

#[test]
fn grpc_calls_and_a_stream_pass_the_waypoint_and_unavailable_is_retried() {
    let s = scene();
    let backend = s.flaky.spawn(&["grpc-backend", "[::]:9090", "echo", "fail-first=1"]);
    backend.wait_event("ready", Duration::from_secs(10));
    let r = s.client.run(&["grpc-client", "10.96.0.5:9090", "20", "100"]);
    assert_eq!(r["unary_failed"], json!([]), "{r}");
    assert_eq!((r["unary_ok"].clone(), r["stream_echoed"].clone()), (json!(20), json!(100)), "{r}");
    // The first call's UNAVAILABLE (a trailers-only answer) was retried by the waypoint: the
    // client saw success, answered by the backend's second attempt.
    assert_eq!(r["attempts"][0], json!(2), "{r}");
    assert_eq!(r["attempts"][19], json!(21), "{r}");
    let metrics = s.wp.run(&["http-get", "127.0.0.1:15020", "/metrics"]);
    let body = metrics["body"].as_str().unwrap_or_default();
    let grpc_ok = body
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("destination_service_name=\"echo\""))
        .find(|l| l.contains("request_protocol=\"grpc\"") && l.contains("grpc_response_status=\"0\""));
    assert!(grpc_ok.is_some(), "no gRPC request metric with status 0:\n{body}");
}

#[test]
fn prefer_close_keeps_requests_on_the_waypoints_node() {
    let s = scene();
    // The client pod (node a) is also an endpoint of `near` and `far`; the waypoint is on b.
    let local = s.client.spawn(&["http-backend", "[::]:8080", "client-pod"]);
    local.wait_event("ready", Duration::from_secs(10));
    let near = requests(&s, "10.96.0.6:80", 40, "/");
    assert_eq!((near["statuses"].clone(), near["backends"].clone()), (json!({"200": 40}), json!({"v1": 40})), "{near}");
    // Without the preference both endpoints serve.
    let far = requests(&s, "10.96.0.7:80", 40, "/");
    assert_eq!(far["statuses"], json!({"200": 40}), "{far}");
    assert!(far["backends"]["client-pod"].as_u64().unwrap_or(0) > 0, "{far}");
}
