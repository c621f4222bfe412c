//! Gateway API `GRPCRoute` (v1, Service `parentRefs`), compiled into the same routing
//! table as HTTPRoutes: a gRPC call is an HTTP/2 POST to `/<service>/<method>`, so a method
//! match becomes a path match. Retries come from annotations, since GRPCRoute has no retry
//! field: `retry.pillion.dev/grpc` (gRPC statuses, by name) and `retry.pillion.dev/limit`
//! (retries after the first try), in the shape Linkerd users know.

use std::collections::HashMap;

use serde::Deserialize;

use super::Problem;
use super::document::Object;
use super::gateway::{
    BackendRefSpec, FilterSpec, NameValueMatch, ParentRef, Parents, Refs, compile_filter, header_matches, regex,
    service_parents, weighted_backends,
};
use super::grant::Grants;
use crate::fault::FaultInjection;
use crate::grpc::GrpcStatus;
use crate::resilience::RetryPolicy;
use crate::route::{PathMatch, RouteMatch, RouteRule, ServiceKey, Timeouts};

/// Annotation: gRPC statuses retried, comma-separated names (`unavailable,cancelled`).
pub const RETRY_GRPC: &str = "retry.pillion.dev/grpc";
/// Annotation: retries after the first try.
pub const RETRY_LIMIT: &str = "retry.pillion.dev/limit";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GrpcRouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<MatchSpec>,
    #[serde(default)]
    filters: Vec<FilterSpec>,
    #[serde(default)]
    backend_refs: Vec<BackendRefSpec>,
    #[serde(default)]
    session_persistence: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    method: Option<MethodSpec>,
    #[serde(default)]
    headers: Vec<NameValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

/// Filters a GRPCRoute may carry (Gateway API: no redirects or rewrites).
const FILTERS: [&str; 4] = ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];

pub(super) fn grpc_route(
    o: &Object<'_>,
    faults: &HashMap<ServiceKey, FaultInjection>,
    grants: &Grants,
) -> Result<Vec<(RouteRule, Parents)>, Problem> {
    let refs = Refs { faults, grants };
    let spec: GrpcRouteSpec = o.spec()?;
    let _ = &spec.hostnames;
    let parents = service_parents(o, &spec.parent_refs);
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let retry = retry(o.annotations).map_err(|e| o.problem(e))?;
    let route = format!("{}/{}", o.namespace, o.name);
    let mut out = Vec::new();
    for (index, r) in spec.rules.iter().enumerate() {
        let at = |msg: String| o.problem(format!("rules[{index}]: {msg}"));
        let _ = (&r.name, &r.session_persistence);
        let matches = r.matches.iter().map(|m| compile_match(m).map_err(&at)).collect::<Result<_, _>>()?;
        let filters = r
            .filters
            .iter()
            .chain(r.backend_refs.iter().flat_map(|b| &b.filters))
            .find(|f| !FILTERS.contains(&f.kind.as_str()));
        if let Some(f) = filters {
            return Err(at(format!(
                "filter type {:?} is not allowed on a GRPCRoute: use {}",
                f.kind,
                FILTERS.join(", ")
            )));
        }
        let filters = r.filters.iter().map(|f| compile_filter(o, f, &refs).map_err(&at)).collect::<Result<_, _>>()?;
        let backends = weighted_backends(o, &r.backend_refs, &refs).map_err(&at)?;
        let rule = RouteRule {
            route: route.clone(),
            index,
            matches,
            filters,
            backends,
            timeouts: Timeouts::default(),
            retry: retry.clone(),
        };
        out.push((rule, parents.clone()));
    }
    Ok(out)
}

/// A method match as a path match: `/<service>/<method>`, either part possibly absent.
fn compile_match(m: &MatchSpec) -> Result<RouteMatch, String> {
    let path = match &m.method {
        None => PathMatch::Prefix("/".into()),
        Some(s) => {
            let (service, method) = (s.service.as_deref(), s.method.as_deref());
            match s.kind.as_deref().unwrap_or("Exact") {
                "Exact" => {
                    for part in [service, method].into_iter().flatten() {
                        if part.is_empty() || part.contains('/') {
                            return Err(format!("gRPC method match part {part:?} must be non-empty, without '/'"));
                        }
                    }
                    match (service, method) {
                        (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                        (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                        (None, Some(m)) => PathMatch::Regex(regex(&format!("/[^/]+/{}", regex::escape(m)))?),
                        (None, None) => return Err("a gRPC method match needs `service`, `method` or both".into()),
                    }
                }
                "RegularExpression" => {
                    let s = service.unwrap_or("[^/]+");
                    let m = method.unwrap_or("[^/]+");
                    PathMatch::Regex(regex(&format!("/(?:{s})/(?:{m})"))?)
                }
                other => return Err(format!("method match type {other:?}: use Exact or RegularExpression")),
            }
        }
    };
    let headers = header_matches(&m.headers)?;
    Ok(RouteMatch { path, headers, query: Vec::new(), method: None })
}

/// The rule's retry policy from the route's annotations; `None` (Istio's default policy)
/// when neither is set.
fn retry(annotations: &std::collections::BTreeMap<String, String>) -> Result<Option<RetryPolicy>, String> {
    let (codes, limit) = (annotations.get(RETRY_GRPC), annotations.get(RETRY_LIMIT));
    if codes.is_none() && limit.is_none() {
        return Ok(None);
    }
    let mut policy = RetryPolicy::default();
    if let Some(codes) = codes {
        policy.grpc = codes
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                GrpcStatus::from_name(c).ok_or_else(|| {
                    format!(
                        "annotation {RETRY_GRPC}: {c:?} is not a gRPC status name (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, …)"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        // The statuses listed replace the default ones; HTTP codes are left to HTTPRoutes.
        policy.codes = Vec::new();
    }
    if let Some(l) = limit {
        policy.attempts =
            l.trim().parse().map_err(|_| format!("annotation {RETRY_LIMIT}: {l:?} is not a number of retries"))?;
    }
    Ok(Some(policy))
}
