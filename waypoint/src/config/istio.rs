//! Istio `DestinationRule`: only `trafficPolicy.connectionPool` (breaker limits, requests per
//! connection, idle timeout), `outlierDetection` and `loadBalancer` mean something to the
//! waypoint; the rest (TLS, subsets, locality settings) is accepted and ignored so that rules
//! users already have load unchanged.

use serde::Deserialize;

use super::Problem;
use super::document::Object;
use super::duration::parse_duration;
use crate::balance::{HashKey, LbPolicy};
use crate::resilience::{BackendPolicy, BreakerLimits, OutlierConfig, PoolSettings};
use crate::route::ServiceKey;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DestinationRuleSpec {
    host: String,
    #[serde(default)]
    traffic_policy: Option<TrafficPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicy {
    #[serde(default)]
    connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    outlier_detection: Option<OutlierSpec>,
    #[serde(default)]
    load_balancer: Option<LoadBalancerSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoadBalancerSpec {
    #[serde(default)]
    simple: Option<String>,
    #[serde(default)]
    consistent_hash: Option<ConsistentHashSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConsistentHashSpec {
    #[serde(default)]
    http_header_name: Option<String>,
    #[serde(default)]
    http_cookie: Option<CookieSpec>,
    #[serde(default)]
    use_source_ip: Option<bool>,
    #[serde(default)]
    http_query_parameter_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct CookieSpec {
    name: String,
}

fn load_balancer(o: &Object<'_>, lb: &LoadBalancerSpec) -> Result<LbPolicy, Problem> {
    if let Some(h) = &lb.consistent_hash {
        let key = match (&h.http_header_name, &h.http_cookie, h.use_source_ip, &h.http_query_parameter_name) {
            (Some(name), None, None | Some(false), None) => HashKey::Header(
                http::HeaderName::try_from(name.as_str())
                    .map_err(|_| o.problem(format!("consistentHash.httpHeaderName {name:?} is not a header name")))?,
            ),
            (None, Some(c), None | Some(false), None) => HashKey::Cookie(c.name.clone()),
            (None, None, Some(true), None) => HashKey::SourceIp,
            (None, None, None | Some(false), Some(q)) => HashKey::QueryParameter(q.clone()),
            _ => {
                return Err(o.problem(
                    "loadBalancer.consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp: true, httpQueryParameterName",
                ));
            }
        };
        return Ok(LbPolicy::ConsistentHash(key));
    }
    // Istio's default is LEAST_REQUEST; PASSTHROUGH (the original destination) has no
    // meaning behind a waypoint and falls back to it.
    match lb.simple.as_deref().unwrap_or("LEAST_REQUEST") {
        "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" | "PASSTHROUGH" => Ok(LbPolicy::LeastRequest),
        "ROUND_ROBIN" => Ok(LbPolicy::RoundRobin),
        "RANDOM" => Ok(LbPolicy::Random),
        other => Err(
            o.problem(format!("loadBalancer.simple {other:?}: use LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH"))
        ),
    }
}

#[derive(Deserialize, Default)]
struct ConnectionPool {
    #[serde(default)]
    tcp: Option<TcpPool>,
    #[serde(default)]
    http: Option<HttpPool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TcpPool {
    #[serde(default)]
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpPool {
    #[serde(default)]
    http1_max_pending_requests: Option<usize>,
    #[serde(default)]
    http2_max_requests: Option<usize>,
    #[serde(default)]
    max_requests_per_connection: Option<u32>,
    #[serde(default)]
    idle_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OutlierSpec {
    #[serde(default)]
    consecutive5xx_errors: Option<u32>,
    #[serde(default)]
    consecutive_gateway_errors: Option<u32>,
    /// Deprecated alias of `consecutive5xxErrors`.
    #[serde(default)]
    consecutive_errors: Option<u32>,
    #[serde(default)]
    base_ejection_time: Option<String>,
    #[serde(default)]
    max_ejection_percent: Option<f64>,
}

/// `host` as Istio accepts it: `name`, `name.namespace` or the full `…svc.<domain>` name.
fn service_of(host: &str, namespace: &str) -> ServiceKey {
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or(host);
    let ns = parts.next().unwrap_or(namespace);
    ServiceKey::new(ns, name)
}

/// The Service a rule is for, and what it sets (the retry budget is another object's).
pub(super) fn destination_rule(o: &Object<'_>) -> Result<(ServiceKey, BackendPolicy), Problem> {
    let spec: DestinationRuleSpec = o.spec()?;
    let service = service_of(&spec.host, o.namespace);
    let tp = spec.traffic_policy.unwrap_or_default();
    let mut limits = BreakerLimits::default();
    let mut pool_settings = PoolSettings::default();
    if let Some(pool) = tp.connection_pool {
        let tcp = pool.tcp.unwrap_or_default();
        let http = pool.http.unwrap_or_default();
        // Istio reads 0 as "unset" for these fields.
        let set = |v: Option<usize>, d: usize| v.filter(|v| *v > 0).unwrap_or(d);
        limits.max_connections = set(tcp.max_connections, limits.max_connections);
        limits.max_pending = set(http.http1_max_pending_requests, limits.max_pending);
        limits.max_requests = set(http.http2_max_requests, limits.max_requests);
        pool_settings.max_requests_per_connection = http.max_requests_per_connection.filter(|n| *n > 0);
        if let Some(t) = &http.idle_timeout {
            let t = parse_duration(t).map_err(|e| o.problem(format!("connectionPool.http.idleTimeout: {e}")))?;
            pool_settings.idle_timeout = (!t.is_zero()).then_some(t);
        }
    }
    let mut outlier = OutlierConfig::default();
    if let Some(od) = tp.outlier_detection {
        if let Some(n) = od.consecutive5xx_errors.or(od.consecutive_errors) {
            outlier.consecutive_5xx = (n > 0).then_some(n);
        }
        if let Some(n) = od.consecutive_gateway_errors {
            outlier.consecutive_gateway = (n > 0).then_some(n);
        }
        if let Some(t) = &od.base_ejection_time {
            outlier.base_ejection = parse_duration(t).map_err(|e| o.problem(format!("baseEjectionTime: {e}")))?;
        }
        if let Some(p) = od.max_ejection_percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(o.problem("outlierDetection.maxEjectionPercent must be within 0..100"));
            }
            outlier.max_ejection_percent = p;
        }
    }
    let lb = tp.load_balancer.as_ref().map(|lb| load_balancer(o, lb)).transpose()?.unwrap_or_default();
    Ok((service, BackendPolicy { limits, outlier, pool: pool_settings, lb, ..BackendPolicy::default() }))
}
