//! The three servers on loopback, spoken to with raw HTTP/1.1 so the transport is tested too.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

use super::*;
use crate::telemetry::dump::{CertSummary, ConfigDump};
use crate::telemetry::labels::{ConnectionLabels, Peer, Reporter, SecurityPolicy, ServiceRef};
use crate::telemetry::{AgentMetrics, ConnectionMetrics, LogControl, Readiness, ReloadResult};

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends raw bytes as one request on a fresh connection and reads until the server closes.
async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("server answered").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_owned(), body: body.to_owned() }
}

async fn call(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let req = format!("{method} {target} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

async fn start(endpoint: impl Endpoint) -> (SocketAddr, CancellationToken, JoinHandle<()>) {
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), endpoint).await.unwrap();
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let task = server.spawn(stop.clone());
    (addr, stop, task)
}

fn labels() -> ConnectionLabels {
    let src = Peer::workload("sleep", "default")
        .service_account("cluster.local", "sleep")
        .cluster("Kubernetes")
        .pod_labels([("app", "sleep")]);
    let dst = Peer::workload("echo", "default")
        .service_account("cluster.local", "echo")
        .cluster("Kubernetes")
        .pod_labels([("app", "echo"), ("version", "v1")]);
    let svc = ServiceRef::new("echo", "default", "cluster.local");
    ConnectionLabels::new(Reporter::Source, &src, &dst, Some(&svc), SecurityPolicy::MutualTls)
}

/// Istio's full label set, in its order, as it must appear in the exposition.
const SERIES: &str = "{reporter=\"source\",source_workload=\"sleep\",source_canonical_service=\"sleep\",\
source_canonical_revision=\"latest\",source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",source_app=\"sleep\",source_version=\"latest\",\
source_cluster=\"Kubernetes\",destination_service=\"echo.default.svc.cluster.local\",\
destination_service_namespace=\"default\",destination_service_name=\"echo\",destination_workload=\"echo\",\
destination_canonical_service=\"echo\",destination_canonical_revision=\"v1\",\
destination_workload_namespace=\"default\",destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\",\
destination_app=\"echo\",destination_version=\"v1\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",\
response_flags=\"-\",connection_security_policy=\"mutual_tls\"}";

