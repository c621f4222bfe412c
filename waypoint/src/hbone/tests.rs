//! End to end over real HBONE on loopback: a client tunnel (mesh pool, embedded CA) to the
//! waypoint's HBONE server, HTTP inside, routed and re-tunnelled with the waypoint's
//! identity to the endpoint's HBONE server, which dials a real HTTP backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use mesh::ca::EmbeddedCa;
use mesh::certs::{CertManager, CertManagerConfig, CertMetrics};
use mesh::clock::SystemClock;
use mesh::hbone::{
    Accepted, ConnectHook, ConnectRequest, DirectTcpDialer, HboneServer, Pool, PoolConfig, PoolKey, Refusal,
    TcpUpstream, Tunnel, TunnelRequest,
};
use mesh::{Authority, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{WaypointDialer, WaypointHook};
use crate::proxy::{Proxy, ProxyConfig, Snapshot};
use crate::route::ServiceKey;
use crate::telemetry::{RequestMetrics, TcpMetrics, tcp_labels};
use crate::upstream::HboneUpstream;

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

/// The endpoint's HBONE server admits everyone (the agent's checks are tested there) and
/// records what it saw.
#[derive(Default)]
struct AllowAll {
    seen: std::sync::Mutex<Vec<ConnectRequest>>,
}

#[async_trait]
impl ConnectHook for AllowAll {
    async fn authorize(&self, r: &ConnectRequest) -> Result<Accepted, Refusal> {
        self.seen.lock().unwrap().push(r.clone());
        Ok(Accepted::default())
    }
}

/// The test client as the waypoint's metrics name it (no pod of its own in the model).
fn client_peer() -> mesh::telemetry::Peer {
    mesh::telemetry::Peer { namespace: Some("web".into()), ..mesh::telemetry::Peer::unknown() }
        .identity(&id("web", "client"))
}

/// The reviews endpoint as the metrics name it.
fn reviews_peer() -> mesh::telemetry::Peer {
    mesh::telemetry::Peer::workload("reviews-0", "shop")
        .pod_labels([("app", "reviews")])
        .identity(&id("shop", "reviews"))
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// An HTTP/1.1 backend on `ip` answering `backend <path> parent=<traceparent>`.
async fn http_backend(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                if let Some(proto) = req.headers().get("upgrade").cloned() {
                    // An upgrade: switch, then echo whatever comes.
                    let key = req.headers().contains_key("sec-websocket-key");
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(io) = on.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                    });
                    let r = Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", proto)
                        .header("x-saw-key", key.to_string())
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    return Ok::<_, Infallible>(r);
                }
                let tp = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                let mut text = format!("backend {} parent={tp}", req.uri().path());
                if req.method() == http::Method::POST {
                    // Uploads: say how the body came and how much of it.
                    let cl = req.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
                    let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                    text = format!("uploaded {n:?} content-length={cl:?}");
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).with_upgrades(),
            );
        }
    });
    addr
}

async fn tcp_echo() -> SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn config(http_port: u16, echo_port: u16, legacy_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/use-waypoint: waypoint}}}}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {{name: waypoint-0, namespace: shop, labels: {{app: waypoint, istio.io/use-waypoint: none}}}}
spec: {{serviceAccount: waypoint, ips: [127.0.0.2], node: n}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {{name: waypoint, namespace: shop, labels: {{istio.io/use-waypoint: none}}}}
spec: {{clusterIPs: [10.96.9.1], ports: [{{port: 15008}}], selector: {{app: waypoint}}}}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {{name: reviews-0, namespace: shop, labels: {{app: reviews}}}}
spec: {{serviceAccount: reviews, ips: [127.0.0.1], node: n}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIPs: [10.96.0.1]
  ports: [{{name: http, port: 80, targetPort: {http_port}}}, {{name: tcp-raw, port: 90, targetPort: {echo_port}}}]
  selector: {{app: reviews}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews, port: 80}}]
  rules:
  - backendRefs: [{{name: reviews, port: 80}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-via, value: waypoint}}]}}}}]
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {{name: legacy-0, namespace: shop, labels: {{app: legacy}}}}
spec: {{ips: [127.0.0.3], node: n, protocol: NONE}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {{name: legacy, namespace: shop}}
spec: {{clusterIPs: [10.96.0.3], ports: [{{name: http, port: 80, targetPort: {legacy_port}}}], selector: {{app: legacy}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: legacy, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: legacy}}]
  rules: [{{backendRefs: [{{name: legacy, port: 80}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["80"], paths: ["/admin*"]}}}}]}}]
