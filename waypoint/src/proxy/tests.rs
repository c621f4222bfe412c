//! The request pipeline against scripted backends, on paused time.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::time::Instant;

mod balance;
mod grpc;
mod resilience;
mod telemetry;
use crate::testing::{Reply, Scripted, get, proxy, req, route, send};

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(start_paused = true)]
async fn routes_by_path_header_and_method_to_the_most_specific_rule() {
    let up = Scripted::ok();
    let p = proxy(
        &route(
            r#"  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: reviews-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /api/exact}, method: POST}]
    backendRefs: [{name: shadow, port: 80}]
"#,
        ),
        up.clone(),
    );
    assert_eq!(get(&p, "/api/x").await.body, "reviews-v1 /api/x");
    let canary = send(&p, req("GET", "/api/x").header("x-canary", "yes").body(empty()).unwrap()).await;
    assert_eq!(canary.body, "reviews-v2 /api/x");
    let exact = send(&p, req("POST", "/api/exact").body(empty()).unwrap()).await;
    assert_eq!(exact.body, "shadow /api/exact");
    assert_eq!(up.calls()[2].method, http::Method::POST);
    // GET on the exact path falls back to the prefix rule; an unmatched path gets 404.
    assert_eq!(get(&p, "/api/exact").await.body, "reviews-v1 /api/exact");
    assert_eq!(get(&p, "/apix").await.status, StatusCode::NOT_FOUND);
    assert_eq!(up.calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn mirror_never_delays_or_fails_the_main_request() {
    let up = Scripted::new(|c, _| {
        if c.target.service.name == "shadow" { Reply::Slow(500, Duration::from_secs(3600)) } else { Reply::Status(200) }
    });
    let p = proxy(
        &route(
            "  - backendRefs: [{name: reviews-v1, port: 80}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]\n",
        ),
        up.clone(),
    );
    let start = Instant::now();
    let got = send(&p, req("POST", "/buy").body(Full::new(Bytes::from_static(b"order"))).unwrap()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::task::yield_now().await;
    let shadow = up.calls_to("shadow");
    assert_eq!(shadow.len(), 1);
    assert_eq!(shadow[0].body, Bytes::from_static(b"order"));
    assert_eq!(shadow[0].headers["host"], "reviews.shop.svc.cluster.local-shadow");
    assert_eq!(shadow[0].target.addr.port(), 9090);
}

#[tokio::test(start_paused = true)]
async fn header_modifiers_apply_to_request_and_response() {
    let up = Scripted::ok();
    let p = proxy(
        &route(
            r#"  - backendRefs: [{name: reviews, port: 80}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-env, value: prod}]
        add: [{name: x-tag, value: b}]
        remove: [x-secret]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}], remove: [x-upstream]}
"#,
        ),
        up.clone(),
    );
    let got = send(
        &p,
        req("GET", "/").header("x-env", "dev").header("x-tag", "a").header("x-secret", "s").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(got.headers["x-served-by"], "waypoint");
    assert!(got.headers.get("x-upstream").is_none());
    let call = &up.calls()[0];
    assert_eq!(call.headers["x-env"], "prod");
    let tags: Vec<_> = call.headers.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["a", "b"]);
    assert!(call.headers.get("x-secret").is_none());
}

