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

/// Parses Istio's wildcard value syntax: `*`, `prefix*`, `*suffix` or an exact value.
pub fn wildcard(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Present
    } else if let Some(rest) = s.strip_prefix('*') {
        StringMatch::Suffix(rest.to_owned())
    } else if let Some(rest) = s.strip_suffix('*') {
        StringMatch::Prefix(rest.to_owned())
    } else {
        StringMatch::Exact(s.to_owned())
    }
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

impl L7Rule {
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
                ConditionKey::Header(h) => r.headers.get(h).and_then(|v| v.to_str().ok()),
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
        self.targets.iter().any(|t| match t {
            PolicyTarget::Waypoint(name) => self.namespace == waypoint.namespace && *name == waypoint.name,
            PolicyTarget::Service(name) => self.namespace == service.namespace && *name == service.name,
        })
    }

    fn matches(&self, r: &RequestAttrs<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(r))
    }
}

/// Evaluates every policy that applies, DENY first.
pub fn authorize(policies: &[L7Policy], waypoint: &ServiceKey, service: &ServiceKey, r: &RequestAttrs<'_>) -> Decision {
    let applicable = || policies.iter().filter(|p| p.applies(waypoint, service));
    for p in applicable().filter(|p| p.action == Action::Deny) {
        if p.matches(r) {
            if p.dry_run {
                tracing::info!(policy = %p.key(), "dry-run DENY policy would deny this request");
                continue;
            }
            return Decision::Denied(p.key());
        }
    }
    let allows: Vec<&L7Policy> = applicable().filter(|p| p.action == Action::Allow && !p.dry_run).collect();
    if allows.is_empty() || allows.iter().any(|p| p.matches(r)) { Decision::Allow } else { Decision::NotAllowed }
}

/// Whether any policy binds to `service` (then the waypoint must see its requests at L7).
pub fn any_applies(policies: &[L7Policy], waypoint: &ServiceKey, service: &ServiceKey) -> bool {
    policies.iter().any(|p| p.applies(waypoint, service))
}
