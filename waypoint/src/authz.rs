//! L7 authorization: Istio `AuthorizationPolicy` rules that a waypoint enforces — those that
//! name the waypoint (`targetRefs` kind `Gateway`) or a Service behind it (kind `Service`) —
//! evaluated per request on the peer identity, method, path, host, port and headers.
//!
//! Istio's semantics: a matching DENY policy denies; otherwise, if any ALLOW policy applies,
//! one of them must match; with no policy applying, the request is allowed. Matchers and the
//! action type are the L4 model's (`mesh::model::authz`); only the L7 fields are new here.

#[cfg(test)]
mod tests;

use http::HeaderName;
use mesh::model::Action;
use mesh::model::authz::{Matcher, StringMatch};

use crate::route::ServiceKey;

/// What a policy is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// `kind: Gateway` with the waypoint's name: every request through the waypoint.
    Waypoint(String),
    Service(String),
    /// Every waypoint and Service of the policy's namespace: where a policy whose
    /// `targetRef(s)` cannot be read is enforced as deny-all (it may have meant any of them).
    Namespace,
}

#[derive(Debug, Clone)]
pub struct L7Policy {
    pub name: String,
    pub namespace: String,
    pub action: Action,
    pub targets: Vec<PolicyTarget>,
    pub rules: Vec<L7Rule>,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
}

/// Matches when any `from`, any `to` and every `when` match (absent parts match everything).
#[derive(Debug, Clone, Default)]
pub struct L7Rule {
    pub from: Vec<L7Source>,
    pub to: Vec<L7Operation>,
    pub when: Vec<L7Condition>,
}

#[derive(Debug, Clone, Default)]
pub struct L7Source {
    pub principals: Matcher<StringMatch>,
    pub namespaces: Matcher<StringMatch>,
}

#[derive(Debug, Clone, Default)]
pub struct L7Operation {
    pub hosts: Matcher<StringMatch>,
    pub ports: Matcher<u16>,
    pub methods: Matcher<StringMatch>,
    pub paths: Matcher<StringMatch>,
}

#[derive(Debug, Clone)]
pub enum ConditionKey {
    /// `request.headers[<name>]`
    Header(HeaderName),
    SourcePrincipal,
    SourceNamespace,
    RequestMethod,
    RequestPath,
}

#[derive(Debug, Clone)]
pub struct L7Condition {
    pub key: ConditionKey,
    pub values: Matcher<StringMatch>,
}

/// The request as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// Istio form, without `spiffe://`.
    pub principal: Option<&'a str>,
    pub source_namespace: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this DENY policy (`namespace/name`).
    Denied(String),
    /// ALLOW policies applied and none matched.
    NotAllowed,
}

fn matcher_ok<T>(m: &Matcher<T>, mut hit: impl FnMut(&T) -> bool) -> bool {
    (m.values.is_empty() || m.values.iter().any(&mut hit)) && !m.not_values.iter().any(hit)
}

fn strings_ok(m: &Matcher<StringMatch>, v: Option<&str>) -> bool {
    if m.is_empty() {
        return true;
    }
    // An attribute we do not know (no identity) matches no value, and no `not` value.
    match v {
        Some(v) => matcher_ok(m, |s| s.matches(v)),
        None => m.values.is_empty(),
    }
}

/// A tunnel the waypoint relays at L4, as policy sees it: only what a certificate and a
/// port tell (no method, path, host or header).
#[derive(Debug, Clone, Copy)]
pub struct ConnAttrs<'a> {
    /// Istio form, without `spiffe://`.
    pub principal: Option<&'a str>,
    pub source_namespace: Option<&'a str>,
    pub port: u16,
}

impl L7Operation {
    /// Whether it names anything only an HTTP request has.
    fn http_only(&self) -> bool {
        !(self.hosts.is_empty() && self.methods.is_empty() && self.paths.is_empty())
    }
}

impl ConditionKey {
    fn http_only(&self) -> bool {
        matches!(self, Self::Header(_) | Self::RequestMethod | Self::RequestPath)
    }
}

/// A header condition against every copy of the header, one by one and joined as Envoy
/// joins them: a value matches if any of these does, a `not` value excludes if any does, so
/// a second copy of a header can never hide the first from a DENY.
fn header_ok(m: &Matcher<StringMatch>, headers: &http::HeaderMap, name: &HeaderName) -> bool {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return strings_ok(m, None);
    }
    let joined = values.join(",");
    let candidates: Vec<&str> = values.iter().copied().chain((values.len() > 1).then_some(joined.as_str())).collect();
    matcher_ok(m, |s| candidates.iter().any(|v| s.matches(v)))
}

