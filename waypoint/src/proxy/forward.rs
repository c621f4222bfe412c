//! Backend and endpoint choice, and the retry loop with its timeouts, budget, circuit
//! breaker and outlier ejection.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use mesh::Identity;
use mesh::model::{TrafficDistribution, WaypointRef};
use mesh::telemetry::Peer;

use super::replay::{ClientFailure, Replay};
use super::respond::{Context, ResponseFlags};
use super::{Proxy, Snapshot, Trace};
use crate::balance::{Place, closest};
use crate::resilience::{Outcome, RetryPolicy};
use crate::rng::Rng;
use crate::route::{BackendRef, RouteRule, ServiceKey, WeightedBackend};
use crate::upstream::{ResponseBody, Target, UpstreamError};

pub(crate) type Failure = (StatusCode, ResponseFlags, &'static str);

/// Where a request goes: the backend Service, the port it was addressed on, and the upgrade
/// the client asked for.
pub(super) struct To<'a> {
    pub backend: &'a BackendRef,
    pub port: u16,
    pub upgrade: Option<&'a super::upgrade::Requested>,
}

/// The rule used for a Service that has L7 policy but no HTTPRoute: everything to itself.
pub(super) fn default_rule(service: &ServiceKey) -> RouteRule {
    RouteRule {
        route: "-".into(),
        index: 0,
        matches: Vec::new(),
        filters: Vec::new(),
        backends: vec![WeightedBackend {
            backend: BackendRef { service: service.clone(), port: None },
            weight: 1,
            filters: Vec::new(),
        }],
        timeouts: Default::default(),
        retry: None,
    }
}

/// Weighted random choice; weight-0 backends are never chosen.
pub(super) fn pick_backend<'a>(backends: &'a [WeightedBackend], rng: &Rng) -> Option<&'a WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut n = rng.below(total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if n < w {
            true
        } else {
            n -= w;
            false
        }
    })
}

/// One endpoint of a backend Service port.
#[derive(Debug, Clone)]
pub(crate) struct EndpointInfo {
    pub addr: SocketAddr,
    pub identity: Identity,
    pub peer: Peer,
    /// In the mesh: reached over HBONE (else plain TCP).
    pub hbone: bool,
    pub node: String,
    pub locality: mesh::model::Locality,
}

impl EndpointInfo {
    pub fn place(&self) -> Place<'_> {
        Place { node: &self.node, locality: &self.locality }
    }
}

/// The Service's `trafficDistribution`, if it asks for close endpoints.
pub(crate) fn distribution(snapshot: &Snapshot, backend: &BackendRef) -> Option<TrafficDistribution> {
    snapshot.model.service(&backend.service.namespace, &backend.service.name)?.traffic_distribution
}

/// `candidates` narrowed to the closest to the waypoint when the Service asks for it.
pub(crate) fn nearby<'a>(
    candidates: &'a [SocketAddr],
    all: &[EndpointInfo],
    me: Option<Place<'_>>,
    d: Option<TrafficDistribution>,
) -> Cow<'a, [SocketAddr]> {
    let (Some(me), Some(d)) = (me, d) else { return Cow::Borrowed(candidates) };
    let placed: Vec<(SocketAddr, Place<'_>)> =
        all.iter().filter(|e| candidates.contains(&e.addr)).map(|e| (e.addr, e.place())).collect();
    Cow::Owned(closest(&placed, &me, d))
}

/// The endpoints behind `backend` (at `port` when the backendRef names none).
pub(crate) fn endpoints(snapshot: &Snapshot, backend: &BackendRef, port: u16) -> Vec<EndpointInfo> {
    let model = &snapshot.model;
    let Some(service) = model.service(&backend.service.namespace, &backend.service.name) else {
        return Vec::new();
    };
    let Some(sp) = service.port(backend.port.unwrap_or(port)) else {
        return Vec::new();
    };
    let svc = WaypointRef { namespace: service.namespace.clone(), name: service.name.clone() };
    model
        .waypoint_workloads(&svc)
        .filter_map(|w| {
            let ip = w.ips.iter().find(|ip| ip.is_ipv4()).or(w.ips.first())?;
            Some(EndpointInfo {
                addr: SocketAddr::new(*ip, sp.target_port),
                identity: w.identity().clone(),
                peer: Peer::workload(w.name(), w.namespace()).pod_labels(&w.labels).identity(w.identity()),
                hbone: w.in_mesh(),
                node: w.node.clone(),
                locality: w.locality.clone(),
            })
        })
        .collect()
}

