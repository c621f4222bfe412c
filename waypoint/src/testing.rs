//! Test support: a small mesh in YAML, a scripted [`Upstream`], and request helpers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::{Authority, Identity};

use crate::proxy::{Downstream, Proxy, ProxyConfig, Snapshot};
use crate::route::ServiceKey;
use crate::telemetry::RequestMetrics;
use crate::upstream::{BoxError, RequestBody, ResponseBody, Target, Upstream, UpstreamError};

/// Namespace `shop` uses waypoint `waypoint`; `reviews` has three endpoints (two v1, one
/// v2), `reviews-v1`/`reviews-v2` select by version, `shadow` receives mirrors.
pub const MESH: &str = r#"
apiVersion: pillion.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/use-waypoint: waypoint}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: waypoint-0, namespace: shop, labels: {app: waypoint, istio.io/use-waypoint: none}}
spec: {serviceAccount: waypoint, ips: [10.0.9.1], node: node-a}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: waypoint, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIPs: [10.96.9.1], ports: [{name: mesh, port: 15008}], selector: {app: waypoint}}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: web, labels: {app: client}}
spec: {serviceAccount: client, ips: [10.0.0.1], node: node-a}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v1-0, namespace: shop, labels: {app: reviews, version: v1}}
spec: {serviceAccount: reviews, ips: [10.0.1.1], node: node-a}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v1-1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {serviceAccount: reviews, ips: [10.0.1.2], node: node-b}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v2-0, namespace: shop, labels: {app: reviews, version: v2}}
spec: {serviceAccount: reviews, ips: [10.0.2.1], node: node-b}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: shadow-0, namespace: shop, labels: {app: shadow}}
spec: {serviceAccount: shadow, ips: [10.0.3.1], node: node-b}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIPs: [10.96.0.1], ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: reviews}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec: {clusterIPs: [10.96.0.2], ports: [{name: http, port: 80, targetPort: 8080}], selector: {version: v1}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {clusterIPs: [10.96.0.3], ports: [{name: http, port: 80, targetPort: 8080}], selector: {version: v2}}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: shadow, namespace: shop}
spec: {clusterIPs: [10.96.0.4], ports: [{name: http, port: 80, targetPort: 9090}], selector: {app: shadow}}
"#;

pub fn snapshot(extra: &str) -> Snapshot {
    let text = format!("{MESH}\n---\n{extra}");
    let model = mesh::config::parse(&text, "test.yaml", 1).unwrap_or_else(|e| panic!("model: {e}"));
    let l7 = crate::config::parse(&text, "test.yaml", "cluster.local").unwrap_or_else(|e| panic!("l7: {e}"));
    Snapshot { model: Arc::new(model), l7: Arc::new(l7) }
}

/// What a scripted backend does with one attempt.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// Answer after a (paused-time) delay.
    Slow(u16, Duration),
    /// Headers at once, the body after a delay.
    SlowBody(u16, Duration),
    ConnectFail,
    Reset,
    /// A trailers-only gRPC answer with this status.
    Grpc(u8),
}

/// How long the scripted backend takes before it reads a request at all (a slow connect),
/// when the request's path starts with `/slow-connect`.
pub const SLOW_CONNECT: Duration = Duration::from_secs(10);

/// One request a backend received.
#[derive(Debug, Clone)]
pub struct Call {
    pub target: Target,
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

type Script = dyn Fn(&Call, usize) -> Reply + Send + Sync;

/// A backend whose every reply is decided by a function of the call and its number (0-based).
pub struct Scripted {
    script: Box<Script>,
    pub calls: Mutex<Vec<Call>>,
    /// Endpoints whose connections the proxy asked to drop.
    forgotten: Mutex<Vec<std::net::SocketAddr>>,
}

impl Scripted {
    pub fn new(script: impl Fn(&Call, usize) -> Reply + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { script: Box::new(script), calls: Mutex::default(), forgotten: Mutex::default() })
    }

    pub fn ok() -> Arc<Self> {
        Self::new(|_, _| Reply::Status(200))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn forgotten(&self) -> Vec<std::net::SocketAddr> {
        self.forgotten.lock().unwrap().clone()
    }

    pub fn calls_to(&self, service: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.target.service.name == service).collect()
    }
}

