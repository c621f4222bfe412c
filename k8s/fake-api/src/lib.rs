//! Tests only. A scripted API server, behind kube's mock client (tower-test) for in-process
//! tests or on a TCP listener over plain HTTP for real processes (binary
//! `pillion-fake-api`): lists answer from the current objects, watches get the events after
//! the resourceVersion they start from, and failures can be injected per resource. Just
//! enough of the API for `kube::runtime::watcher`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tower_test::mock::SendResponse;

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const PODS: &str = "/api/v1/pods";
pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
pub const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const AUTHZ: &str = "/apis/security.istio.io/v1/authorizationpolicies";
pub const PEER_AUTHN: &str = "/apis/security.istio.io/v1/peerauthentications";
pub const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
pub const BACKEND_POLICIES: &str = "/apis/gateway.networking.x-k8s.io/v1alpha1/xbackendtrafficpolicies";
pub const FAULTS: &str = "/apis/pillion.dev/v1alpha1/faultinjections";
pub const GRANTS: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";

enum Cmd {
    /// Store and announce (ADDED/MODIFIED/DELETED) an object.
    Event(String, &'static str, Value),
    /// Change the stored objects without telling open watches (what a client misses
    /// while its watch is broken).
    Silently(String, Option<Value>, Value),
    /// Answer the next `n` lists of a resource with 500.
    FailLists(String, u32),
    /// End the open watch of a resource with 410 Gone, forcing a relist.
    Expire(String),
    /// Answer lists of a resource with 404 (its CRD is not installed).
    Missing(String),
    /// Undo `Missing`.
    Installed(String),
}

/// How a request is answered: through kube's mock client, or over HTTP.
enum Reply {
    Mock(SendResponse<Response<Body>>),
    Http(oneshot::Sender<(u16, String)>),
}

/// A request: its path, its query, and where the answer goes.
type Incoming = (String, Option<String>, Reply);

#[derive(Clone)]
pub struct FakeApi {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl FakeApi {
    /// Behind kube's mock client, in this process.
    pub fn start(initial: Vec<(&'static str, Value)>) -> (kube::Client, Self) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (requests, incoming) = mpsc::unbounded_channel::<Incoming>();
        tokio::spawn(async move {
            while let Some((req, tx)) = handle.next_request().await {
                let (path, query) = (req.uri().path().to_owned(), req.uri().query().map(str::to_owned));
                if requests.send((path, query, Reply::Mock(tx))).is_err() {
                    return;
                }
            }
        });
        let api = Self::run(initial.into_iter().map(|(p, o)| (p.to_owned(), o)).collect(), incoming);
        (kube::Client::new(svc, "default"), api)
    }

    /// Over plain HTTP on `listener` (for processes given a kubeconfig naming it).
    pub fn serve(listener: tokio::net::TcpListener, initial: Vec<(String, Value)>) -> Self {
        let (requests, incoming) = mpsc::unbounded_channel::<Incoming>();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let requests = requests.clone();
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let requests = requests.clone();
                    async move {
                        let (tx, rx) = oneshot::channel();
                        let (path, query) = (req.uri().path().to_owned(), req.uri().query().map(str::to_owned));
                        let _ = requests.send((path, query, Reply::Http(tx)));
                        let (code, body) = rx.await.unwrap_or((503, String::new()));
                        Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        Self::run(initial, incoming)
    }

    fn run(initial: Vec<(String, Value)>, incoming: mpsc::UnboundedReceiver<Incoming>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut server = Server::default();
        for (path, o) in initial {
            server.store(&path, "ADDED", o);
        }
        tokio::spawn(server.run(incoming, rx));
        Self { tx }
    }

    pub fn apply(&self, path: &str, o: Value) {
        let _ = self.tx.send(Cmd::Event(path.to_owned(), "MODIFIED", o));
    }

    pub fn delete(&self, path: &str, o: Value) {
        let _ = self.tx.send(Cmd::Event(path.to_owned(), "DELETED", o));
    }

    pub fn silently(&self, path: &str, set: Option<Value>, remove: Value) {
        let _ = self.tx.send(Cmd::Silently(path.to_owned(), set, remove));
    }

    pub fn fail_lists(&self, path: &str, n: u32) {
        let _ = self.tx.send(Cmd::FailLists(path.to_owned(), n));
    }

    pub fn expire(&self, path: &str) {
        let _ = self.tx.send(Cmd::Expire(path.to_owned()));
    }

    pub fn missing(&self, path: &str) {
        let _ = self.tx.send(Cmd::Missing(path.to_owned()));
    }

    pub fn installed(&self, path: &str) {
        let _ = self.tx.send(Cmd::Installed(path.to_owned()));
    }
}

#[derive(Default)]
struct Server {
    rv: u64,
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    /// Open watches per path, with the resourceVersion each started from.
    watches: HashMap<String, Vec<(u64, Reply)>>,
    /// Every announced event per path, with its resourceVersion: a watch gets those after
    /// the version it started from, as from a real API server.
    log: HashMap<String, Vec<(u64, String)>>,
    fail_lists: HashMap<String, u32>,
    missing: Vec<String>,
}

fn key(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (m["namespace"].as_str().unwrap_or("").to_owned(), m["name"].as_str().unwrap_or("").to_owned())
}

fn respond(tx: Reply, code: u16, body: String) {
    match tx {
        Reply::Mock(tx) => {
            tx.send_response(Response::builder().status(code).body(Body::from(body.into_bytes())).unwrap());
        }
        Reply::Http(tx) => {
            let _ = tx.send((code, body));
        }
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": format!("injected {reason}"), "reason": reason, "code": code})
}

impl Server {
    fn store(&mut self, path: &str, kind: &str, mut o: Value) -> Value {
        self.rv += 1;
        o["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let objects = self.objects.entry(path.to_owned()).or_default();
        if kind == "DELETED" {
            objects.remove(&key(&o));
        } else {
            objects.insert(key(&o), o.clone());
        }
        o
    }

    async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<Incoming>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            tokio::select! {
                Some((path, query, tx)) = incoming.recv() => self.request(path, query, tx),
                Some(cmd) = rx.recv() => self.command(cmd),
                else => return,
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Event(path, kind, o) => {
                let o = self.store(&path, kind, o);
                let line = json!({"type": kind, "object": o}).to_string();
                self.log.entry(path.clone()).or_default().push((self.rv, line));
                self.flush(&path);
            }
            Cmd::Silently(path, set, remove) => {
                self.store(&path, "DELETED", remove);
                if let Some(o) = set {
                    self.store(&path, "ADDED", o);
                }
            }
            Cmd::FailLists(path, n) => {
                self.fail_lists.insert(path, n);
            }
            Cmd::Expire(path) => {
                // For the watches open now; a relist starts after it.
                self.rv += 1;
                let line = json!({"type": "ERROR", "object": status(410, "Expired")}).to_string();
                self.log.entry(path.clone()).or_default().push((self.rv, line));
                self.flush(&path);
            }
            Cmd::Missing(path) => self.missing.push(path),
            Cmd::Installed(path) => self.missing.retain(|p| *p != path),
        }
    }

    /// Answers every open watch of `path` that has events after its version, ending its
    /// response: the watcher then re-watches from the last resourceVersion it saw. (A
    /// process may watch one kind twice, as a waypoint does with AuthorizationPolicy.)
    fn flush(&mut self, path: &str) {
        let Some(watches) = self.watches.get_mut(path) else { return };
        let log = self.log.get(path).map(Vec::as_slice).unwrap_or_default();
        let mut waiting = Vec::new();
        for (since, tx) in watches.drain(..) {
            let body: String = log.iter().filter(|(rv, _)| *rv > since).map(|(_, l)| format!("{l}\n")).collect();
            if body.is_empty() {
                waiting.push((since, tx));
            } else {
                respond(tx, 200, body);
            }
        }
        *watches = waiting;
    }

    fn request(&mut self, path: String, query: Option<String>, tx: Reply) {
        let param = |name: &str| {
            query.as_deref().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')))
        };
        let watching = param("watch") == Some("true");
        if self.missing.contains(&path) {
            return respond(tx, 404, status(404, "NotFound").to_string());
        }
        if watching {
            let since = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(self.rv);
            self.watches.entry(path.clone()).or_default().push((since, tx));
            return self.flush(&path);
        }
        if let Some(n) = self.fail_lists.get_mut(&path).filter(|n| **n > 0) {
            *n -= 1;
            return respond(tx, 500, status(500, "InternalError").to_string());
        }
        // A list answers the current objects at the current version.
        let items: Vec<Value> =
            self.objects.iter().filter(|(p, _)| **p == path).flat_map(|(_, m)| m.values().cloned()).collect();
        let list = json!({"apiVersion": "v1", "kind": "List",
                          "metadata": {"resourceVersion": self.rv.to_string()}, "items": items});
        respond(tx, 200, list.to_string());
    }
}

// Fixtures: the fields a real API server would return that the source reads.

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels,
                        "creationTimestamp": "2026-11-22T10:00:00Z"},
           "spec": {"nodeName": node, "serviceAccountName": name.split('-').next().unwrap(),
                    "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub fn service(ns: &str, name: &str, vip: &str, port: u16, target: u16, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"clusterIP": vip, "clusterIPs": [vip],
                    "ports": [{"name": "tcp", "port": port, "targetPort": target, "protocol": "TCP"}]}})
}

pub fn slice(ns: &str, service: &str, port: u16, pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
                                  "targetRef": {"kind": "Pod", "name": name, "namespace": ns}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{service}-abcde"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}], "endpoints": endpoints})
}

pub fn gateway(ns: &str, name: &str, class: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"gatewayClassName": class,
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

pub fn authz(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

pub fn peer_authn(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

pub fn route(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": ns, "managedFields": [{"manager": "kubectl"}]}, "spec": spec})
}