"#
    )
}

struct Mesh {
    client: Pool<DirectTcpDialer>,
    waypoint: SocketAddr,
    metrics: RequestMetrics,
    echo_port: u16,
    http_port: u16,
    tcp: TcpMetrics,
    endpoint: Arc<AllowAll>,
    /// The waypoint's pooled connections to endpoints.
    upstreams: crate::upstream::Clients,
    _stop: tokio_util::sync::DropGuard,
}

async fn mesh() -> Mesh {
    mesh_with("").await
}

/// The mesh with `extra` YAML documents added to the configuration.
async fn mesh_with(extra: &str) -> Mesh {
    let stop = CancellationToken::new();
    let (ca, _) = EmbeddedCa::generate(TD, SystemClock::shared()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let certs = CertManager::new(Arc::new(ca), CertManagerConfig::default(), CertMetrics::register(&mut registry));

    let (http_port, echo_port) = (http_backend([127, 0, 0, 1]).await.port(), tcp_echo().await.port());
    let legacy_port = http_backend([127, 0, 0, 3]).await.port();
    // The endpoint's HBONE server (its agent), dialling the backends as targets.
    let (l, endpoint_hbone) = listener().await;
    let endpoint = Arc::new(AllowAll::default());
    let server = HboneServer::builder((certs.clone(), id("shop", "reviews")), endpoint.clone(), TcpUpstream).build();
    tokio::spawn(server.serve(l, stop.clone()));

    let text = config(http_port, echo_port, legacy_port)
        + &extra.replace("{HTTP_PORT}", &http_port.to_string()).replace("{ECHO_PORT}", &echo_port.to_string());
    let snapshot = Snapshot {
        model: Arc::new(mesh::config::parse(&text, "e2e.yaml", 1).unwrap()),
        l7: Arc::new(crate::config::parse(&text, "e2e.yaml", "cluster.local").unwrap()),
    };
    let pool = Pool::new(PoolConfig::default(), DirectTcpDialer, Arc::new(certs.clone()));
    let mut upstream = HboneUpstream::new(pool, id("shop", "waypoint"), "shop/waypoint-0");
    upstream.hbone_port = endpoint_hbone.port();
    let metrics = RequestMetrics::default();
    let proxy = Arc::new(
        Proxy::new(ProxyConfig::new(ServiceKey::new("shop", "waypoint")), snapshot, Arc::new(upstream.clone()))
            .with_metrics(metrics.clone()),
    );
    let (l, waypoint) = listener().await;
    let upstreams = upstream.clients.clone();
    let mut dialer = WaypointDialer::new(proxy.clone(), upstream);
    let tcp = TcpMetrics::default();
    dialer.tcp_metrics = Some(tcp.clone());
    let server = HboneServer::builder((certs.clone(), id("shop", "waypoint")), WaypointHook { proxy }, dialer).build();
    tokio::spawn(server.serve(l, stop.clone()));

    let client = Pool::new(PoolConfig::default(), DirectTcpDialer, Arc::new(certs));
    Mesh { client, waypoint, metrics, echo_port, http_port, tcp, endpoint, upstreams, _stop: stop.drop_guard() }
}

impl Mesh {
    async fn tunnel(&self, target: &str) -> Result<Tunnel, mesh::hbone::HboneError> {
        let key = PoolKey {
            src_pod: "client".into(),
            src_identity: id("web", "client"),
            dst_identity: id("shop", "waypoint"),
            dst: self.waypoint,
        };
        self.client.connect(key, TunnelRequest::new(Authority::parse(target).unwrap())).await
    }

    async fn get(&self, path: &str) -> (u16, Option<String>, String) {
        self.get_from("reviews", path).await
    }

    async fn get_from(&self, service: &str, path: &str) -> (u16, Option<String>, String) {
        self.request(&format!("{service}.shop.svc.cluster.local:80"), path, "reviews.shop.svc.cluster.local").await
    }

    /// A GET with `host` over a tunnel to `target`.
    async fn request(&self, target: &str, path: &str, host: &str) -> (u16, Option<String>, String) {
        let tunnel = self.tunnel(target).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let r = send.send_request(req).await.unwrap();
        let status = r.status().as_u16();
        let via = r.headers().get("x-via").map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, via, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("timed out")
}

#[tokio::test]
async fn http_through_the_waypoint_over_real_hbone() {
    let m = mesh().await;
    let (status, via, body) = within(m.get("/hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(via.as_deref(), Some("waypoint"));
    assert!(body.starts_with("backend /hello parent=00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{body}");
    assert!(!body.contains("00f067aa0ba902b7"), "the waypoint is a new span: {body}");
    // The waypoint re-tunnelled with its own identity to endpointIP:targetPort.
    let seen = m.endpoint.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].peer_identity, id("shop", "waypoint"));
    assert_eq!(seen[0].target.to_string(), format!("127.0.0.1:{}", m.http_port));
    assert_eq!(seen[0].forwarded.as_deref(), Some("for=127.0.0.1"));
    assert!(seen[0].traceparent.as_deref().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));

    // L7 DENY by path, enforced in the waypoint.
    let (status, _, body) = within(m.get("/admin/x")).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    let dst = reviews_peer();
    let src = client_peer();
    let svc = mesh::telemetry::ServiceRef::new("reviews", "shop", TD);
    let labels = crate::telemetry::RequestLabels::new(&src, &dst, Some(&svc), 200, "-");
    assert_eq!(m.metrics.requests(&labels), 1);
}

#[tokio::test]
async fn a_port_without_routes_is_passed_through_at_l4() {
    let m = mesh().await;
    let mut tunnel = within(m.tunnel("reviews.shop.svc.cluster.local:90")).await.unwrap();
    tunnel.write_all(b"raw bytes, not HTTP").await.unwrap();
    let mut buf = vec![0; 19];
    within(tunnel.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, b"raw bytes, not HTTP");
    // Reported as Istio TCP metrics by the waypoint.
    let src = client_peer();
    let dst = reviews_peer();
    let svc = mesh::telemetry::ServiceRef::new("reviews", "shop", TD);
    let labels = tcp_labels(&src, &dst, Some(&svc));
    assert_eq!(labels.reporter, mesh::telemetry::Reporter::Waypoint);
    let (opened, _closed, received, sent) = m.tcp.values(&labels);
    assert_eq!((opened, received, sent), (1, 19, 19));
}

#[tokio::test]
async fn tunnels_for_unknown_services_are_refused() {
    let m = mesh().await;
    let e = within(m.tunnel("nothing.shop.svc.cluster.local:80")).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 400, .. }), "{e}");
    // An address that is neither a service nor a workload using this waypoint: never an open proxy.
    let e = within(m.tunnel("127.0.0.9:80")).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 400, .. }), "{e}");
    // The waypoint's own workload does not use a waypoint.
    let e = within(m.tunnel("127.0.0.2:80")).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 400, .. }), "{e}");
}