/// Whether to speak HTTP/2 to the backend's endpoints. The Service port's name decides where
/// it says (Istio's convention: `http2`, `grpc*`, `h2c` → HTTP/2; `http`, `http-*` →
/// HTTP/1.1 except gRPC, which needs HTTP/2's trailers); otherwise the client's protocol.
pub(super) fn upstream_http2(
    snapshot: &Snapshot,
    backend: &BackendRef,
    port: u16,
    version: http::Version,
    headers: &http::HeaderMap,
) -> bool {
    let name = snapshot
        .model
        .service(&backend.service.namespace, &backend.service.name)
        .and_then(|s| s.port(backend.port.unwrap_or(port)))
        .map(|p| p.name.to_ascii_lowercase())
        .unwrap_or_default();
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let named = |p: &str| name == p || name.strip_prefix(p).is_some_and(|r| r.starts_with('-'));
    if named("http2") || named("grpc") || named("grpc-web") || named("h2c") {
        true
    } else if named("http") {
        grpc
    } else {
        version == http::Version::HTTP_2
    }
}

/// Puts the request in the form the upstream connection needs.
pub(super) fn upstream_form<B>(request: &mut Request<B>, http2: bool) {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| "localhost".into());
    let pq = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let uri = if http2 { format!("http://{authority}{pq}") } else { pq };
    if let Ok(u) = uri.parse::<Uri>() {
        *request.uri_mut() = u;
    }
    if !http2
        && !request.headers().contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(&authority)
    {
        request.headers_mut().insert(http::header::HOST, v);
    }
    *request.version_mut() = if http2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
    strip_hop_by_hop(request.headers_mut());
}

/// Appends the client's address to `X-Forwarded-For` (as Envoy does): the backend's
/// connection comes from the waypoint, so this is where the app finds its client. Earlier
/// entries came from the client and are kept but not vouched for; the last one is ours.
pub(crate) fn append_forwarded_for(headers: &mut http::HeaderMap, client: std::net::IpAddr) {
    let client = client.to_canonical();
    let joined = match headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>() {
        earlier if earlier.is_empty() => client.to_string(),
        earlier => format!("{}, {client}", earlier.join(", ")),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers never cross a proxy, nor do the headers `Connection` names; `te:
/// trailers` is end to end in practice (gRPC requires it) and is kept.
pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|h| h.trim().to_ascii_lowercase()))
        .filter(|h| !h.is_empty())
        .collect();
    for h in named.iter().map(String::as_str).chain([
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ]) {
        headers.remove(h);
    }
    let trailers_only = headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(http::header::TE);
    }
}

