//! Gateway API `ReferenceGrant`: the consent a namespace gives for routes of other
//! namespaces to send to (or mirror into) its Services. Without one, a cross-namespace
//! `backendRef` would let any tenant point a route at any Service, with the waypoint's
//! identity as a confused deputy.

use serde::Deserialize;

use super::Problem;
use super::document::Object;
use crate::route::ServiceKey;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    from: Vec<From>,
    to: Vec<To>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct From {
    group: String,
    kind: String,
    namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    group: String,
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

/// One grant: routes of `from` kinds and namespaces may refer to Services of `namespace`
/// (all of them, or those named).
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    namespace: String,
    /// (route kind, namespace).
    from: Vec<(String, String)>,
    /// `None`: every Service of the namespace.
    services: Vec<Option<String>>,
}

/// Every grant in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants(Vec<Grant>);

impl Grants {
    pub fn add(&mut self, g: Grant) {
        self.0.push(g);
    }

    /// Whether a route of kind `route_kind` (`HTTPRoute`, `GRPCRoute`) in namespace
    /// `route_ns` may refer to `service`.
    pub fn permits(&self, route_kind: &str, route_ns: &str, service: &ServiceKey) -> bool {
        route_ns == service.namespace
            || self.0.iter().any(|g| {
                g.namespace == service.namespace
                    && g.from.iter().any(|(k, ns)| k == route_kind && ns == route_ns)
                    && g.services.iter().any(|s| s.as_deref().is_none_or(|n| n == service.name))
            })
    }
}

/// Reads one ReferenceGrant; entries for other kinds (Gateways, Secrets, …) are not the
/// waypoint's and are skipped.
pub(super) fn reference_grant(o: &Object<'_>) -> Result<Grant, Problem> {
    let spec: Spec = o.spec()?;
    let from = spec
        .from
        .into_iter()
        .filter(|f| f.group == GATEWAY_GROUP && matches!(f.kind.as_str(), "HTTPRoute" | "GRPCRoute"))
        .map(|f| (f.kind, f.namespace))
        .collect();
    let services = spec.to.into_iter().filter(|t| t.group.is_empty() && t.kind == "Service").map(|t| t.name).collect();
    Ok(Grant { namespace: o.namespace.to_owned(), from, services })
}
