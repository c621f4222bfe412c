//! The compiled routing table: Gateway API `HTTPRoute` rules attached to Services, ordered
//! once by Gateway API precedence so that a request takes the first rule that matches.

mod filters;
mod matcher;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

pub use filters::{Filter, HeaderModifier, Mirror, PathRewrite, Redirect, Rewrite, rewrite_path, with_path};
pub use matcher::{PathMatch, RouteMatch, ValueMatch};

use crate::resilience::RetryPolicy;

/// A Service as routes and policies name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a rule sends traffic: a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub service: ServiceKey,
    /// The Service port; `None` means the port the client addressed.
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct WeightedBackend {
    pub backend: BackendRef,
    pub weight: u32,
    /// Filters that apply only when this backend is chosen.
    pub filters: Vec<Filter>,
}

/// `timeouts` of a rule. `None`: no limit (Gateway API leaves the default to the
/// implementation; like Istio, Pillion sets none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// One rule of one HTTPRoute.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// `namespace/name` of the HTTPRoute, for logs and ordering ties.
    pub route: String,
    /// Position of the rule in its route (ties are broken by it).
    pub index: usize,
    /// An empty list matches every request (Gateway API's default `PathPrefix /`).
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    /// Empty: nothing to send to; the request gets 500 unless a redirect answered it.
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
    /// `None`: the built-in default ([`RetryPolicy::default`]).
    pub retry: Option<RetryPolicy>,
}

/// The rules that apply to one Service (and optionally only one of its ports).
#[derive(Debug, Clone)]
struct Attached {
    port: Option<u16>,
    /// `Some(ns)`: a consumer route (GAMMA), written in namespace `ns` for a Service of
    /// another namespace. It applies only to clients of namespace `ns`; `None`: a producer
    /// route, from the Service's own namespace, for every client.
    consumer: Option<String>,
    rule: usize,
    matcher: usize,
}

impl Attached {
    fn serves(&self, port: u16, consumer: Option<&str>) -> bool {
        self.port.is_none_or(|p| p == port) && self.consumer.as_deref() == consumer
    }
}

/// Every rule, ordered per Service by precedence.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    rules: Vec<RouteRule>,
    by_service: HashMap<ServiceKey, Vec<Attached>>,
}

/// The rule and match a request selected.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub rule: &'a RouteRule,
    pub matched: Option<&'a RouteMatch>,
}

impl RouteTable {
    /// Adds a rule of a route in namespace `route_namespace` attached to `parents` (Service,
    /// optional port). A parent in another namespace makes it a consumer route there.
    pub fn add(&mut self, rule: RouteRule, route_namespace: &str, parents: &[(ServiceKey, Option<u16>)]) {
        let i = self.rules.len();
        let n = rule.matches.len().max(1);
        self.rules.push(rule);
        for (service, port) in parents {
            let consumer = (service.namespace != route_namespace).then(|| route_namespace.to_owned());
            let list = self.by_service.entry(service.clone()).or_default();
            for m in 0..n {
                list.push(Attached { port: *port, consumer: consumer.clone(), rule: i, matcher: m });
            }
        }
    }

    /// Whose routes a client of namespace `client` gets for `service:port`: its own
    /// namespace's consumer routes when it has any (they take precedence, as GAMMA says),
    /// otherwise the producer routes.
    fn scope<'a>(&self, service: &ServiceKey, port: u16, client: Option<&'a str>) -> Option<Option<&'a str>> {
        let list = self.by_service.get(service)?;
        let consumer = client.filter(|c| *c != service.namespace && list.iter().any(|a| a.serves(port, Some(c))));
        match consumer {
            Some(c) => Some(Some(c)),
            None => list.iter().any(|a| a.serves(port, None)).then_some(None),
        }
    }

    /// Sorts every Service's rules by Gateway API precedence; call once after adding.
    pub fn finish(&mut self) {
        let rules = &self.rules;
        for list in self.by_service.values_mut() {
            list.sort_by(|a, b| {
                let (ra, rb) = (&rules[a.rule], &rules[b.rule]);
                let ka = ra.matches.get(a.matcher).map(RouteMatch::precedence).unwrap_or_default();
                let kb = rb.matches.get(b.matcher).map(RouteMatch::precedence).unwrap_or_default();
                // Higher precedence first; then route name, rule position, match position.
                kb.cmp(&ka)
                    .then_with(|| ra.route.cmp(&rb.route))
                    .then_with(|| ra.index.cmp(&rb.index))
                    .then_with(|| a.matcher.cmp(&b.matcher))
            });
        }
    }

    /// Whether any rule for a client of namespace `client` is attached to this Service port
    /// (otherwise it is passed through at L4).
    pub fn has_routes(&self, service: &ServiceKey, port: u16, client: Option<&str>) -> bool {
        self.scope(service, port, client).is_some()
    }

    /// The first rule, in precedence order, whose match accepts the request of a client of
    /// namespace `client` (its verified identity's).
    pub fn select<'a>(
        &'a self,
        service: &ServiceKey,
        port: u16,
        client: Option<&str>,
        req: &http::request::Parts,
    ) -> Option<Selected<'a>> {
        let scope = self.scope(service, port, client)?;
        let list = self.by_service.get(service)?;
        list.iter().filter(|a| a.serves(port, scope)).find_map(|a| {
            let rule = &self.rules[a.rule];
            match rule.matches.get(a.matcher) {
                None => Some(Selected { rule, matched: None }),
                Some(m) if m.matches(req) => Some(Selected { rule, matched: Some(m) }),
                Some(_) => None,
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