#[async_trait]
impl Upstream for Scripted {
    async fn send(
        &self,
        target: &Target,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let (parts, body) = request.into_parts();
        if parts.uri.path().starts_with("/slow-connect") {
            tokio::time::sleep(SLOW_CONNECT).await;
        }
        // As a real connection: a body that breaks off fails the exchange.
        let body =
            body.collect().await.map_err(|e| UpstreamError::Reset { addr: target.addr, reason: e.to_string() })?;
        let (trailers, body) = (body.trailers().cloned(), body.to_bytes());
        let call = Call {
            target: target.clone(),
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            trailers,
        };
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(call.clone());
            calls.len() - 1
        };
        let addr = target.addr;
        let mut body_delay = None;
        let mut grpc = None;
        let status = match (self.script)(&call, n) {
            Reply::Grpc(code) => {
                grpc = Some(code);
                200
            }
            Reply::Status(s) => s,
            Reply::SlowBody(s, d) => {
                body_delay = Some(d);
                s
            }
            Reply::Slow(s, d) => {
                tokio::time::sleep(d).await;
                s
            }
            Reply::ConnectFail => return Err(UpstreamError::Connect { addr, reason: "scripted".into() }),
            Reply::Reset => return Err(UpstreamError::Reset { addr, reason: "scripted".into() }),
        };
        let text = format!("{} {}", target.service.name, call.uri.path());
        let body = match body_delay {
            None => Full::new(Bytes::from(text)).map_err(|n| -> BoxError { match n {} }).boxed_unsync(),
            Some(d) => {
                let chunk = futures::stream::once(async move {
                    tokio::time::sleep(d).await;
                    Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(text)))
                });
                http_body_util::StreamBody::new(chunk).boxed_unsync()
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("x-upstream", target.addr.to_string().parse().unwrap());
        if let Some(code) = grpc {
            r.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
            r.headers_mut().insert("grpc-status", code.to_string().parse().unwrap());
        }
        if let Some(tp) = call.headers.get("traceparent") {
            r.headers_mut().insert("x-seen-traceparent", tp.clone());
        }
        Ok(r)
    }

    fn forget(&self, addr: std::net::SocketAddr) {
        self.forgotten.lock().unwrap().push(addr);
    }
}

pub fn proxy(extra: &str, upstream: Arc<Scripted>) -> Arc<Proxy> {
    proxy_with_metrics(extra, upstream, RequestMetrics::default())
}

pub fn proxy_with_metrics(extra: &str, upstream: Arc<Scripted>, metrics: RequestMetrics) -> Arc<Proxy> {
    let config = ProxyConfig::new(ServiceKey::new("shop", "waypoint"));
    Arc::new(Proxy::new(config, snapshot(extra), upstream).with_seed(7).with_metrics(metrics))
}

pub fn client_identity() -> Identity {
    Identity::new("cluster.local", "web", "client").unwrap()
}

/// Istio's request labels for the test client calling `reviews` answered by `reviews-v2-0`
/// (the only endpoint of `reviews-v2`).
pub fn labels_to_reviews_v2(code: u16, flags: &str) -> crate::telemetry::RequestLabels {
    let source =
        mesh::telemetry::Peer::workload("client", "web").pod_labels([("app", "client")]).identity(&client_identity());
    let reviews = mesh::model::Workload::new("cluster.local", "shop", "reviews-v2-0", "reviews").unwrap();
    let destination = mesh::telemetry::Peer::workload("reviews-v2-0", "shop")
        .pod_labels([("app", "reviews"), ("version", "v2")])
        .identity(reviews.identity());
    let service = mesh::telemetry::ServiceRef::new("reviews", "shop", "cluster.local");
    crate::telemetry::RequestLabels::new(&source, &destination, Some(&service), code, flags)
}

pub fn downstream(service_host: &str) -> Downstream {
    Downstream {
        peer_identity: Some(client_identity()),
        peer_addr: "10.0.0.1:40000".parse().unwrap(),
        target: Authority::parse(service_host).unwrap(),
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn send(proxy: &Arc<Proxy>, request: Request<Full<Bytes>>) -> Got {
    let down = downstream("reviews.shop.svc.cluster.local:80");
    let r = proxy.handle(&down, request).await;
    let (parts, body) = r.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Got { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path).header("host", "reviews.shop.svc.cluster.local")
}

pub async fn get(proxy: &Arc<Proxy>, path: &str) -> Got {
    send(proxy, req("GET", path).body(Full::new(Bytes::new())).unwrap()).await
}

/// An HTTPRoute for `reviews` with the given rules (YAML list items, indented by 2).
pub fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 80}}]\n  rules:\n{rules}"
    )
}