#[tokio::test]
async fn pod_direct_tunnels_are_relayed_to_that_workload() {
    let m = mesh().await;
    let mut tunnel = within(m.tunnel(&format!("127.0.0.1:{}", m.echo_port))).await.unwrap();
    tunnel.write_all(b"to the pod").await.unwrap();
    let mut buf = vec![0; 10];
    within(tunnel.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, b"to the pod");
}

#[tokio::test]
async fn endpoints_outside_the_mesh_are_reached_in_plaintext() {
    let m = mesh().await;
    let (status, _, body) = within(m.get_from("legacy", "/old")).await;
    assert_eq!((status, body.starts_with("backend /old")), (200, true), "{body}");
    assert!(m.endpoint.seen.lock().unwrap().is_empty(), "no HBONE tunnel to a workload outside the mesh");
}

#[tokio::test]
async fn spellings_of_a_denied_path_or_host_are_all_denied() {
    let deny_host = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-host, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: legacy}]
  action: DENY
  rules: [{to: [{operation: {hosts: ["admin.shop.svc.cluster.local"]}}]}]
"#;
    let m = mesh_with(deny_host).await;
    for path in ["/admin/x", "/%61dmin/x", "/./admin/x", "/x/../admin/x", "//admin/x", "/%2e/admin/x"] {
        let (status, _, body) = within(m.get(path)).await;
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"), "{path}");
    }
    // The backend sees the normalised path too, so it reads what the policy judged.
    let (status, _, body) = within(m.get("/x/../%7Euser/./a")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("backend /~user/a "), "{body}");
    let (status, _, _) = within(m.get("/bad%zzescape")).await;
    assert_eq!(status, 400);

    let legacy = "legacy.shop.svc.cluster.local:80";
    for host in ["admin.shop.svc.cluster.local", "ADMIN.shop.svc.cluster.local", "admin.shop.svc.cluster.local:80"] {
        let (status, _, _) = within(m.request(legacy, "/", host)).await;
        assert_eq!(status, 403, "Host: {host}");
    }
    let (status, _, _) = within(m.request(legacy, "/", "legacy.shop.svc.cluster.local:80")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_consumer_route_from_another_namespace_does_not_hijack_the_service() {
    let hijack = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hijack, namespace: evil}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, namespace: shop}]
  rules: [{matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: sink, namespace: evil, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: evil-may-not-need-this, namespace: evil}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: evil}]
  to: [{group: "", kind: Service}]