impl L7Rule {
    /// The rule against an L4 connection, as Istio's waypoint judges TCP traffic: a rule that
    /// names HTTP-only attributes never matches in an ALLOW policy, and in a DENY policy those
    /// attributes are taken as matching. Both fail closed.
    fn matches_conn(&self, c: &ConnAttrs<'_>, deny: bool) -> bool {
        let http_only = self.to.iter().any(L7Operation::http_only) || self.when.iter().any(|w| w.key.http_only());
        if http_only && !deny {
            return false;
        }
        let from = self.from.is_empty()
            || self
                .from
                .iter()
                .any(|s| strings_ok(&s.principals, c.principal) && strings_ok(&s.namespaces, c.source_namespace));
        let to = self.to.is_empty() || self.to.iter().any(|o| matcher_ok(&o.ports, |p| *p == c.port));
        let when = self.when.iter().all(|w| match &w.key {
            ConditionKey::SourcePrincipal => strings_ok(&w.values, c.principal),
            ConditionKey::SourceNamespace => strings_ok(&w.values, c.source_namespace),
            // Only reached in a DENY policy: taken as matching.
            ConditionKey::Header(_) | ConditionKey::RequestMethod | ConditionKey::RequestPath => true,
        });
        from && to && when
    }

    fn matches(&self, r: &RequestAttrs<'_>) -> bool {
        let from = self.from.is_empty()
            || self
                .from
                .iter()
                .any(|s| strings_ok(&s.principals, r.principal) && strings_ok(&s.namespaces, r.source_namespace));
        let to = self.to.is_empty()
            || self.to.iter().any(|o| {
                strings_ok(&o.methods, Some(r.method))
                    && strings_ok(&o.paths, Some(r.path))
                    && strings_ok(&o.hosts, Some(r.host))
                    && matcher_ok(&o.ports, |p| *p == r.port)
            });
        let when = self.when.iter().all(|c| {
            let value = match &c.key {
                ConditionKey::Header(h) => return header_ok(&c.values, r.headers, h),
                ConditionKey::SourcePrincipal => r.principal,
                ConditionKey::SourceNamespace => r.source_namespace,
                ConditionKey::RequestMethod => Some(r.method),
                ConditionKey::RequestPath => Some(r.path),
            };
            strings_ok(&c.values, value)
        });
        from && to && when
    }
}

impl L7Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy binds to requests for `service` through waypoint `waypoint`.
    pub fn applies(&self, waypoint: &ServiceKey, service: &ServiceKey) -> bool {
        self.binds_to_waypoint(waypoint) || self.binds_to_service(service)
    }

    fn binds_to_waypoint(&self, waypoint: &ServiceKey) -> bool {
        self.targets.iter().any(|t| match t {
            PolicyTarget::Waypoint(name) => self.namespace == waypoint.namespace && *name == waypoint.name,
            PolicyTarget::Namespace => self.namespace == waypoint.namespace,
            PolicyTarget::Service(_) => false,
        })
    }

    fn binds_to_service(&self, service: &ServiceKey) -> bool {
        self.targets.iter().any(|t| match t {
            PolicyTarget::Service(name) => self.namespace == service.namespace && *name == service.name,
            PolicyTarget::Namespace => self.namespace == service.namespace,
            PolicyTarget::Waypoint(_) => false,
        })
    }

    fn matches(&self, r: &RequestAttrs<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(r))
    }
}

/// Evaluates every policy that applies, DENY first.
pub fn authorize(policies: &[L7Policy], waypoint: &ServiceKey, service: &ServiceKey, r: &RequestAttrs<'_>) -> Decision {
    decide(policies.iter().filter(|p| p.applies(waypoint, service)), |p, _| p.matches(r))
}

/// Evaluates, for a tunnel relayed at L4, every policy that binds to the waypoint or to one
/// of `services` (those the destination belongs to), DENY first.
pub fn authorize_conn(
    policies: &[L7Policy],
    waypoint: &ServiceKey,
    services: &[ServiceKey],
    c: &ConnAttrs<'_>,
) -> Decision {
    let binds = |p: &&L7Policy| p.binds_to_waypoint(waypoint) || services.iter().any(|s| p.binds_to_service(s));
    decide(policies.iter().filter(binds), |p, deny| p.rules.iter().any(|r| r.matches_conn(c, deny)))
}

fn decide<'a>(
    applicable: impl Iterator<Item = &'a L7Policy> + Clone,
    matches: impl Fn(&L7Policy, bool) -> bool,
) -> Decision {
    for p in applicable.clone().filter(|p| p.action == Action::Deny) {
        if matches(p, true) {
            if p.dry_run {
                tracing::info!(policy = %p.key(), "dry-run DENY policy would deny this request");
                continue;
            }
            return Decision::Denied(p.key());
        }
    }
    let allows: Vec<&L7Policy> = applicable.filter(|p| p.action == Action::Allow && !p.dry_run).collect();
    if allows.is_empty() || allows.iter().any(|p| matches(p, false)) { Decision::Allow } else { Decision::NotAllowed }
}

/// Whether any policy binds to `service` (then the waypoint must see its requests at L7).
pub fn any_applies(policies: &[L7Policy], waypoint: &ServiceKey, service: &ServiceKey) -> bool {
    policies.iter().any(|p| p.applies(waypoint, service))
}