impl Proxy {
    /// Forwards with the rule's retry policy, per-try timeout and the request's `deadline`.
    #[expect(clippy::too_many_arguments, reason = "the request's pieces, each needed once")]
    pub(super) async fn forward(
        self: &Arc<Self>,
        ctx: &mut Context,
        snapshot: &Snapshot,
        rule: &RouteRule,
        to: To<'_>,
        head: http::request::Parts,
        replay: &Replay,
        trace: Trace,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Response<ResponseBody>, ResponseFlags), Failure> {
        let (backend, port) = (to.backend, to.port);
        let mut head = Request::from_parts(head, ());
        // Upgrades go to the backend as HTTP/1.1 upgrades.
        let http2 = to.upgrade.is_none() && upstream_http2(snapshot, backend, port, head.version(), head.headers());
        upstream_form(&mut head, http2);
        if let Some(up) = to.upgrade {
            super::upgrade::upstream_head(&mut head, up, &self.rng);
        }
        let attempts = self.attempts(ctx, snapshot, rule, backend, port, &head, replay, http2, trace);
        match deadline {
            // The request timeout covers the whole exchange (Gateway API), counted from the
            // request's arrival: the response headers here, the body through the wrapper.
            Some(deadline) => match tokio::time::timeout_at(deadline, attempts).await {
                Ok(result) => {
                    let (response, flags) = result?;
                    Ok((response.map(|b| super::deadline::until(b, deadline)), flags))
                }
                // Still waiting for the client's body: the client is the slow one.
                Err(_) if replay.waiting_on_client() => {
                    Err((StatusCode::REQUEST_TIMEOUT, ResponseFlags::NONE, "request body timeout"))
                }
                Err(_) => {
                    Err((StatusCode::GATEWAY_TIMEOUT, ResponseFlags::UPSTREAM_TIMEOUT, "upstream request timeout"))
                }
            },
            None => attempts.await,
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the request's pieces, each needed once")]
    async fn attempts(
        self: &Arc<Self>,
        ctx: &mut Context,
        snapshot: &Snapshot,
        rule: &RouteRule,
        backend: &BackendRef,
        port: u16,
        head: &Request<()>,
        replay: &Replay,
        http2: bool,
        trace: Trace,
    ) -> Result<(Response<ResponseBody>, ResponseFlags), Failure> {
        let default_retry = RetryPolicy::default();
        let retry = rule.retry.as_ref().unwrap_or(&default_retry);
        let scoped = snapshot.l7.scoped_backend_policy(&backend.service, ctx.client_namespace.as_deref());
        let state = self.backends.get(backend, &scoped);
        state.budget.record_request();
        let all = endpoints(snapshot, backend, port);
        if all.is_empty() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::NO_HEALTHY_UPSTREAM, "no healthy upstream"));
        }
        let addrs: Vec<SocketAddr> = all.iter().map(|e| e.addr).collect();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let spread = distribution(snapshot, backend);
        // Where the waypoint runs matters only to a Service that prefers close endpoints.
        let me = spread.and_then(|_| self.me(snapshot));
        let me = me.map(|w| Place { node: &w.node, locality: &w.locality });
        let hash = match &state.policy.lb {
            crate::balance::LbPolicy::ConsistentHash(key) => key.of(head.headers(), head.uri(), ctx.client),
            _ => None,
        };
        for attempt in 0..=retry.attempts {
            if attempt > 0 {
                tokio::time::sleep(retry.backoff_for(attempt, &self.rng)).await;
            }
            // Prefer endpoints not tried yet for this request, among those not ejected.
            let available = state.outlier.available(&addrs);
            let fresh: Vec<SocketAddr> = available.iter().copied().filter(|a| !tried.contains(a)).collect();
            let pool = if fresh.is_empty() { &available } else { &fresh };
            let pool = nearby(pool, &all, me, spread);
            let addr = state.balancer.pick(&state.policy.lb, &pool, hash, &self.rng);
            let ep = all.iter().find(|e| e.addr == addr).expect("chosen from the endpoint list");
            tried.push(addr);
            ctx.attempts = attempt + 1;
            ctx.upstream = addr.to_string();
            ctx.destination = ep.peer.clone();

            let in_flight = state.balancer.start(addr);
            let Ok(permit) = state.breaker.acquire().await else {
                return Err((StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::UPSTREAM_OVERFLOW, "upstream overflow"));
            };
            // Tries after the first are made only while the body is kept (checked below).
            let Some(body) = replay.attempt() else {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::RETRY_BUFFER_OVERFLOW,
                    "request not retryable",
                ));
            };
            let mut req = head.clone().map(|()| body.boxed());
            // Envoy's header: lets backends (and tests) see which try this is.
            if let Ok(v) = HeaderValue::from_str(&(attempt + 1).to_string()) {
                req.headers_mut().insert("x-envoy-attempt-count", v);
            }
            let target = Target {
                addr,
                identity: ep.identity.clone(),
                service: backend.service.clone(),
                http2,
                hbone: ep.hbone,
                traceparent: Some(trace.header()),
                forwarded: ctx.forwarded.clone(),
                pool: state.policy.pool,
            };
            let sent = self.upstream.send(&target, req);
            let result = match rule.timeouts.backend_request {
                Some(t) => tokio::time::timeout(t, sent).await.ok(),
                None => Some(sent.await),
            };
            // A try is due within `attempts`; it is made if the body can be sent again and
            // the retry budget has one (taken here, when the retry is decided).
            let due = attempt < retry.attempts;
            let outgrew = || due && !replay.replayable();
            let may_retry = || {
                if !due || outgrew() {
                    return false;
                }
                let ok = state.budget.try_retry();
                if !ok {
                    tracing::debug!(backend = %backend.service, "retry budget exhausted; not retrying");
                }
                ok
            };
            let failure: Failure = match result {
                Some(Ok(response)) => {
                    let code = response.status().as_u16();
                    let outcome = if code >= 500 { Outcome::Status(code) } else { Outcome::Success };
                    if state.outlier.record(addr, outcome, addrs.len()).is_some() {
                        self.upstream.forget(addr);
                    }
                    let retried = retry.retries_response(code, response.headers());
                    if retried && may_retry() {
                        // Drop the body: the connection closes, nothing reached the client.
                        continue;
                    }
                    let flags = if retried && outgrew() {
                        ResponseFlags::RETRY_BUFFER_OVERFLOW
                    } else if retried {
                        ResponseFlags::RETRY_LIMIT_EXCEEDED
                    } else {
                        ResponseFlags::NONE
                    };
                    // The slot stays taken until the body is done: a streaming response is
                    // still a request in flight for the circuit breaker.
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Ok((
                        Response::from_parts(parts, super::deadline::holding(body, (permit, in_flight))),
                        flags,
                    ));
                }
                Some(Err(e)) => {
                    // The client's body broke off: not the endpoint's fault, and nothing to retry.
                    match replay.client_failure() {
                        Some(ClientFailure::Aborted) => {
                            return Err((
                                StatusCode::BAD_REQUEST,
                                ResponseFlags::DOWNSTREAM_RESET,
                                "request body aborted",
                            ));
                        }
                        Some(ClientFailure::Stalled) => {
                            return Err((StatusCode::REQUEST_TIMEOUT, ResponseFlags::NONE, "request body timeout"));
                        }
                        None => {}
                    }
                    if state.outlier.record(addr, Outcome::LocalFailure, addrs.len()).is_some() {
                        self.upstream.forget(addr);
                    }
                    tracing::debug!(error = %e, attempt, "upstream attempt failed");
                    match e {
                        UpstreamError::Connect { .. } => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            ResponseFlags::UPSTREAM_CONNECT_FAILURE,
                            "upstream connect error or disconnect/reset before headers",
                        ),
                        UpstreamError::Reset { .. } => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            ResponseFlags::UPSTREAM_RESET,
                            "upstream connect error or disconnect/reset before headers",
                        ),
                    }
                }
                None => {
                    if state.outlier.record(addr, Outcome::LocalFailure, addrs.len()).is_some() {
                        self.upstream.forget(addr);
                    }
                    (StatusCode::GATEWAY_TIMEOUT, ResponseFlags::UPSTREAM_TIMEOUT, "upstream request timeout")
                }
            };
            if !may_retry() {
                // No try produced a response to pass on; answer locally.
                let (status, flags, msg) = failure;
                return Err(if outgrew() { (status, flags.with_retry_buffer_overflow(), msg) } else { failure });
            }
        }
        // Not reached: the last try never retries. Kept total rather than panicking.
        Err((StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::RETRY_LIMIT_EXCEEDED, "upstream retry limit exceeded"))
    }
}

#[cfg(test)]
mod forwarded_for_tests {
    use super::*;

    #[test]
    fn the_client_is_appended_after_what_it_sent() {
        let mut h = http::HeaderMap::new();
        append_forwarded_for(&mut h, "10.1.2.2".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.1.2.2");
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        append_forwarded_for(&mut h, "::ffff:10.1.2.2".parse().unwrap());
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.1, 10.1.2.2");
        append_forwarded_for(&mut h, "fd00::2".parse().unwrap());
        assert!(h["x-forwarded-for"].to_str().unwrap().ends_with(", fd00::2"));
    }
}