"#;
    let m = mesh_with(hijack).await;
    // The client is web/client: the evil namespace's route is not its business.
    let (status, via, body) = within(m.get("/hello")).await;
    assert_eq!((status, via.as_deref()), (200, Some("waypoint")), "{body}");
    assert!(body.starts_with("backend /hello"), "{body}");
}

#[tokio::test]
async fn pod_addressed_tunnels_are_judged_by_the_waypoints_policies() {
    // A DENY on paths, on every port: at L4 its HTTP-only field is taken as matching (Istio).
    let deny_any_port = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-anywhere, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;
    let m = mesh_with(deny_any_port).await;
    let e = within(m.tunnel(&format!("127.0.0.1:{}", m.http_port))).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 401, .. }), "{e}");
    assert!(m.endpoint.seen.lock().unwrap().is_empty(), "nothing relayed unjudged");

    // An ALLOW for another principal on the waypoint: web/client's pod-direct tunnel is refused.
    let allow_frontend = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{from: [{source: {principals: ["cluster.local/ns/web/sa/frontend"]}}]}]
"#;
    let m = mesh_with(allow_frontend).await;
    let e = within(m.tunnel(&format!("127.0.0.1:{}", m.echo_port))).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 401, .. }), "{e}");
    // The same policy naming web/client lets it through.
    let m = mesh_with(&allow_frontend.replace("sa/frontend", "sa/client")).await;
    let mut tunnel = within(m.tunnel(&format!("127.0.0.1:{}", m.echo_port))).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut buf = [0; 2];
    within(tunnel.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ok");
}

#[tokio::test]
async fn service_policies_apply_to_ports_relayed_at_l4() {
    let allow_frontend = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  rules: [{from: [{source: {principals: ["cluster.local/ns/web/sa/frontend"]}}]}]
"#;
    let m = mesh_with(allow_frontend).await;
    // Port 90 is not HTTP and has no route: relayed at L4, after the L4 reading of the policy.
    let e = within(m.tunnel("reviews.shop.svc.cluster.local:90")).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 401, .. }), "{e}");
    // An ALLOW whose rule needs HTTP attributes never matches an L4 tunnel.
    let by_path = allow_frontend.replace(
        "from: [{source: {principals: [\"cluster.local/ns/web/sa/frontend\"]}}]",
        "to: [{operation: {paths: [\"/x\"]}}]",
    );
    let m = mesh_with(&by_path).await;
    let e = within(m.tunnel("reviews.shop.svc.cluster.local:90")).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 401, .. }), "{e}");
    // Ports allowed by port number pass.
    let by_port = allow_frontend.replace(
        "from: [{source: {principals: [\"cluster.local/ns/web/sa/frontend\"]}}]",
        "to: [{operation: {ports: [\"90\"]}}]",
    );
    let m = mesh_with(&by_port).await;
    assert!(within(m.tunnel("reviews.shop.svc.cluster.local:90")).await.is_ok());
}

