//! Retries, timeouts, the retry budget, circuit breaking and outlier ejection through the
//! whole pipeline, against scripted backends on paused time.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Full;

use crate::testing::{Reply, Scripted, get, proxy, req, route, send};

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(start_paused = true)]
async fn retries_503_twice_then_200_and_the_client_sees_200() {
    let up = Scripted::new(|_, n| if n < 2 { Reply::Status(503) } else { Reply::Status(200) });
    let p = proxy(
        &route(
            "  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 3, codes: [503], backoff: 100ms}\n",
        ),
        up.clone(),
    );
    let got = get(&p, "/").await;
    assert_eq!(got.status, StatusCode::OK);
    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].headers["x-envoy-attempt-count"], "1");
    assert_eq!(calls[2].headers["x-envoy-attempt-count"], "3");
    // Retries prefer endpoints not tried yet for this request.
    assert_ne!(calls[0].target.addr, calls[1].target.addr);
}

#[tokio::test(start_paused = true)]
async fn always_503_is_bounded_by_attempts_and_by_the_budget() {
    let up = Scripted::new(|_, _| Reply::Status(503));
    let budget = r#"
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: reviews-budget, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  retryConstraint:
    budget: {percent: 10, interval: 10s}
    minRetryRate: {count: 0, interval: 1s}
"#;
    let p = proxy(
        &format!(
            "{}{budget}",
            route("  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 2, codes: [503]}\n")
        ),
        up.clone(),
    );
    for _ in 0..10 {
        let got = get(&p, "/").await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        // Not retried for lack of budget: the backend's own answer is passed on.
        assert_eq!(got.body, "reviews /");
    }
    // 10% of 10 requests: exactly one retry in the window, not 20.
    assert_eq!(up.calls().len(), 11);

    // Without a budget limit the attempts bound applies: 1 + 2 tries.
    let up = Scripted::new(|_, _| Reply::Status(503));
    let p = proxy(
        &route("  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 2, codes: [503]}\n"),
        up.clone(),
    );
    assert_eq!(get(&p, "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_and_resets_are_retried_but_500_is_not_by_default() {
    let up = Scripted::new(|_, n| match n {
        0 => Reply::ConnectFail,
        1 => Reply::Reset,
        _ => Reply::Status(200),
    });
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone());
    assert_eq!(get(&p, "/").await.status, StatusCode::OK);
    assert_eq!(up.calls().len(), 3);

    let up = Scripted::new(|_, _| Reply::Status(500));
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone());
    assert_eq!(get(&p, "/").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_timeout_cuts_a_slow_backend() {
    let up = Scripted::new(|_, _| Reply::Slow(200, Duration::from_secs(30)));
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n    timeouts: {request: 2s}\n"), up.clone());
    let start = Instant::now();
    let got = get(&p, "/").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn request_timeout_also_cuts_a_slowly_streamed_body() {
    let up = Scripted::new(|_, _| Reply::SlowBody(200, Duration::from_secs(30)));
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n    timeouts: {request: 2s}\n"), up);
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    let start = Instant::now();
    let response = p.handle(&down, req("GET", "/").body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await;
    assert!(body.is_err(), "the body must fail at the deadline");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn backend_request_timeout_is_per_attempt_and_retried() {
    let up = Scripted::new(|_, n| if n == 0 { Reply::Slow(200, Duration::from_secs(30)) } else { Reply::Status(200) });
    let p = proxy(
        &route(
            "  - backendRefs: [{name: reviews, port: 80}]\n    timeouts: {request: 10s, backendRequest: 1s}\n    retry: {attempts: 1, backoff: 10ms}\n",
        ),
        up.clone(),
    );
    let start = Instant::now();
    assert_eq!(get(&p, "/").await.status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(up.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn outlier_ejection_takes_a_failing_endpoint_out_for_a_growing_time() {
    let bad: std::net::SocketAddr = "10.0.1.1:8080".parse().unwrap();
    let up = Scripted::new(move |c, _| if c.target.addr == bad { Reply::Status(500) } else { Reply::Status(200) });
    let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 30s, maxEjectionPercent: 50}
"#;
    let p = proxy(
        &format!("{}{dr}", route("  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 0}\n")),
        up.clone(),
    );
    let to_bad = |up: &Scripted| up.calls().iter().filter(|c| c.target.addr == bad).count();
    for _ in 0..40 {
        get(&p, "/").await;
    }
    assert_eq!(to_bad(&up), 2, "ejected after two consecutive 5xx");
    assert_eq!(up.forgotten(), vec![bad], "its pooled connections were dropped");
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..40 {
        get(&p, "/").await;
    }
    assert_eq!(to_bad(&up), 4, "back after 30 s, ejected again after two more");
    // The second ejection lasts 60 s: still out after 31 s more.
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..20 {
        get(&p, "/").await;
    }
    assert_eq!(to_bad(&up), 4);
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_fails_fast_beyond_the_limits() {
    let up = Scripted::new(|_, _| Reply::Slow(200, Duration::from_secs(5)));
    let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}}
"#;
    let p = proxy(&format!("{}{dr}", route("  - backendRefs: [{name: reviews, port: 80}]\n")), up.clone());
    let (a, b, c) = tokio::join!(get(&p, "/"), get(&p, "/"), get(&p, "/"));
    let mut codes = [a.status.as_u16(), b.status.as_u16(), c.status.as_u16()];
    codes.sort();
    // One in flight, one pending (served after), one refused.
    assert_eq!(codes, [200, 200, 503]);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_a_seeded_failure_schedule_exactly_inside_the_budget() {
    // 30% of requests fail, none more than twice: half of those once, half twice.
    let rng = crate::rng::Rng::new(42);
    let schedule: Vec<u32> = (0..300)
        .map(|_| match rng.percent() {
            p if p < 15.0 => 2,
            p if p < 30.0 => 1,
            _ => 0,
        })
        .collect();
    let failures: u32 = schedule.iter().sum();
    let plan = schedule.clone();
    let up = Scripted::new(move |c, _| {
        let i: usize = c.headers["x-request-id"].to_str().unwrap().parse().unwrap();
        let attempt: u32 = c.headers["x-envoy-attempt-count"].to_str().unwrap().parse().unwrap();
        if attempt <= plan[i] { Reply::Status(503) } else { Reply::Status(200) }
    });
    let budget = r#"
---
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: reviews-budget, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  retryConstraint: {budget: {percent: 100, interval: 10s}, minRetryRate: {count: 10, interval: 1s}}
"#;
    let p = proxy(
        &format!(
            "{}{budget}",
            route(
                "  - backendRefs: [{name: reviews, port: 80}]\n    retry: {attempts: 3, codes: [503], backoff: 10ms}\n"
            )
        ),
        up.clone(),
    );
    for i in 0..schedule.len() {
        let got = send(&p, req("GET", "/").header("x-request-id", i.to_string()).body(empty()).unwrap()).await;
        assert_eq!(got.status, StatusCode::OK, "request {i}");
    }
    // Every retry the schedule demands, and not one more.
    assert_eq!(up.calls().len() as u32, schedule.len() as u32 + failures);
    assert!(failures > 60, "the schedule exercises retries: {failures}");
}

#[tokio::test(start_paused = true)]
async fn a_streaming_response_keeps_its_circuit_breaker_slot() {
    let up = Scripted::new(|_, _| Reply::SlowBody(200, Duration::from_secs(5)));
    let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}}}
"#;
    let p = proxy(&format!("{}{dr}", route("  - backendRefs: [{name: reviews, port: 80}]\n")), up);
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    let first = p.handle(&down, req("GET", "/").body(empty()).unwrap()).await;
    assert_eq!(first.status(), StatusCode::OK);
    // While the first body streams, the second waits (pending) and the third overflows;
    // the second is served once the first body is done.
    let start = Instant::now();
    let (body, second, third) =
        tokio::join!(http_body_util::BodyExt::collect(first.into_body()), get(&p, "/"), async {
            tokio::task::yield_now().await;
            get(&p, "/").await
        });
    assert!(body.is_ok());
    assert_eq!((second.status.as_u16(), third.status.as_u16()), (200, 503));
    assert_eq!(start.elapsed(), Duration::from_secs(10), "the second started only after the first body ended");
}
