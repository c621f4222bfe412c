//! Trace-context propagation, Istio request metrics and the access log through the whole
//! pipeline.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::telemetry::RequestMetrics;
use crate::testing::{Reply, Scripted, get, proxy, proxy_with_metrics, req, route, send};

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(start_paused = true)]
async fn trace_context_gets_a_new_span_and_other_headers_pass_untouched() {
    let up = Scripted::ok();
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone());
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let got = send(
        &p,
        req("GET", "/")
            .header("traceparent", incoming)
            .header("tracestate", "vendor=abc")
            .header("baggage", "user=alice")
            .header("x-request-id", "req-1")
            .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
            .header("x-b3-spanid", "e457b5a2e4d86bd1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let h = &up.calls()[0].headers;
    let tp = h["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span id per hop: {tp}");
    assert!(tp.ends_with("-01"));
    assert_eq!(h["tracestate"], "vendor=abc");
    assert_eq!(h["baggage"], "user=alice");
    assert_eq!(h["x-request-id"], "req-1");
    assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(h["x-b3-spanid"], "e457b5a2e4d86bd1");
}

#[tokio::test(start_paused = true)]
async fn metrics_count_requests_with_waypoint_reporter_and_istio_labels() {
    let metrics = RequestMetrics::default();
    let up = Scripted::new(|_, _| Reply::Status(503));
    let p = proxy_with_metrics(
        &route("  - backendRefs: [{name: reviews-v2, port: 80}]\n    retry: {attempts: 1, backoff: 1ms}\n"),
        up,
        metrics.clone(),
    );
    get(&p, "/").await;
    let labels = crate::testing::labels_to_reviews_v2(503, "URX");
    assert_eq!(labels.reporter, "waypoint");
    assert_eq!(metrics.requests(&labels), 1);
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn one_access_log_line_per_request() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // tracing caches each callsite's interest process-wide, computed against the thread that
    // first hits it; sibling tests run without a subscriber and would cache "never". A bare
    // global registry keeps every thread's answer from being "never", and the scoped
    // subscriber's registration rebuilds what was cached before it.
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let up = Scripted::new(|_, n| if n == 0 { Reply::Status(503) } else { Reply::Status(200) });
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 1, backoff: 1ms}\n"), up);
    get(&p, "/a").await;
    get(&p, "/missing-route-is-fine-too").await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = &lines[0]["fields"];
    assert_eq!(first["path"], "/a");
    assert_eq!(first["response_code"], 200);
    assert_eq!(first["attempts"], 2);
    assert_eq!(first["route"], "shop/reviews");
    assert_eq!(first["src"], "spiffe://cluster.local/ns/web/sa/client");
    assert_eq!(first["dst_service"], "reviews.shop.svc.cluster.local");
}
