//! PeerAuthentication: whether a workload accepts plaintext.
//!
//! In ambient mode traffic between mesh workloads is always HBONE with mutual TLS, so the
//! mode only decides what happens to *plaintext* arriving at the inbound port: STRICT
//! rejects it; PERMISSIVE and DISABLE accept it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{Model, Workload, labels_match};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the enclosing scope (workload → namespace → mesh → PERMISSIVE).
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`; empty means namespace-wide (mesh-wide in the root
    /// namespace).
    pub selector: BTreeMap<String, String>,
    pub mode: MtlsMode,
    /// `spec.portLevelMtls`, keyed by the workload's port. Only meaningful with a selector.
    pub port_level: BTreeMap<u16, MtlsMode>,
    /// `metadata.creationTimestamp` in seconds since the epoch, from sources that know it
    /// (Kubernetes); it breaks ties between equally specific policies, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl PeerAuthentication {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Orders policies that tie at one level, the winner first: as Istio, the oldest, then
    /// by name (a Kubernetes timestamp has one-second resolution, so ties are common).
    /// Policies without a timestamp (the file source) compare equal, so the first in the
    /// model wins: file order, which the file's author controls.
    fn tie_key(&self) -> (Option<i64>, Option<&str>) {
        (self.created, self.created.map(|_| self.name.as_str()))
    }
}

/// The winner among policies tied at one level (`min_by_key` keeps the first of equals).
fn oldest<'a>(tied: impl Iterator<Item = &'a PeerAuthentication>) -> Option<&'a PeerAuthentication> {
    tied.min_by_key(|p| p.tie_key())
}

impl Model {
    /// The effective mode for plaintext arriving at `w` on `port`, never `Unset`.
    ///
    /// Precedence as in Istio: the workload's own (selector) policy, its port-level entry
    /// first; then the namespace policy; then the mesh policy (root namespace, no
    /// selector); `UNSET` at any level defers to the next. When several policies tie at one
    /// level, the oldest wins, then the first by name, as in Istio; a file has no ages, so
    /// there file order decides ([`PeerAuthentication::tie_key`]).
    pub fn peer_auth_mode(&self, w: &Workload, port: u16) -> MtlsMode {
        let root = self.mesh.root_namespace.as_str();
        let all = &self.peer_authentications;
        let selects = |p: &&PeerAuthentication| !p.selector.is_empty() && labels_match(&p.selector, &w.labels);
        // Same-namespace selector policies beat root-namespace selector policies.
        let workload = oldest(all.iter().filter(selects).filter(|p| p.namespace == w.namespace()))
            .or_else(|| oldest(all.iter().filter(selects).filter(|p| p.namespace == root)));
        let namespace =
            oldest(all.iter().filter(|p| p.selector.is_empty() && p.namespace == w.namespace() && p.namespace != root));
        let mesh = oldest(all.iter().filter(|p| p.selector.is_empty() && p.namespace == root));

        let chain = [
            workload.and_then(|p| p.port_level.get(&port).copied()),
            workload.map(|p| p.mode),
            namespace.map(|p| p.mode),
            mesh.map(|p| p.mode),
        ];
        chain.into_iter().flatten().find(|m| *m != MtlsMode::Unset).unwrap_or(MtlsMode::Permissive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MeshSettings, ModelBuilder};

    fn pa(ns: &str, name: &str, sel: &[(&str, &str)], mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuthentication {
        PeerAuthentication {
            name: name.into(),
            namespace: ns.into(),
            selector: sel.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            mode,
            port_level: ports.iter().copied().collect(),
            created: None,
        }
    }

    fn aged(created: i64, p: PeerAuthentication) -> PeerAuthentication {
        PeerAuthentication { created: Some(created), ..p }
    }

    fn model(pas: Vec<PeerAuthentication>) -> (Model, Workload) {
        let mut w = Workload::new("cluster.local", "shop", "cart-0", "cart").unwrap();
        w.labels.insert("app".into(), "cart".into());
        w.ips.push("10.0.0.1".parse().unwrap());
        let mut b = ModelBuilder::new(MeshSettings::default());
        b.workload(w.clone());
        for p in pas {
            b.peer_authentication(p);
        }
        (b.build(1).unwrap(), w)
    }

    use MtlsMode::*;

    #[test]
    fn precedence_table() {
        let root = "istio-system";
        let app = &[("app", "cart")][..];
        let other = &[("app", "other")][..];
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<PeerAuthentication>, u16, MtlsMode)> = vec![
            ("nothing → PERMISSIVE", vec![], 80, Permissive),
            ("mesh STRICT", vec![pa(root, "m", &[], Strict, &[])], 80, Strict),
            ("mesh UNSET → PERMISSIVE", vec![pa(root, "m", &[], Unset, &[])], 80, Permissive),
            ("namespace beats mesh", vec![pa(root, "m", &[], Strict, &[]), pa("shop", "n", &[], Permissive, &[])], 80, Permissive),
            ("namespace UNSET inherits mesh", vec![pa(root, "m", &[], Strict, &[]), pa("shop", "n", &[], Unset, &[])], 80, Strict),
            ("other namespace ignored", vec![pa("other", "n", &[], Strict, &[])], 80, Permissive),
            ("workload beats namespace", vec![pa("shop", "n", &[], Strict, &[]), pa("shop", "w", app, Disable, &[])], 80, Disable),
            ("non-matching selector ignored", vec![pa("shop", "n", &[], Strict, &[]), pa("shop", "w", other, Disable, &[])], 80, Strict),
            ("workload UNSET inherits namespace", vec![pa("shop", "n", &[], Strict, &[]), pa("shop", "w", app, Unset, &[])], 80, Strict),
            ("port level beats workload", vec![pa("shop", "w", app, Strict, &[(8080, Permissive)])], 8080, Permissive),
            ("port level only for its port", vec![pa("shop", "w", app, Strict, &[(8080, Permissive)])], 80, Strict),
            ("port level UNSET inherits workload", vec![pa("shop", "w", app, Strict, &[(8080, Unset)])], 8080, Strict),
            ("port level over inherited", vec![pa(root, "m", &[], Strict, &[]), pa("shop", "w", app, Unset, &[(9000, Disable)])], 9000, Disable),
            ("root selector applies across namespaces", vec![pa(root, "rw", app, Strict, &[])], 80, Strict),
            ("own-namespace selector beats root selector", vec![pa(root, "rw", app, Strict, &[]), pa("shop", "w", app, Permissive, &[])], 80, Permissive),
            ("first of tied policies wins", vec![pa("shop", "a", &[], Strict, &[]), pa("shop", "b", &[], Permissive, &[])], 80, Strict),
        ];
        for (name, pas, port, want) in cases {
            let (m, w) = model(pas);
            assert_eq!(m.peer_auth_mode(&w, port), want, "{name}");
        }
    }

    #[test]
    fn tied_policies_from_kubernetes_go_to_the_oldest_then_by_name() {
        let root = "istio-system";
        let app = &[("app", "cart")][..];
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<PeerAuthentication>, MtlsMode)> = vec![
            ("namespace: oldest wins over name and model order",
             vec![aged(200, pa("shop", "a", &[], Strict, &[])), aged(100, pa("shop", "b", &[], Permissive, &[]))], Permissive),
            ("namespace: same second, first by name",
             vec![aged(100, pa("shop", "b", &[], Permissive, &[])), aged(100, pa("shop", "a", &[], Strict, &[]))], Strict),
            ("workload: oldest selector policy",
             vec![aged(200, pa("shop", "a", app, Disable, &[])), aged(100, pa("shop", "b", app, Strict, &[]))], Strict),
            ("root workload policies: oldest",
             vec![aged(200, pa(root, "a", app, Disable, &[])), aged(100, pa(root, "b", app, Strict, &[]))], Strict),
            ("own namespace still beats an older root policy",
             vec![aged(100, pa(root, "r", app, Strict, &[])), aged(200, pa("shop", "w", app, Disable, &[]))], Disable),
            ("mesh: oldest",
             vec![aged(200, pa(root, "a", &[], Disable, &[])), aged(100, pa(root, "b", &[], Strict, &[]))], Strict),
            ("the winner's UNSET defers to the next level, not to the loser",
             vec![aged(100, pa("shop", "a", &[], Unset, &[])), aged(200, pa("shop", "b", &[], Strict, &[]))], Permissive),
        ];
        for (name, pas, want) in cases {
            let (m, w) = model(pas);
            assert_eq!(m.peer_auth_mode(&w, 80), want, "{name}");
        }
    }
}