fn sample(body: &str, metric: &str) -> Option<u64> {
    let prefix = format!("{metric}{SERIES} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_have_istio_names_labels_and_live_bytes() {
    let mut registry = Registry::default();
    let tcp = ConnectionMetrics::register(&mut registry);
    let agent = AgentMetrics::register(&mut registry);
    let (addr, stop, task) = start(MetricsEndpoint::new(Arc::new(registry))).await;

    let conn = tcp.open(labels());
    conn.add_received(100);
    conn.add_sent(2500);
    conn.add_sent(0);
    let open = call(addr, "GET", "/metrics").await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(open.head.to_ascii_lowercase().contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")));
    for family in ["connections_opened", "connections_closed", "sent_bytes", "received_bytes"] {
        assert!(open.body.contains(&format!("# TYPE istio_tcp_{family} counter\n")), "{}", open.body);
    }
    // While the connection is still open its bytes are already visible.
    assert_eq!(sample(&open.body, "istio_tcp_connections_opened_total"), Some(1), "{}", open.body);
    assert_eq!(sample(&open.body, "istio_tcp_connections_closed_total"), Some(0));
    assert_eq!(sample(&open.body, "istio_tcp_received_bytes_total"), Some(100));
    assert_eq!(sample(&open.body, "istio_tcp_sent_bytes_total"), Some(2500));
    assert!(open.body.ends_with("# EOF\n"));

    conn.add_received(1);
    assert_eq!((conn.sent(), conn.received()), (2500, 101));
    drop(conn);
    agent.config_reloaded(ReloadResult::Success);
    agent.enrolled_pods.set(3);
    agent.hbone_pool_connections.set(2);
    let closed = call(addr, "GET", "/metrics").await.body;
    assert_eq!(sample(&closed, "istio_tcp_connections_closed_total"), Some(1), "{closed}");
    assert_eq!(sample(&closed, "istio_tcp_received_bytes_total"), Some(101));
    assert_eq!(sample(&closed, "istio_tcp_sent_bytes_total"), Some(2500));
    for line in [
        "pillion_config_reloads_total{result=\"success\"} 1\n",
        "pillion_config_reloads_total{result=\"rejected\"} 0\n",
        "pillion_enrolled_pods 3\n",
        "pillion_hbone_pool_connections 2\n",
    ] {
        assert!(closed.contains(line), "missing {line:?} in {closed}");
    }

    let alias = call(addr, "GET", "/stats/prometheus").await;
    assert_eq!(sample(&alias.body, "istio_tcp_connections_closed_total"), Some(1));
    assert_eq!(call(addr, "GET", "/").await.status, 404);
    assert_eq!(call(addr, "GET", "/metrics/x").await.status, 404);
    let post = call(addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert!(post.head.to_ascii_lowercase().contains("allow: get"), "{}", post.head);
    assert_eq!(call(addr, "DELETE", "/metrics").await.status, 405);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("server stops").unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed after stop");
}

#[tokio::test]
async fn readiness_flips_from_503_to_200() {
    let ready = Readiness::new(["config", "kernel"]);
    let (addr, stop, _) = start(ReadinessEndpoint::new(ready.clone())).await;
    let r = call(addr, "GET", "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "not ready; waiting for: config, kernel\n"));
    ready.set("kernel", true);
    let r = call(addr, "GET", "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "not ready; waiting for: config\n"));
    ready.set("config", true);
    let r = call(addr, "GET", "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    assert_eq!(call(addr, "PUT", "/healthz/ready").await.status, 405);
    assert_eq!(call(addr, "GET", "/healthz/live").await.status, 404);
    stop.cancel();
}

fn admin(dump: impl ConfigDump) -> (AdminEndpoint, LogControl, tracing::Dispatch) {
    let (filter, logs) = LogControl::new("info").unwrap();
    // A subscriber of our own (not the global one), so tests do not interfere.
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(filter));
    (AdminEndpoint::new(dump, logs.clone()), logs, dispatch)
}

#[tokio::test]
async fn logging_changes_levels_at_runtime() {
    let (endpoint, logs, dispatch) = admin(|| serde_json::json!({}));
    let debug_on = || tracing::dispatcher::with_default(&dispatch, || tracing::enabled!(tracing::Level::DEBUG));
    let (addr, stop, _) = start(endpoint).await;

    let r = call(addr, "GET", "/logging").await;
    assert_eq!((r.status, r.body.as_str()), (200, "info\n"));
    assert!(!debug_on());

    let r = call(addr, "POST", "/logging?level=debug").await;
    assert_eq!((r.status, r.body.as_str()), (200, "debug\n"));
    assert_eq!(logs.current().unwrap(), "debug");
    assert!(debug_on(), "the new filter governs the subscriber");

    let r = call(addr, "POST", "/logging?level=info%2Caccess%3Dwarn").await;
    assert_eq!((r.status, r.body.as_str()), (200, "access=warn,info\n"));
    assert!(!debug_on());

    for bad in ["/logging?level=access=loud", "/logging?level=", "/logging", "/logging?level=%zz"] {
        let r = call(addr, "POST", bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(!r.body.is_empty());
    }
    let r = call(addr, "POST", "/logging?level=access=loud").await;
    assert!(r.body.contains("invalid"), "says why: {}", r.body);
    assert_eq!(logs.current().unwrap(), "access=warn,info", "a bad filter changes nothing");

    assert_eq!(call(addr, "DELETE", "/logging").await.status, 405);
    assert_eq!(call(addr, "GET", "/nope").await.status, 404);
    stop.cancel();
}

#[tokio::test]
async fn config_dump_serves_the_callers_json_and_never_keys() {
    let (cert, ca_pem) = crate::telemetry::dump::tests::issued();
    let certs = CertSummary::chain_of(&cert);
    let (endpoint, _, _d) = admin(move || serde_json::json!({ "workloads": ["default/sleep"], "certificates": certs }));
    let (addr, stop, _) = start(endpoint).await;
    let r = call(addr, "GET", "/config_dump").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.head.to_ascii_lowercase().contains("content-type: application/json"));
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["workloads"][0], "default/sleep");
    assert_eq!(json["certificates"][0]["spiffe_id"], "spiffe://cluster.local/ns/default/sa/sleep");
    assert!(json["certificates"][0]["not_after"].is_string());
    assert!(!r.body.contains("PRIVATE KEY"));
    assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
    assert_eq!(call(addr, "POST", "/config_dump").await.status, 405);
    stop.cancel();

    // A buggy dump that includes a key is withheld, not served.
    let (endpoint, _, _d) = admin(move || serde_json::json!({ "oops": ca_pem.intermediate_key }));
    let (addr, stop, _) = start(endpoint).await;
    let r = call(addr, "GET", "/config_dump").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("withheld") && !r.body.contains("BEGIN"), "{}", r.body);
    stop.cancel();
}

#[tokio::test]
async fn hostile_input_gets_errors_not_panics() {
    let ready = Readiness::new(["config"]);
    let (addr, stop, task) = start(ReadinessEndpoint::new(ready)).await;

    let huge = format!(
        "POST /healthz/ready HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(raw(addr, huge.as_bytes()).await.status, 413);

    let mut chunked =
        b"POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..(MAX_BODY / 1024 + 2) {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'a'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &chunked).await.status, 413);

    assert_eq!(raw(addr, b"\x00\x01garbage\r\n\r\n").await.status, 400);
    let long_header = format!("GET /healthz/ready HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD * 2));
    assert_eq!(raw(addr, long_header.as_bytes()).await.status, 431);
    assert_eq!(call(addr, "GET", "/healthz/ready?%%%").await.status, 503, "still serving");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("server stops").unwrap();
}

#[tokio::test]
async fn stop_drains_an_idle_keep_alive_connection() {
    let (addr, stop, task) = start(ReadinessEndpoint::new(Readiness::new(Vec::<String>::new()))).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    stop.cancel();
    // The idle keep-alive connection is closed promptly, well before the drain deadline.
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("server stops").unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);
}

#[tokio::test]
async fn bind_conflict_says_how_to_fix() {
    let first =
        HttpServer::bind("127.0.0.1:0".parse().unwrap(), ReadinessEndpoint::new(Readiness::default())).await.unwrap();
    let taken = first.local_addr();
    let Err(err) = HttpServer::bind(taken, ReadinessEndpoint::new(Readiness::default())).await else {
        panic!("second bind on {taken} succeeded");
    };
    assert!(err.to_string().contains("another process"), "{err}");
}

#[tokio::test]
async fn admin_refuses_non_loopback_addresses() {
    let (endpoint, _, _d) = admin(|| serde_json::json!({}));
    let Err(err) = HttpServer::bind("0.0.0.0:0".parse().unwrap(), endpoint).await else {
        panic!("admin bound to a wildcard address");
    };
    assert!(matches!(err, TelemetryError::NotLoopback { server: "admin", .. }), "{err}");
    let (endpoint, _, _d) = admin(|| serde_json::json!({}));
    assert!(HttpServer::bind("[::1]:0".parse().unwrap(), endpoint).await.is_ok() || !ipv6_loopback());
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Reads one HTTP/1.1 response (head and `content-length` body) from a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed before a full response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// L2: clients holding keep-alive connections (and silent new ones) past the cap must not
/// keep a fresh probe out. Before, the probe waited in the backlog until the 10 s header
/// timeout freed a slot, past the 5 s `call` allows.
#[tokio::test]
async fn held_connections_cannot_starve_a_fresh_readiness_probe() {
    let (addr, stop, _task) = start(ReadinessEndpoint::new(Readiness::new(Vec::<String>::new()))).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // Silent connections too: accepted, never a byte.
    for _ in 0..8 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let probe = call(addr, "GET", "/healthz/ready").await;
    assert_eq!((probe.status, probe.body.as_str()), (200, "ready\n"));
    // The oldest idle keep-alive connection made room: the server closed it.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), held[0].read(&mut buf)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    stop.cancel();
}

#[test]
fn at_the_cap_the_oldest_idle_connection_goes_before_a_busy_one() {
    let table = conns::Table::new(2);
    let (busy_old, _) = table.admit();
    let (idle, _) = table.admit();
    let _working = busy_old.activity().busy();
    let (new, evicted) = table.admit();
    assert!(evicted);
    assert_eq!(table.len(), 2);
    // The idle one was told to go; the busy one (older) was kept.
    assert!(idle.evict_requested() && !busy_old.evict_requested());
    // All busy: the oldest goes.
    let _also_working = new.activity().busy();
    let (_newer, evicted) = table.admit();
    assert!(evicted && busy_old.evict_requested());
}

/// L5: the admin server refuses a wildcard listener however it is built; the agent builds
/// it from its own `SO_REUSEPORT` listener, which used to skip the check.
#[tokio::test]
async fn admin_refuses_a_non_loopback_listener_too() {
    let (endpoint, _, _d) = admin(|| serde_json::json!({}));
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let Err(err) = HttpServer::from_listener(listener, endpoint) else {
        panic!("admin served on a wildcard listener");
    };
    assert!(matches!(err, TelemetryError::NotLoopback { server: "admin", .. }), "{err}");
    assert!(err.to_string().contains("use 127.0.0.1"), "{err}");
    let (endpoint, _, _d) = admin(|| serde_json::json!({}));
    assert!(HttpServer::from_listener(TcpListener::bind("127.0.0.1:0").await.unwrap(), endpoint).is_ok());
    let metrics = MetricsEndpoint::new(Arc::new(Registry::default()));
    assert!(HttpServer::from_listener(TcpListener::bind("0.0.0.0:0").await.unwrap(), metrics).is_ok());
}