#[tokio::test(start_paused = true)]
async fn url_rewrite_replaces_the_matched_prefix_and_the_host() {
    let up = Scripted::ok();
    let p = proxy(
        &route(
            r#"  - matches: [{path: {type: PathPrefix, value: /old}}]
    backendRefs: [{name: reviews, port: 80}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: reviews.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
"#,
        ),
        up.clone(),
    );
    let got = get(&p, "/old/items?page=2").await;
    assert_eq!(got.body, "reviews /new/items");
    let call = &up.calls()[0];
    assert_eq!(call.uri.to_string(), "/new/items?page=2");
    assert_eq!(call.headers["host"], "reviews.internal");
}

#[tokio::test(start_paused = true)]
async fn request_redirect_answers_without_calling_a_backend() {
    let up = Scripted::ok();
    let p = proxy(
        &route(
            r#"  - matches: [{path: {type: PathPrefix, value: /legacy}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: shop.example, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
"#,
        ),
        up.clone(),
    );
    let got = get(&p, "/legacy/a?x=1").await;
    assert_eq!(got.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(got.headers["location"], "https://shop.example/v2/a?x=1");
    assert!(up.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn weighted_split_lands_within_three_points() {
    let up = Scripted::ok();
    let p = proxy(
        &route(
            "  - backendRefs: [{name: reviews-v1, port: 80, weight: 90}, {name: reviews-v2, port: 80, weight: 10}]\n",
        ),
        up.clone(),
    );
    for _ in 0..2000 {
        get(&p, "/").await;
    }
    let v2 = up.calls_to("reviews-v2").len() as f64 / 2000.0 * 100.0;
    assert!((7.0..=13.0).contains(&v2), "v2 got {v2}%");
}

#[tokio::test(start_paused = true)]
async fn fault_injection_aborts_and_delays() {
    let faults = r#"
---
apiVersion: pillion.dev/v1alpha1
kind: FaultInjection
metadata: {name: teapot, namespace: shop}
spec: {abort: {httpStatus: 418, percentage: 100}}
---
apiVersion: pillion.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow, namespace: shop}
spec: {delay: {fixedDelay: 5s, percentage: 100}}
"#;
    let up = Scripted::ok();
    let p = proxy(
        &format!(
            "{}{faults}",
            route(
                r#"  - matches: [{path: {type: PathPrefix, value: /abort}}]
    backendRefs: [{name: reviews, port: 80}]
    filters: [{type: ExtensionRef, extensionRef: {group: pillion.dev, kind: FaultInjection, name: teapot}}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    backendRefs: [{name: reviews, port: 80}]
    filters: [{type: ExtensionRef, extensionRef: {group: pillion.dev, kind: FaultInjection, name: slow}}]
"#
            )
        ),
        up.clone(),
    );
    assert_eq!(get(&p, "/abort").await.status, StatusCode::IM_A_TEAPOT);
    assert!(up.calls().is_empty());
    let start = Instant::now();
    assert_eq!(get(&p, "/delay").await.status, StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn l7_deny_by_path_returns_403() {
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;
    let up = Scripted::ok();
    let p = proxy(policy, up.clone());
    let denied = get(&p, "/admin/users").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body, "RBAC: access denied");
    // No HTTPRoute: the policy alone makes the waypoint serve the Service at L7.
    assert_eq!(get(&p, "/products").await.status, StatusCode::OK);
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn l7_allow_policy_on_the_waypoint_admits_only_what_it_lists() {
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-reads, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/web/sa/client"]}}]
    to: [{operation: {methods: [GET]}}]
    when: [{key: "request.headers[x-team]", values: ["blue"]}]
"#;
    let p = proxy(policy, Scripted::ok());
    let ok = send(&p, req("GET", "/").header("x-team", "blue").body(empty()).unwrap()).await;
    assert_eq!(ok.status, StatusCode::OK);
    let post = send(&p, req("POST", "/").header("x-team", "blue").body(empty()).unwrap()).await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&p, "/").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test(start_paused = true)]
async fn large_bodies_stream_whole_and_are_not_retried_past_the_buffer() {
    let up = Scripted::new(|_, n| if n == 1 { Reply::ConnectFail } else { Reply::Status(503) });
    let routes = route("  - backendRefs: [{name: reviews-v2, port: 80}]\n    retry: {attempts: 2, backoff: 1ms}\n");
    let metrics = crate::telemetry::RequestMetrics::default();
    let p = crate::testing::proxy_with_metrics(&routes, up.clone(), metrics.clone());
    // Far past the 64 KiB buffer and the old 4 MiB cap: passed on whole, never 413.
    let big = Bytes::from(vec![b'x'; 5 << 20]);
    let got = send(&p, req("POST", "/").body(Full::new(big)).unwrap()).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "the backend's own answer");
    assert_eq!(up.calls().len(), 1, "not retried: the body outgrew the retry buffer");
    assert_eq!(up.calls()[0].body.len(), 5 << 20);
    let flagged = crate::testing::labels_to_reviews_v2(503, "RBO");
    assert_eq!(metrics.requests(&flagged), 1, "the access log and metrics say why it was not retried");
    // A small body within the buffer is retried: a connect failure, then the 503s are retried.
    let small = send(&p, req("POST", "/").body(Full::new(Bytes::from_static(b"hi"))).unwrap()).await;
    assert_eq!(small.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.calls().len(), 4, "three tries of the small body");
    let exhausted = crate::testing::labels_to_reviews_v2(503, "URX");
    assert_eq!(metrics.requests(&exhausted), 1);
    assert!(up.calls()[1..].iter().all(|c| &c.body[..] == b"hi"), "each try carries the whole body");
    assert_eq!(p.config().body_budget.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn request_trailers_reach_the_backend() {
    let up = Scripted::ok();
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = vec![
        Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from_static(b"msg"))),
        Ok(hyper::body::Frame::trailers(trailers.clone())),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    assert_eq!(p.handle(&down, req("POST", "/").body(body).unwrap()).await.status(), StatusCode::OK);
    assert_eq!(up.calls()[0].trailers.as_ref(), Some(&trailers));
    assert_eq!(&up.calls()[0].body[..], b"msg");
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_headers_are_not_forwarded_but_te_trailers_is() {
    let up = Scripted::ok();
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n"), up.clone());
    let got = send(
        &p,
        req("GET", "/")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-end", "2")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let h = &up.calls()[0].headers;
    assert!(h.get("connection").is_none() && h.get("x-hop").is_none() && h.get("keep-alive").is_none());
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-end"], "2");
}

/// A request body that never ends (a stalled upload).
fn stalled() -> http_body_util::StreamBody<futures::stream::Pending<Result<hyper::body::Frame<Bytes>, std::io::Error>>>
{
    http_body_util::StreamBody::new(futures::stream::pending())
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_is_cut_at_the_request_timeout_and_denials_do_not_wait_for_it() {
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"#;
    let up = Scripted::ok();
    let p = proxy(
        &format!("{}{policy}", route("  - backendRefs: [{name: reviews, port: 80}]\n    timeouts: {request: 2s}\n")),
        up.clone(),
    );
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    let start = Instant::now();
    let denied = p.handle(&down, req("POST", "/admin").body(stalled()).unwrap()).await;
    assert_eq!((denied.status(), start.elapsed()), (StatusCode::FORBIDDEN, Duration::ZERO));
    let cut = p.handle(&down, req("POST", "/upload").body(stalled()).unwrap()).await;
    assert_eq!((cut.status(), start.elapsed()), (StatusCode::REQUEST_TIMEOUT, Duration::from_secs(2)));
    assert!(up.calls().is_empty());
}

/// A body that sends `n` bytes and then never ends (a slow or hostile uploader).
fn partial_then_stalled(n: usize) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static {
    use futures::StreamExt;
    let first = futures::stream::once(async move { Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; n]))) });
    http_body_util::StreamBody::new(first.chain(futures::stream::pending()))
}

#[tokio::test(start_paused = true)]
async fn kept_bodies_are_bounded_per_peer_and_in_all_and_stalled_senders_are_cut() {
    let up = Scripted::ok();
    let mut config = crate::proxy::ProxyConfig::new(crate::route::ServiceKey::new("shop", "waypoint"));
    config.body_budget = crate::proxy::BodyBudget::new(1 << 20, 100 << 10);
    let snapshot = crate::testing::snapshot(&route("  - backendRefs: [{name: reviews, port: 80}]\n"));
    let p = std::sync::Arc::new(crate::proxy::Proxy::new(config, snapshot, up.clone()).with_seed(7));
    let budget = p.config().body_budget.clone();
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    // Stalled uploads of 40 KiB each: the first two are kept in the peer's 100 KiB, the rest
    // stream uncopied; none is refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (p, down) = (p.clone(), down.clone());
        held.push(tokio::spawn(async move {
            p.handle(&down, req("POST", "/up").body(partial_then_stalled(40 << 10)).unwrap()).await.status()
        }));
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.in_use(), 80 << 10);
    // Another identity still gets through, with its body kept.
    let mut other = down.clone();
    other.peer_identity = Some(mesh::Identity::new("cluster.local", "ops", "admin").unwrap());
    let ok = p.handle(&other, req("POST", "/small").body(Full::new(Bytes::from_static(b"hi"))).unwrap()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    // The stalled ones are cut at the body idle timeout, and their bytes come back.
    let start = Instant::now();
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::REQUEST_TIMEOUT);
    }
    assert_eq!(start.elapsed(), crate::proxy::DEFAULT_BODY_IDLE_TIMEOUT);
    assert_eq!(budget.in_use(), 0);
    assert_eq!(up.calls().len(), 1, "only the small request completed at a backend");
}

#[tokio::test(start_paused = true)]
async fn a_full_breaker_refuses_before_the_body_is_read() {
    let rule = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}
"#;
    let up = Scripted::new(|_, _| Reply::Slow(200, Duration::from_secs(10)));
    let p = proxy(&format!("{}{rule}", route("  - backendRefs: [{name: reviews, port: 80}]\n")), up.clone());
    let down = crate::testing::downstream("reviews.shop.svc.cluster.local:80");
    // One in flight, one pending: the breaker is full.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let (p, down) = (p.clone(), down.clone());
        busy.push(tokio::spawn(async move { p.handle(&down, req("GET", "/").body(empty()).unwrap()).await.status() }));
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let budget = p.config().body_budget.clone();
    let refused = p.handle(&down, req("POST", "/up").body(partial_then_stalled(1 << 20)).unwrap()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(budget.in_use(), 0, "nothing was buffered for it");
    for b in busy {
        assert_eq!(b.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_connection_is_a_504_not_the_clients_fault() {
    let up = Scripted::ok();
    let p = proxy(&route("  - backendRefs: [{name: reviews, port: 80}]\n    timeouts: {request: 2s}\n"), up);
    // The body is whole at the client, but nothing upstream has read it yet.
    let got = send(&p, req("POST", "/slow-connect").body(Full::new(Bytes::from_static(b"data"))).unwrap()).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
}
