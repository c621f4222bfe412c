//! Who a waypoint Gateway trusts, and who it lets in.
//!
//! - Its pods: those running as the service account its controller creates for it. The
//!   label `gateway.networking.k8s.io/gateway-name` alone is not enough, since any pod of
//!   the namespace may carry it, and a pod counted as the waypoint is never captured and
//!   its identity passes the destination's "came through the waypoint" check.
//! - Its users from other namespaces: only those its HBONE listener's
//!   `allowedRoutes.namespaces` admits (`Same` by default), as Istio reads it. Without
//!   this, `istio.io/use-waypoint-namespace` would let any namespace push its traffic (and
//!   its requests' contents) through any other namespace's waypoint.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use gateway_api::apis::experimental::gateways::{
    Gateway, GatewayListenersAllowedRoutesNamespacesFrom as FromNamespaces,
    GatewayListenersAllowedRoutesNamespacesSelector as Selector,
};
use kube::ResourceExt;

use crate::labels::GATEWAY_SERVICE_ACCOUNT;
use crate::waypoints::CLASS as PILLION_CLASS;

/// The service account a waypoint Gateway's pods run as. Pillion's controller always names
/// it after the Gateway (`waypoints::desired`); Istio's does too for `istio-waypoint`
/// (no class suffix) unless the Gateway's `gateway.istio.io/service-account` annotation
/// names another.
pub fn service_account(gw: &Gateway) -> String {
    let annotated = gw.annotations().get(GATEWAY_SERVICE_ACCOUNT).filter(|s| !s.is_empty());
    match annotated {
        Some(sa) if gw.spec.gateway_class_name != PILLION_CLASS => sa.clone(),
        _ => gw.name_any(),
    }
}

/// Which namespaces may send their traffic through a waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedNamespaces {
    /// Only the Gateway's own (`from: Same`, and the default).
    Same,
    All,
    /// Namespaces whose labels match.
    Selector(NamespaceSelector),
    /// A selector that cannot be evaluated: no other namespace is admitted, and this says why.
    Invalid(String),
}

impl AllowedNamespaces {
    /// From the listener Istio reads it from: the first on port 15008 with protocol HBONE.
    pub fn of(gw: &Gateway) -> Self {
        let listener = gw.spec.listeners.iter().find(|l| l.port == 15008 && l.protocol == "HBONE");
        let Some(ns) = listener.and_then(|l| l.allowed_routes.as_ref()).and_then(|a| a.namespaces.as_ref()) else {
            return Self::Same;
        };
        match ns.from {
            None | Some(FromNamespaces::Same) => Self::Same,
            Some(FromNamespaces::All) => Self::All,
            Some(FromNamespaces::Selector) => match &ns.selector {
                None => Self::Invalid("from: Selector without a selector".into()),
                Some(s) => NamespaceSelector::new(s).map_or_else(Self::Invalid, Self::Selector),
            },
        }
    }

    /// Whether a waypoint in `gateway_ns` serves objects of namespace `ns`, whose labels
    /// are `ns_labels` (`None`: a namespace not seen, read as having no labels). Its own
    /// namespace is always admitted: consent is about crossing namespaces.
    pub fn admits(&self, gateway_ns: &str, ns: &str, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        if ns == gateway_ns {
            return true;
        }
        match self {
            Self::Same | Self::Invalid(_) => false,
            Self::All => true,
            Self::Selector(s) => s.matches(ns_labels.unwrap_or(&BTreeMap::new())),
        }
    }

    /// For messages: what the listener says.
    pub fn describe(&self) -> String {
        match self {
            Self::Same => "admits only its own namespace (allowedRoutes.namespaces.from: Same, the default)".into(),
            Self::All => "admits every namespace".into(),
            Self::Selector(_) => "admits namespaces matching its allowedRoutes.namespaces.selector".into(),
            Self::Invalid(why) => {
                format!("admits only its own namespace: its allowedRoutes.namespaces is invalid ({why})")
            }
        }
    }
}

/// A Kubernetes label selector over namespace labels: every `matchLabels` pair and every
/// expression must hold; an empty selector matches every namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSelector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl NamespaceSelector {
    /// Refuses what the API server's validation would (an unknown operator, `In`/`NotIn`
    /// without values, `Exists`/`DoesNotExist` with values): the CRD's schema does not
    /// check them, and guessing could admit namespaces the owner never meant to.
    fn new(s: &Selector) -> Result<Self, String> {
        let mut expressions = Vec::new();
        for e in s.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            let expr = match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Expression::In(key, values),
                ("NotIn", false) => Expression::NotIn(key, values),
                ("Exists", true) => Expression::Exists(key),
                ("DoesNotExist", true) => Expression::DoesNotExist(key),
                ("In" | "NotIn", true) => return Err(format!("operator {} on {key:?} needs values", e.operator)),
                ("Exists" | "DoesNotExist", false) => {
                    return Err(format!("operator {} on {key:?} takes no values", e.operator));
                }
                (other, _) => {
                    return Err(format!(
                        "unknown operator {other:?} on {key:?}: use In, NotIn, Exists or DoesNotExist"
                    ));
                }
            };
            expressions.push(expr);
        }
        Ok(Self { labels: s.match_labels.clone().unwrap_or_default(), expressions })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}
