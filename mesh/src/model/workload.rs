//! A workload: one pod (or VM) the agent may carry traffic for.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::ModelError;
use crate::parse::Identity;

/// The Istio label that binds a workload, service or namespace to a waypoint. Its value is
/// the waypoint's name; `none` opts a workload or service out of its namespace's waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Names the waypoint's namespace when it is not the labelled object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";

/// How a workload takes part in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    /// In the mesh: reached over HBONE on port 15008 with mutual TLS.
    #[default]
    Hbone,
    /// Not in the mesh: the agent passes its traffic through in plaintext.
    None,
}

/// A reference to the Service that fronts a waypoint proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One workload. Name, namespace and service account are fixed at construction because the
/// identity is derived from them; everything else is plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    name: String,
    namespace: String,
    service_account: String,
    #[serde(serialize_with = "super::display")]
    identity: Identity,
    pub ips: Vec<IpAddr>,
    /// The node whose agent serves this workload.
    pub node: String,
    pub protocol: Protocol,
    pub labels: BTreeMap<String, String>,
    /// Filled in by [`super::ModelBuilder`] from the workload's or its namespace's
    /// `istio.io/use-waypoint` label; anything set by hand is overwritten there.
    pub waypoint: Option<WaypointRef>,
    /// The pod's uid, when the source knows it (the Kubernetes source, for
    /// this node's pods): the agent checks it against the enrolled pod's, so a
    /// re-created pod of the same name never inherits the old one's entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Where it runs beyond its node, for locality-aware endpoint choice.
    #[serde(skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
}

/// Region, zone and subzone (Kubernetes' `topology.kubernetes.io/region`/`zone` and
/// Istio's `topology.istio.io/subzone`); any may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subzone: Option<String>,
}

impl Locality {
    /// Istio's `region/zone/subzone` form (trailing parts optional, empty parts unknown).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.split('/').map(|p| Some(p.trim()).filter(|p| !p.is_empty()).map(str::to_owned));
        Self { region: parts.next().flatten(), zone: parts.next().flatten(), subzone: parts.next().flatten() }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_none() && self.zone.is_none() && self.subzone.is_none()
    }
}

impl Workload {
    /// Validates that the names form a SPIFFE identity under `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, name: &str, service_account: &str) -> Result<Self, ModelError> {
        let identity = Identity::new(trust_domain, namespace, service_account)
            .map_err(|source| ModelError::Identity { object: format!("Workload {namespace}/{name}"), source })?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            identity,
            ips: Vec::new(),
            node: String::new(),
            protocol: Protocol::Hbone,
            labels: BTreeMap::new(),
            waypoint: None,
            uid: None,
            locality: Locality::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// `false` for `protocol: NONE` workloads, whose traffic is passed through.
    pub fn in_mesh(&self) -> bool {
        self.protocol == Protocol::Hbone
    }

    /// The workload's first address of the same family as `like` (IPv4 for an IPv4 peer),
    /// falling back to its first address of any family.
    pub fn ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        let v4 = like.to_canonical().is_ipv4();
        self.ips.iter().copied().find(|ip| ip.is_ipv4() == v4).or_else(|| self.ips.first().copied())
    }
}

/// Resolves `istio.io/use-waypoint` on an object, falling back to its namespace's labels.
/// `none` on the object opts out of a namespace-level waypoint.
pub(crate) fn waypoint_from_labels(
    own_namespace: &str,
    labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Option<WaypointRef> {
    let pick = |l: &BTreeMap<String, String>| {
        l.get(USE_WAYPOINT_LABEL).map(|name| WaypointRef {
            namespace: l.get(USE_WAYPOINT_NAMESPACE_LABEL).cloned().unwrap_or_else(|| own_namespace.to_owned()),
            name: name.clone(),
        })
    };
    let chosen = pick(labels).or_else(|| namespace_labels.and_then(pick))?;
    (chosen.name != "none").then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identity_uses_trust_domain_namespace_and_service_account() {
        let w = Workload::new("example.org", "shop", "cart-0", "cart").unwrap();
        assert_eq!(w.identity().as_str(), "spiffe://example.org/ns/shop/sa/cart");
        assert!(Workload::new("cluster.local", "shop", "x", "bad/sa").is_err());
    }

    #[test]
    fn waypoint_label_on_object_beats_namespace_and_none_opts_out() {
        let ns = labels(&[(USE_WAYPOINT_LABEL, "ns-wp")]);
        let got = waypoint_from_labels("a", &labels(&[]), Some(&ns)).unwrap();
        assert_eq!(got, WaypointRef { namespace: "a".into(), name: "ns-wp".into() });
        let own = labels(&[(USE_WAYPOINT_LABEL, "mine"), (USE_WAYPOINT_NAMESPACE_LABEL, "infra")]);
        let got = waypoint_from_labels("a", &own, Some(&ns)).unwrap();
        assert_eq!(got.to_string(), "infra/mine");
        assert_eq!(waypoint_from_labels("a", &labels(&[(USE_WAYPOINT_LABEL, "none")]), Some(&ns)), None);
        assert_eq!(waypoint_from_labels("a", &labels(&[]), None), None);
    }

    #[test]
    fn ip_like_prefers_the_peer_family() {
        let mut w = Workload::new("cluster.local", "a", "w", "sa").unwrap();
        w.ips = vec!["fd00::5".parse().unwrap(), "10.0.0.5".parse().unwrap()];
        assert_eq!(w.ip_like("10.1.1.1".parse().unwrap()), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(w.ip_like("fd00::9".parse().unwrap()), Some("fd00::5".parse().unwrap()));
        w.ips.truncate(1);
        assert_eq!(w.ip_like("10.1.1.1".parse().unwrap()), Some("fd00::5".parse().unwrap()));
    }
}
