//! The waypoint in the real data path: client pod → its agent (captured) →
//! HBONE to the waypoint → HTTP routing, retries, timeouts, L7 policy →
//! HBONE to the chosen backend → the backend's agent → the backend pod.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use pillion_e2e::{Agent, AgentOptions, Node, Pod, Topology, locate_binary, schedule_fails, workload_yaml};
use serde_json::{Value, json};

use crate::assert_ok;

const SEED: u64 = 7;
const FAIL_PCT: u64 = 30;

/// `ns`-scoped YAML for the scene: a waypoint fronting `reviews` (v1/v2 split,
/// a slow path, an L7 DENY) and `flaky` (retries within a budget).
fn config(
    client: (&Pod, &Node),
    wp: (&Pod, &Node),
    v1: (&Pod, &Node),
    v2: (&Pod, &Node),
    flaky: (&Pod, &Node),
) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}\n---\n",
    );
    y += "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\n";
    y += &workload_yaml("client", "client", "web", client.0, client.1, "app: client");
    y += &workload_yaml("waypoint-0", "waypoint", "shop", wp.0, wp.1, "app: waypoint, istio.io/use-waypoint: none");
    y += &workload_yaml("reviews-v1-0", "reviews", "shop", v1.0, v1.1, "app: reviews, version: v1");
    y += &workload_yaml("reviews-v2-0", "reviews", "shop", v2.0, v2.1, "app: reviews, version: v2");
    y += &workload_yaml("flaky-0", "flaky", "shop", flaky.0, flaky.1, "app: flaky");
    y += r#"apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: waypoint, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIPs: [10.96.9.1], ports: [{name: mesh, port: 15008}], selector: {app: waypoint}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIPs: [10.96.0.1], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: reviews}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec: {clusterIPs: [10.96.0.2], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: reviews, version: v1}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {clusterIPs: [10.96.0.3], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: reviews, version: v2}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: flaky, namespace: shop}
spec: {clusterIPs: [10.96.0.4], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: flaky}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    backendRefs: [{name: reviews-v1, port: 80}]
    timeouts: {request: 500ms}
  - backendRefs:
    - {name: reviews-v1, port: 80, weight: 90}
    - {name: reviews-v2, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 80}]
  rules:
  - backendRefs: [{name: flaky, port: 80}]
    retry: {attempts: 3, codes: [503], backoff: 1ms}
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: flaky-budget, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: flaky}]
  retryConstraint:
    budget: {percent: 60, interval: 10s}
    minRetryRate: {count: 5, interval: 1s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
---
"#;
    y
}

struct Scene {
    _waypoint: WaypointProc,
    _backends: Vec<pillion_e2e::Spawned>,
    a: Agent,
    b: Agent,
    client: Pod,
    wp: Pod,
    flaky: Pod,
    topo: Topology,
}

struct WaypointProc(Child);

impl Drop for WaypointProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scene() -> Scene {
    let topo = Topology::new();
    let na = topo.add_node("a");
    let nb = topo.add_node("b");
    topo.connect_nodes(&na, &nb);
    let client = topo.add_pod(&na, "client");
    let wp = topo.add_pod(&nb, "waypoint");
    let v1 = topo.add_pod(&nb, "reviews-v1");
    let v2 = topo.add_pod(&nb, "reviews-v2");
    let flaky = topo.add_pod(&nb, "flaky");
    let cfg =
        topo.write_config("mesh.yaml", &config((&client, &na), (&wp, &nb), (&v1, &nb), (&v2, &nb), (&flaky, &nb)));
    let opts = AgentOptions { config: Some(cfg.clone()), ca_dir: Some(topo.ca_dir()), ..Default::default() };
    let a = Agent::start_with(&topo, &na, &opts);
    let b = Agent::start_with(&topo, &nb, &opts);
    a.enrol(&client).expect("enrol client");
    // The waypoint pod is not captured (istio.io/dataplane-mode=none in Kubernetes terms).
    for p in [&v1, &v2, &flaky] {
        b.enrol(p).expect("enrol backend");
    }
    let mut backends = Vec::new();
    for (pod, name, extra) in [
        (&v1, "v1", "slow-path-ms=3000".to_string()),
        (&v2, "v2", "slow-path-ms=3000".to_string()),
        (&flaky, "flaky", format!("fail={SEED}:{FAIL_PCT}")),
    ] {
        let b = pod.spawn(&["http-backend", "[::]:8080", name, &extra]);
        b.wait_event("ready", Duration::from_secs(10));
        backends.push(b);
    }
    let log = std::fs::File::create(topo.tmp.join("waypoint.log")).unwrap();
    let child = wp
        .command(locate_binary("pillion-waypoint", "PILLION_WAYPOINT_BIN"))
        .args(["run", "--name", "waypoint-0", "--namespace", "shop", "--config"])
        .arg(&cfg)
        .arg("--ca-dir")
        .arg(topo.ca_dir())
        .env("PILLION_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start pillion-waypoint");
    let waypoint = WaypointProc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = wp.run(&["http-get", "127.0.0.1:15021", "/healthz/ready"]);
        if r["status"] == json!(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waypoint not ready: {r}\n{}",
            std::fs::read_to_string(topo.tmp.join("waypoint.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Scene { _waypoint: waypoint, _backends: backends, a, b, client, wp, flaky, topo }
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
    assert!(s.topo.tmp.join("waypoint.log").exists());
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
