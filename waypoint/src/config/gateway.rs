//! Gateway API `HTTPRoute` (v1, Service `parentRefs`) in its exact YAML shape, compiled into
//! the routing table's rules.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::Deserialize;

use super::Problem;
use super::document::Object;
use super::duration::parse_duration;
use super::grant::Grants;
use crate::fault::FaultInjection;
use crate::resilience::RetryPolicy;
use crate::route::{
    BackendRef, Filter, HeaderModifier, Mirror, PathMatch, PathRewrite, Redirect, Rewrite, RouteMatch, RouteRule,
    ServiceKey, Timeouts, ValueMatch, WeightedBackend,
};

/// The group of Pillion's own resources, as an `ExtensionRef` names it.
pub const PILLION_GROUP: &str = "pillion.dev";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpRouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    section_name: Option<String>,
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
    timeouts: Option<TimeoutsSpec>,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    session_persistence: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchSpec {
    #[serde(default)]
    path: Option<PathSpec>,
    #[serde(default)]
    headers: Vec<NameValueMatch>,
    #[serde(default)]
    query_params: Vec<NameValueMatch>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NameValueMatch {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    pub name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct FilterSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    request_mirror: Option<MirrorSpec>,
    #[serde(default)]
    request_redirect: Option<RedirectSpec>,
    #[serde(default)]
    url_rewrite: Option<RewriteSpec>,
    #[serde(default)]
    extension_ref: Option<ExtensionRefSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderModifierSpec {
    #[serde(default)]
    set: Vec<HeaderSpec>,
    #[serde(default)]
    add: Vec<HeaderSpec>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MirrorSpec {
    backend_ref: BackendRefSpec,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    fraction: Option<FractionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FractionSpec {
    numerator: u32,
    #[serde(default = "hundred")]
    denominator: u32,
}

fn hundred() -> u32 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RedirectSpec {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierSpec>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RewriteSpec {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PathModifierSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionRefSpec {
    group: String,
    kind: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct BackendRefSpec {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeoutsSpec {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    #[serde(default)]
    codes: Option<Vec<u16>>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<String>,
}

pub(super) type Parents = Vec<(ServiceKey, Option<u16>)>;

/// The rules of one HTTPRoute with the Service ports they attach to. Parents that are not
/// Services (a Gateway) are the ingress gateway's business and are ignored here.
pub(super) fn http_route(
    o: &Object<'_>,
    faults: &HashMap<ServiceKey, FaultInjection>,
    grants: &Grants,
) -> Result<Vec<(RouteRule, Parents)>, Problem> {
    let refs = Refs { faults, grants };
    let spec: HttpRouteSpec = o.spec()?;
    let _ = &spec.hostnames;
    let parents = service_parents(o, &spec.parent_refs);
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let route = format!("{}/{}", o.namespace, o.name);
    let mut out = Vec::new();
    for (index, r) in spec.rules.iter().enumerate() {
        let at = |msg: String| o.problem(format!("rules[{index}]: {msg}"));
        let _ = (&r.name, &r.session_persistence);
        let matches = r.matches.iter().map(|m| compile_match(m).map_err(&at)).collect::<Result<_, _>>()?;
        let filters = r.filters.iter().map(|f| compile_filter(o, f, &refs).map_err(&at)).collect::<Result<_, _>>()?;
        let backends = weighted_backends(o, &r.backend_refs, &refs).map_err(&at)?;
        let duration = |s: &Option<String>| s.as_deref().map(parse_duration).transpose().map_err(&at);
        let timeouts = match &r.timeouts {
            // `0s` disables the timeout, as in Gateway API.
            Some(t) => Timeouts {
                request: duration(&t.request)?.filter(|d| !d.is_zero()),
                backend_request: duration(&t.backend_request)?.filter(|d| !d.is_zero()),
            },
            None => Timeouts::default(),
        };
        let retry = match &r.retry {
            Some(s) => {
                let d = RetryPolicy::default();
                Some(RetryPolicy {
                    attempts: s.attempts.unwrap_or(d.attempts),
                    codes: s.codes.clone().unwrap_or(d.codes),
                    backoff: duration(&s.backoff)?.unwrap_or(d.backoff),
                    grpc: d.grpc,
                })
            }
            None => None,
        };
        out.push((
            RouteRule { route: route.clone(), index, matches, filters, backends, timeouts, retry },
            parents.clone(),
        ));
    }
    Ok(out)
}

/// The Services among a route's parents (a Gateway parent is the ingress gateway's business).
pub(super) fn service_parents(o: &Object<'_>, refs: &[ParentRef]) -> Parents {
    refs.iter()
        .filter(|p| p.kind.as_deref() == Some("Service") && p.group.as_deref().unwrap_or("").is_empty())
        .map(|p| {
            let _ = &p.section_name;
            (ServiceKey::new(p.namespace.as_deref().unwrap_or(o.namespace), &p.name), p.port)
        })
        .collect()
}

pub(super) fn weighted_backends(
    o: &Object<'_>,
    specs: &[BackendRefSpec],
    refs: &Refs<'_>,
) -> Result<Vec<WeightedBackend>, String> {
    specs
        .iter()
        .map(|b| {
            Ok(WeightedBackend {
                backend: backend_ref(o, b, refs.grants)?,
                weight: b.weight.unwrap_or(1),
                filters: b.filters.iter().map(|f| compile_filter(o, f, refs)).collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

pub(super) fn regex(v: &str) -> Result<Regex, String> {
    // Anchored: Gateway API (like Envoy) matches the whole value.
    Regex::new(&format!("^(?:{v})$")).map_err(|e| format!("invalid regular expression {v:?}: {e}"))
}

/// Header matches (HTTPRoute and GRPCRoute share the shape).
pub(super) fn header_matches(specs: &[NameValueMatch]) -> Result<Vec<(HeaderName, ValueMatch)>, String> {
    specs
        .iter()
        .map(|h| {
            let name =
                HeaderName::try_from(h.name.as_str()).map_err(|_| format!("{:?} is not a header name", h.name))?;
            Ok((name, value_match(h)?))
        })
        .collect()
}

pub(super) fn value_match(m: &NameValueMatch) -> Result<ValueMatch, String> {
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(m.value.clone())),
        "RegularExpression" => regex(&m.value).map(ValueMatch::Regex),
        other => Err(format!("match type {other:?} is not supported: use Exact or RegularExpression")),
    }
}

fn compile_match(m: &MatchSpec) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let v = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(v),
                "PathPrefix" => PathMatch::Prefix(v),
                "RegularExpression" => PathMatch::Regex(regex(&v)?),
                other => return Err(format!("path type {other:?}: use Exact, PathPrefix or RegularExpression")),
            }
        }
    };
    let headers = header_matches(&m.headers)?;
    let query = m.query_params.iter().map(|q| Ok((q.name.clone(), value_match(q)?))).collect::<Result<_, String>>()?;
    let method = m
        .method
        .as_deref()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not an HTTP method")))
        .transpose()?;
    Ok(RouteMatch { path, headers, query, method })
}

fn header_modifier(s: &HeaderModifierSpec) -> Result<HeaderModifier, String> {
    let pair = |h: &HeaderSpec| {
        let n = HeaderName::try_from(h.name.as_str()).map_err(|_| format!("{:?} is not a header name", h.name))?;
        let v = HeaderValue::try_from(h.value.as_str()).map_err(|_| format!("{:?} is not a header value", h.value))?;
        Ok::<_, String>((n, v))
    };
    Ok(HeaderModifier {
        set: s.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: s.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: s
            .remove
            .iter()
            .map(|n| HeaderName::try_from(n.as_str()).map_err(|_| format!("{n:?} is not a header name")))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(p: &PathModifierSpec) -> Result<PathRewrite, String> {
    match (p.kind.as_str(), &p.replace_full_path, &p.replace_prefix_match) {
        ("ReplaceFullPath", Some(v), _) => Ok(PathRewrite::Full(v.clone())),
        ("ReplacePrefixMatch", _, Some(v)) => Ok(PathRewrite::Prefix(v.clone())),
        (k, _, _) => Err(format!(
            "path modifier {k:?} needs its value: `type: ReplaceFullPath` with `replaceFullPath`, or `type: ReplacePrefixMatch` with `replacePrefixMatch`"
        )),
    }
}

/// What filters and backends of a route may refer to.
pub(super) struct Refs<'a> {
    pub faults: &'a HashMap<ServiceKey, FaultInjection>,
    pub grants: &'a Grants,
}

pub(super) fn backend_ref(o: &Object<'_>, b: &BackendRefSpec, grants: &Grants) -> Result<BackendRef, String> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    if kind != "Service" || !b.group.as_deref().unwrap_or("").is_empty() {
        return Err(format!("backendRef {:?} of kind {kind:?}: only core Services are supported", b.name));
    }
    let service = ServiceKey::new(b.namespace.as_deref().unwrap_or(o.namespace), &b.name);
    if !grants.permits(o.kind, o.namespace, &service) {
        return Err(format!(
            "backendRef to Service {service} is in another namespace and no ReferenceGrant in {ns} allows {kind}s of namespace {from} to refer to it: add one there (gateway.networking.k8s.io ReferenceGrant, from {kind}/{from}, to Service)",
            ns = service.namespace,
            from = o.namespace,
            kind = o.kind,
        ));
    }
    Ok(BackendRef { service, port: b.port })
}

pub(super) fn compile_filter(o: &Object<'_>, f: &FilterSpec, refs: &Refs<'_>) -> Result<Filter, String> {
    let missing = |field: &str| format!("filter type {} needs its `{field}` field", f.kind);
    match f.kind.as_str() {
        "RequestHeaderModifier" => Ok(Filter::RequestHeaders(header_modifier(
            f.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?,
        )?)),
        "ResponseHeaderModifier" => Ok(Filter::ResponseHeaders(header_modifier(
            f.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?,
        )?)),
        "RequestMirror" => {
            let m = f.request_mirror.as_ref().ok_or_else(|| missing("requestMirror"))?;
            let percent = match (&m.percent, &m.fraction) {
                (Some(p), _) => *p,
                (None, Some(fr)) if fr.denominator > 0 => f64::from(fr.numerator) * 100.0 / f64::from(fr.denominator),
                _ => 100.0,
            };
            Ok(Filter::Mirror(Mirror { backend: backend_ref(o, &m.backend_ref, refs.grants)?, percent }))
        }
        "URLRewrite" => {
            let r = f.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
            Ok(Filter::Rewrite(Rewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
            }))
        }
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
            let status = StatusCode::from_u16(r.status_code.unwrap_or(302))
                .ok()
                .filter(|s| s.is_redirection())
                .ok_or("requestRedirect.statusCode must be a 3xx code (301 or 302)")?;
            Ok(Filter::Redirect(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
                port: r.port,
                status,
            }))
        }
        "ExtensionRef" => {
            let e = f.extension_ref.as_ref().ok_or_else(|| missing("extensionRef"))?;
            if e.group != PILLION_GROUP || e.kind != "FaultInjection" {
                return Err(format!(
                    "extensionRef {}/{} is unknown: the waypoint supports group {PILLION_GROUP:?} kind \"FaultInjection\"",
                    e.group, e.kind
                ));
            }
            let key = ServiceKey::new(o.namespace, &e.name);
            refs.faults.get(&key).cloned().map(Filter::Fault).ok_or_else(|| {
                format!("extensionRef names FaultInjection {key}, which is not defined: add it to the file")
            })
        }
        other => Err(format!(
            "filter type {other:?} is not supported: use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, URLRewrite, RequestRedirect or ExtensionRef"
        )),
    }
}
