//! gRPC through the pipeline: GRPCRoute matching, retries on trailers-only statuses,
//! `grpc-timeout`, local replies a gRPC client can read, and the metric labels.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::telemetry::RequestMetrics;
use crate::testing::{Got, Reply, Scripted, labels_to_reviews_v2, proxy, proxy_with_metrics, req, send};

/// A GRPCRoute for `reviews` with the given annotations and rules.
fn grpc_route(annotations: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: reviews, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 80}}]\n  rules:\n{rules}"
    )
}

fn call(path: &str) -> http::request::Builder {
    req("POST", path).version(http::Version::HTTP_2).header("content-type", "application/grpc").header("te", "trailers")
}

async fn grpc(p: &std::sync::Arc<crate::Proxy>, path: &str, timeout: Option<&str>) -> Got {
    let mut r = call(path);
    if let Some(t) = timeout {
        r = r.header("grpc-timeout", t);
    }
    send(p, r.body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))).unwrap()).await
}

#[tokio::test(start_paused = true)]
async fn methods_route_by_service_and_method() {
    let up = Scripted::ok();
    let p = proxy(
        &grpc_route(
            "",
            "  - matches: [{method: {service: shop.Reviews, method: Get}}]\n    backendRefs: [{name: reviews-v2, port: 80}]\n  - matches: [{method: {service: shop.Reviews}}]\n    backendRefs: [{name: reviews-v1, port: 80}]\n  - matches: [{method: {type: RegularExpression, service: \"shop\\\\..*\", method: \"List.*\"}}]\n    backendRefs: [{name: shadow, port: 80}]\n",
        ),
        up.clone(),
    );
    for (path, backend) in
        [("/shop.Reviews/Get", "reviews-v2"), ("/shop.Reviews/Put", "reviews-v1"), ("/shop.Ratings/ListAll", "shadow")]
    {
        assert_eq!(grpc(&p, path, None).await.status, StatusCode::OK);
        assert_eq!(up.calls().last().unwrap().target.service.name, backend, "{path}");
    }
    // No rule matches: a gRPC client reads UNIMPLEMENTED, not an HTTP 404.
    let none = grpc(&p, "/other.Svc/Get", None).await;
    assert_eq!((none.status, none.headers["grpc-status"].to_str().unwrap()), (StatusCode::OK, "12"));
    assert_eq!(none.headers["content-type"], "application/grpc");
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_by_default_and_annotations_choose_the_statuses() {
    let metrics = RequestMetrics::default();
    let up = Scripted::new(|_, n| if n == 0 { Reply::Grpc(14) } else { Reply::Grpc(0) });
    let routes = grpc_route("", "  - backendRefs: [{name: reviews-v2, port: 80}]\n");
    let p = proxy_with_metrics(&routes, up.clone(), metrics.clone());
    let got = grpc(&p, "/shop.Reviews/Get", None).await;
    assert_eq!((got.status, got.headers["grpc-status"].to_str().unwrap()), (StatusCode::OK, "0"));
    assert_eq!(up.calls().len(), 2, "UNAVAILABLE in a trailers-only answer is retried (Istio's default)");
    // Metrics: request_protocol grpc, with the final gRPC status.
    let labels = |status: u8| labels_to_reviews_v2(200, "-").grpc(Some(crate::grpc::GrpcStatus(status)));
    assert_eq!(metrics.requests(&labels(0)), 1);
    assert_eq!(labels(0).request_protocol, "grpc");

    // Annotated: only DEADLINE_EXCEEDED is retried, up to 3 times.
    let up = Scripted::new(|_, n| match n {
        0..=2 => Reply::Grpc(4),
        _ => Reply::Grpc(14),
    });
    let routes = grpc_route(
        "retry.pillion.dev/grpc: deadline-exceeded, retry.pillion.dev/limit: \"3\"",
        "  - backendRefs: [{name: reviews-v2, port: 80}]\n",
    );
    let p = proxy(&routes, up.clone());
    let got = grpc(&p, "/shop.Reviews/Get", None).await;
    assert_eq!(got.headers["grpc-status"], "14", "UNAVAILABLE is no longer retried: passed on");
    assert_eq!(up.calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_bounds_the_call_and_the_client_reads_deadline_exceeded() {
    let metrics = RequestMetrics::default();
    let up = Scripted::new(|_, _| Reply::Slow(200, Duration::from_secs(10)));
    let routes = grpc_route("", "  - backendRefs: [{name: reviews-v2, port: 80}]\n");
    let p = proxy_with_metrics(&routes, up, metrics.clone());
    let start = tokio::time::Instant::now();
    let got = grpc(&p, "/shop.Reviews/Get", Some("250m")).await;
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!((got.status, got.headers["grpc-status"].to_str().unwrap()), (StatusCode::OK, "4"));
    assert_eq!(got.headers["grpc-message"], "upstream request timeout");
    // A malformed grpc-timeout is ignored (no deadline): the call waits for the backend.
    let start = tokio::time::Instant::now();
    let got = grpc(&p, "/shop.Reviews/Get", Some("soon")).await;
    assert_eq!((start.elapsed(), got.status), (Duration::from_secs(10), StatusCode::OK));
}

#[tokio::test(start_paused = true)]
async fn a_denied_call_reads_permission_denied() {
    let policy = format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-put, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Service, name: reviews}}]\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/shop.Reviews/Put\"]}}}}]}}]\n",
        grpc_route("", "  - backendRefs: [{name: reviews, port: 80}]\n")
    );
    let up = Scripted::ok();
    let p = proxy(&policy, up.clone());
    let got = grpc(&p, "/shop.Reviews/Put", None).await;
    assert_eq!((got.status, got.headers["grpc-status"].to_str().unwrap()), (StatusCode::OK, "7"));
    assert!(up.calls().is_empty());
}