#[tokio::test]
async fn a_port_of_undeclared_protocol_is_detected_and_judged_either_way() {
    // `web`: one unnamed port on the reviews pods with a path DENY; `echo`: an unnamed port on
    // the TCP echo whose policy only denies another namespace.
    let web = |app_protocol: &str| {
        format!(
            r#"
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIPs: [10.96.0.7]
  ports: [{{port: 8080, targetPort: {{HTTP_PORT}}{app_protocol}}}]
  selector: {{app: reviews}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin-web, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  clusterIPs: [10.96.0.8]
  ports: [{{port: 9000, targetPort: {{ECHO_PORT}}}}]
  selector: {{app: reviews}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: not-them, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: echo}}]
  action: DENY
  rules: [{{from: [{{source: {{namespaces: [nobody]}}}}], to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
        )
    };
    let target = "web.shop.svc.cluster.local:8080";
    for declared in [", appProtocol: http", ""] {
        // Declared HTTP, or nothing declared: the first bytes are HTTP; judged per request.
        let m = mesh_with(&web(declared)).await;
        let (status, _, body) = within(m.request(target, "/hello", "web")).await;
        assert_eq!(status, 200, "{declared:?}: {body}");
        let (status, _, _) = within(m.request(target, "/admin/x", "web")).await;
        assert_eq!(status, 403, "{declared:?}: judged per request");
        // Measured as requests, never as a TCP connection too.
        let src = client_peer();
        let dst = reviews_peer();
        let svc = mesh::telemetry::ServiceRef::new("web", "shop", TD);
        assert_eq!(m.tcp.values(&tcp_labels(&src, &dst, Some(&svc))).0, 0);
    }
    // Declared as something else: relayed at L4, where the path DENY denies the whole tunnel.
    let m = mesh_with(&web(", appProtocol: tcp")).await;
    let e = within(m.tunnel(target)).await.unwrap_err();
    assert!(matches!(e, mesh::hbone::HboneError::Refused { status: 401, .. }), "{e}");

    // Not HTTP (a TLS-like first record) on an undeclared port: relayed at L4 when allowed...
    let m = mesh_with(&web("")).await;
    let hello = b"\x16\x03\x01\x00\x05hello";
    let mut t = within(m.tunnel("echo.shop.svc.cluster.local:9000")).await.unwrap();
    t.write_all(hello).await.unwrap();
    let mut back = [0u8; 10];
    within(t.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, hello);
    // Measured as a TCP connection while it is open.
    let src = client_peer();
    let dst = reviews_peer();
    let svc = mesh::telemetry::ServiceRef::new("echo", "shop", TD);
    let (opened, _, received, sent) = m.tcp.values(&tcp_labels(&src, &dst, Some(&svc)));
    assert_eq!((opened, received, sent), (1, 10, 10));
    // ...and cut when the L4 reading of the policies refuses it.
    let mut t = within(m.tunnel(target)).await.unwrap();
    t.write_all(hello).await.unwrap();
    let mut got = Vec::new();
    let read = within(t.read_to_end(&mut got)).await;
    assert!(read.is_err() || got.is_empty(), "nothing relayed: {got:?}");
}

#[tokio::test]
async fn requests_reuse_pooled_connections_to_the_endpoint() {
    let m = mesh().await;
    for i in 0..10 {
        let (status, _, body) = within(m.get(&format!("/n{i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    // One tunnel per request before pooling. A connection goes back to the pool just after
    // its response ends, so a request may rarely find it not back yet.
    let opened = m.upstreams.opened();
    assert!((1..=2).contains(&opened), "10 requests opened {opened} connections to the endpoint");
}

/// An upload over a tunnel to the waypoint: `chunks` of `size` bytes, with a
/// `Content-Length` or chunked.
async fn upload(m: &Mesh, chunks: usize, size: usize, sized: bool) -> (u16, String) {
    let tunnel = m.tunnel("reviews.shop.svc.cluster.local:80").await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel)).await.unwrap();
    tokio::spawn(conn);
    let frames = (0..chunks).map(move |_| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![7u8; size]))));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut req = Request::post("/upload").header("host", "reviews.shop.svc.cluster.local");
    if sized {
        req = req.header("content-length", chunks * size);
    }
    let r = send.send_request(req.body(body).unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn large_uploads_stream_through_with_their_length_or_chunked() {
    let m = mesh().await;
    // 24 MiB: six times the old 4 MiB cap (which answered 413), in 64 KiB writes.
    let (status, body) = within(upload(&m, 384, 64 << 10, true)).await;
    assert_eq!((status, body.as_str()), (200, "uploaded Ok(25165824) content-length=Some(\"25165824\")"));
    let (status, body) = within(upload(&m, 100, 10_000, false)).await;
    assert_eq!((status, body.as_str()), (200, "uploaded Ok(1000000) content-length=None"), "chunked stays chunked");
}

/// Writes `msg` on an upgraded stream and reads it back, then closes it.
async fn echo_once(io: hyper::upgrade::Upgraded, msg: &[u8]) -> Vec<u8> {
    let mut io = TokioIo::new(io);
    io.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    io.read_exact(&mut back).await.unwrap();
    io.shutdown().await.unwrap();
    back
}

/// Waits (bounded) until the waypoint has recorded a request with `code`: an upgraded one is
/// recorded when its relay ends.
async fn recorded(m: &Mesh, code: u16) {
    let dst = reviews_peer();
    let src = client_peer();
    let svc = mesh::telemetry::ServiceRef::new("reviews", "shop", TD);
    let labels = crate::telemetry::RequestLabels::new(&src, &dst, Some(&svc), code, "-");
    for _ in 0..200 {
        if m.metrics.requests(&labels) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no request with status {code} recorded");
}

#[tokio::test]
async fn websocket_upgrades_are_routed_then_relayed_both_ways() {
    let m = mesh().await;
    let tunnel = within(m.tunnel("reviews.shop.svc.cluster.local:80")).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/chat")
        .header("host", "reviews.shop.svc.cluster.local")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(res.headers()["upgrade"], "websocket");
    assert_eq!(res.headers()["x-via"], "waypoint", "the route's response filters applied");
    let io = within(hyper::upgrade::on(res)).await.unwrap();
    assert_eq!(within(echo_once(io, b"hello over websocket")).await, b"hello over websocket");
    within(recorded(&m, 101)).await;
    // The L7 DENY applies to upgrades as to any request.
    let (status, _, _) = within(m.get("/admin/ws")).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn http2_extended_connect_becomes_an_http1_upgrade_to_the_backend() {
    let m = mesh().await;
    let tunnel = within(m.tunnel("reviews.shop.svc.cluster.local:80")).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .unwrap();
    tokio::spawn(conn);
    let connect = || {
        let mut req = Request::builder()
            .method("CONNECT")
            .uri("http://reviews.shop.svc.cluster.local/chat")
            .version(http::Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    // The client may send only once the waypoint's SETTINGS (which enable extended CONNECT)
    // have arrived; until then h2 refuses the request locally.
    let mut res = None;
    for _ in 0..200 {
        match send.send_request(connect()).await {
            Ok(r) => {
                res = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let res = res.expect("extended CONNECT never accepted");
    assert_eq!(res.status(), 200, "RFC 8441: 200 for an established tunnel");
    assert_eq!(res.headers()["x-saw-key"], "true", "the backend got a WebSocket key for its HTTP/1.1 handshake");
    let io = within(hyper::upgrade::on(res)).await.unwrap();
    assert_eq!(within(echo_once(io, b"frames over h2")).await, b"frames over h2");
    within(recorded(&m, 200)).await;
}
