//! YAML and processes for the waypoint scene, shared by the e2e tests and
//! `cargo xtask demo`.

use crate::{Node, Pod, Topology, workload_yaml};

/// The waypoint scene's nodes and pods: `client` on node a; `waypoint`, `reviews-v1` and
/// `reviews-v2` on node b; the nodes joined by a link.
pub struct WaypointPods {
    pub a: Node,
    pub b: Node,
    pub client: Pod,
    pub wp: Pod,
    pub v1: Pod,
    pub v2: Pod,
}

impl WaypointPods {
    pub fn add(topo: &Topology) -> WaypointPods {
        let a = topo.add_node("a");
        let b = topo.add_node("b");
        topo.connect_nodes(&a, &b);
        let client = topo.add_pod(&a, "client");
        let wp = topo.add_pod(&b, "waypoint");
        let v1 = topo.add_pod(&b, "reviews-v1");
        let v2 = topo.add_pod(&b, "reviews-v2");
        WaypointPods { a, b, client, wp, v1, v2 }
    }
}

/// The waypoint scene: namespace `shop` behind waypoint `waypoint-0`, fronting
/// `reviews` at 10.96.0.1:80 (a 90/10 split over `reviews-v1`/`reviews-v2`, a
/// `/slow` route with a 500 ms timeout, an L7 DENY of `/admin`) and `flaky` at
/// 10.96.0.4:80 (3 attempts on 503 within a 60% retry budget), and the gRPC Service `echo`
/// at 10.96.0.5:9090 (the `flaky` pod's port 9090, a GRPCRoute for `pillion.test.Echo`);
/// `near` (10.96.0.6:80, `trafficDistribution: PreferClose`) and `far` (10.96.0.7:80, no
/// preference), both backed by `reviews-v1-0` (the waypoint's node) and `web/client` (the
/// other node), port 8080, served at L7 (the waypoint's policy binds them; no route); `client`
/// in `web`.
pub fn waypoint_scene_yaml(
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
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {clusterIPs: [10.96.0.5], ports: [{name: grpc, port: 9090, targetPort: 9090}], selector: {app: flaky}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - matches: [{method: {service: pillion.test.Echo}}]
    backendRefs: [{name: echo, port: 9090}]
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: near, namespace: shop}
spec: {clusterIPs: [10.96.0.6], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [reviews-v1-0, web/client], trafficDistribution: PreferClose}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: far, namespace: shop}
spec: {clusterIPs: [10.96.0.7], ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [reviews-v1-0, web/client]}
---
"#;
    y
}

/// A running `pillion-waypoint` inside a pod (not enrolled: a waypoint's own
/// traffic is not captured). Killed on drop.
pub struct Waypoint {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Waypoint {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the waypoint for workload `shop/<name>` and waits until ready.
    pub fn start(topo: &Topology, pod: &Pod, name: &str, namespace: &str, config: &std::path::Path) -> Waypoint {
        let args = ["--config".into(), config.display().to_string()];
        Self::start_with(topo, pod, name, namespace, &args, &[])
    }

    /// Starts the waypoint in `--kubernetes` mode (its Service `service`), with `env`
    /// naming the API server, and waits until ready.
    pub fn start_kube(
        topo: &Topology,
        pod: &Pod,
        name: &str,
        namespace: &str,
        service: &str,
        env: &[(String, String)],
    ) -> Waypoint {
        let args = ["--kubernetes".into(), "--waypoint-service".into(), service.to_owned()];
        Self::start_with(topo, pod, name, namespace, &args, env)
    }

    fn start_with(
        topo: &Topology,
        pod: &Pod,
        name: &str,
        namespace: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Waypoint {
        let log = topo.tmp.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("waypoint log");
        let child = pod
            .command(crate::locate_binary("pillion-waypoint", "PILLION_WAYPOINT_BIN"))
            .args(["run", "--name", name, "--namespace", namespace])
            .args(args)
            .arg("--ca-dir")
            .arg(topo.ca_dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PILLION_LOG", "info")
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start pillion-waypoint (cargo build --workspace builds it)");
        let waypoint = Waypoint { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = pod.run(&["http-get", "127.0.0.1:15021", "/healthz/ready"]);
            if r["status"] == serde_json::json!(200) {
                return waypoint;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waypoint not ready: {r}\n{}",
                std::fs::read_to_string(&waypoint.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
