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
}

impl PeerAuthentication {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Model {
    /// The effective mode for plaintext arriving at `w` on `port`, never `Unset`.
    ///
    /// Precedence as in Istio: the workload's own (selector) policy, its port-level entry
    /// first; then the namespace policy; then the mesh policy (root namespace, no
    /// selector); `UNSET` at any level defers to the next. When several policies tie at one
    /// level, the first in the model wins (Istio picks the oldest; a file has no ages, so
    /// file order stands in for them).
    pub fn peer_auth_mode(&self, w: &Workload, port: u16) -> MtlsMode {
        let root = self.mesh.root_namespace.as_str();
        let all = &self.peer_authentications;
        // Same-namespace selector policies beat root-namespace selector policies.
        let workload = all
            .iter()
            .filter(|p| !p.selector.is_empty() && labels_match(&p.selector, &w.labels))
            .filter(|p| p.namespace == w.namespace())
            .chain(all.iter().filter(|p| {
                p.namespace == root
                    && p.namespace != w.namespace()
                    && !p.selector.is_empty()
                    && labels_match(&p.selector, &w.labels)
            }))
            .next();
        let namespace =
            all.iter().find(|p| p.selector.is_empty() && p.namespace == w.namespace() && p.namespace != root);
        let mesh = all.iter().find(|p| p.selector.is_empty() && p.namespace == root);

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
        }
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
}
