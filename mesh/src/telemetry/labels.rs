//! Istio's standard TCP label set, and how to fill it from what the agent knows about a pod.
//!
//! Names, order and defaults follow Istio's "standard metrics" reference and what ztunnel
//! exports, so existing dashboards (Kiali, Grafana's Istio boards) work unchanged: every label
//! is always present and anything unknown is the literal `unknown`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::parse::Identity;

/// Istio's value for anything the reporter does not know.
pub const UNKNOWN: &str = "unknown";
/// Istio's canonical revision when a workload names none.
const DEFAULT_REVISION: &str = "latest";
/// `response_flags` of a connection without an Envoy-style failure flag.
const NO_FLAGS: &str = "-";

/// Which proxy reports: the one beside the client (`source`), beside the server
/// (`destination`), or a waypoint in between (`waypoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
    Waypoint,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// `connection_security_policy`: whether the reporter saw the connection under mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    /// Plaintext, passthrough, or not known by this reporter.
    Unknown,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Unknown => UNKNOWN,
        }
    }
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The labels of every `istio_tcp_*` series, in Istio's order. Build with
/// [`ConnectionLabels::new`] rather than by hand: it applies Istio's defaults and escapes the
/// values for the exposition format (the string fields hold escaped text).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: SecurityPolicy,
}

/// One end of a connection as far as the reporter knows it. Start from [`Peer::workload`] for
/// a known pod or [`Peer::unknown`] for anything outside the mesh, then add what is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub workload: Option<String>,
    pub namespace: Option<String>,
    /// The SPIFFE ID, e.g. `spiffe://cluster.local/ns/default/sa/sleep`.
    pub principal: Option<String>,
    pub canonical_service: Option<String>,
    pub canonical_revision: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub cluster: Option<String>,
}

impl Peer {
    /// A peer the reporter knows nothing about (all labels `unknown`).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A mesh workload. `name` is the workload (the Deployment's name where known, as Istio
    /// reports it), not necessarily the pod's.
    pub fn workload(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self { workload: Some(name.into()), namespace: Some(namespace.into()), ..Self::default() }
    }

    /// The principal from a verified identity (a peer certificate, or our own workload's).
    pub fn identity(mut self, identity: &Identity) -> Self {
        self.principal = Some(identity.as_str().to_owned());
        self
    }

    /// The principal Istio would issue this workload: `spiffe://<td>/ns/<namespace>/sa/<sa>`.
    /// Without a namespace the principal stays unknown rather than being made up.
    pub fn service_account(mut self, trust_domain: &str, service_account: &str) -> Self {
        if let Some(ns) = self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            self.principal = Some(format!("spiffe://{trust_domain}/ns/{ns}/sa/{service_account}"));
        }
        self
    }

    /// Any principal string, e.g. one read from a peer certificate that is not in Istio form.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// Derives canonical service and revision, app and version from Kubernetes pod labels
    /// with Istio's precedence: `service.istio.io/canonical-*`, then `app.kubernetes.io/*`,
    /// then `app`/`version`; the service falls back to the workload name and the revision to
    /// `latest`. `app`/`version` prefer their own labels and fall back to the canonical values,
    /// as ztunnel does.
    pub fn pod_labels<K, V>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let labels: Vec<(K, V)> = labels.into_iter().collect();
        let get = |key: &str| {
            labels.iter().find(|(k, v)| k.as_ref() == key && !v.as_ref().is_empty()).map(|(_, v)| v.as_ref().to_owned())
        };
        let service = get("service.istio.io/canonical-name")
            .or_else(|| get("app.kubernetes.io/name"))
            .or_else(|| get("app"))
            .or_else(|| self.workload.clone());
        let revision = get("service.istio.io/canonical-revision")
            .or_else(|| get("app.kubernetes.io/version"))
            .or_else(|| get("version"))
            .unwrap_or_else(|| DEFAULT_REVISION.to_owned());
        self.app = get("app").or_else(|| get("app.kubernetes.io/name")).or_else(|| service.clone());
        self.version = get("version").or_else(|| get("app.kubernetes.io/version")).or_else(|| Some(revision.clone()));
        self.canonical_service = service;
        self.canonical_revision = Some(revision);
        self
    }
}

/// The Kubernetes Service a connection was addressed to, when it went to a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// Fully qualified host, e.g. `echo.default.svc.cluster.local`.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceRef {
    /// A Service in the cluster's DNS domain (Istio's default is `cluster.local`).
    pub fn new(name: &str, namespace: &str, domain: &str) -> Self {
        Self {
            host: format!("{name}.{namespace}.svc.{domain}"),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

impl ConnectionLabels {
    /// Fills every label. `service` is the Service the client addressed (`None` when it dialled
    /// a pod IP directly). Canonical values not set on a peer default as Istio's do: the
    /// service to the workload name and the revision to `latest` (only for known workloads).
    pub fn new(
        reporter: Reporter,
        source: &Peer,
        destination: &Peer,
        service: Option<&ServiceRef>,
        security: SecurityPolicy,
    ) -> Self {
        let src = Resolved::from(source);
        let dst = Resolved::from(destination);
        Self {
            reporter,
            source_workload: src.workload,
            source_canonical_service: src.canonical_service,
            source_canonical_revision: src.canonical_revision,
            source_workload_namespace: src.namespace,
            source_principal: src.principal,
            source_app: src.app,
            source_version: src.version,
            source_cluster: src.cluster,
            destination_service: value(service.map(|s| s.host.as_str())),
            destination_service_namespace: value(service.map(|s| s.namespace.as_str())),
            destination_service_name: value(service.map(|s| s.name.as_str())),
            destination_workload: dst.workload,
            destination_canonical_service: dst.canonical_service,
            destination_canonical_revision: dst.canonical_revision,
            destination_workload_namespace: dst.namespace,
            destination_principal: dst.principal,
            destination_app: dst.app,
            destination_version: dst.version,
            destination_cluster: dst.cluster,
            request_protocol: "tcp".to_owned(),
            response_flags: NO_FLAGS.to_owned(),
            connection_security_policy: security,
        }
    }

    /// Sets Envoy-style response flags (e.g. `UF` for an upstream connect failure).
    pub fn with_response_flags(mut self, flags: &str) -> Self {
        self.response_flags = if flags.is_empty() { NO_FLAGS.to_owned() } else { escape(flags) };
        self
    }
}

/// A peer with every label value decided.
struct Resolved {
    workload: String,
    namespace: String,
    principal: String,
    canonical_service: String,
    canonical_revision: String,
    app: String,
    version: String,
    cluster: String,
}

impl From<&Peer> for Resolved {
    fn from(p: &Peer) -> Self {
        let known = p.workload.as_deref().is_some_and(|w| !w.is_empty());
        let canonical_service = p.canonical_service.as_deref().or(known.then_some(p.workload.as_deref()).flatten());
        let canonical_revision = p.canonical_revision.as_deref().or(known.then_some(DEFAULT_REVISION));
        Self {
            workload: value(p.workload.as_deref()),
            namespace: value(p.namespace.as_deref()),
            principal: value(p.principal.as_deref()),
            canonical_service: value(canonical_service),
            canonical_revision: value(canonical_revision),
            app: value(p.app.as_deref()),
            version: value(p.version.as_deref()),
            cluster: value(p.cluster.as_deref()),
        }
    }
}

/// Istio never exports an empty label: missing or empty becomes `unknown`. The value is also
/// escaped for the exposition format here, because prometheus-client writes label values
/// verbatim: a `"` or newline in a workload name from a config file would otherwise end the
/// value early and let the rest of the name forge series.
fn value(v: Option<&str>) -> String {
    match v {
        Some(v) if !v.is_empty() => escape(v),
        _ => UNKNOWN.to_owned(),
    }
}

/// OpenMetrics label-value escaping: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_workload_gets_istio_defaults() {
        let src = Peer::workload("sleep", "default")
            .service_account("cluster.local", "sleep")
            .cluster("Kubernetes")
            .pod_labels([("app", "sleep")]);
        let labels = ConnectionLabels::new(Reporter::Source, &src, &Peer::unknown(), None, SecurityPolicy::Unknown);
        assert_eq!(labels.source_principal, "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(labels.source_canonical_service, "sleep");
        assert_eq!(labels.source_canonical_revision, "latest");
        assert_eq!(labels.source_app, "sleep");
        assert_eq!(labels.source_version, "latest");
        assert_eq!(labels.destination_workload, UNKNOWN);
        assert_eq!(labels.destination_canonical_revision, UNKNOWN);
        assert_eq!(labels.destination_service, UNKNOWN);
        assert_eq!(labels.request_protocol, "tcp");
        assert_eq!(labels.response_flags, "-");
    }

    #[test]
    fn label_precedence_follows_istio() {
        let p = Peer::workload("web-7d9f", "shop").pod_labels([
            ("app", "web"),
            ("app.kubernetes.io/name", "frontend"),
            ("service.istio.io/canonical-name", "storefront"),
            ("version", "v2"),
            ("app.kubernetes.io/version", "2.1"),
        ]);
        assert_eq!(p.canonical_service.as_deref(), Some("storefront"));
        assert_eq!(p.canonical_revision.as_deref(), Some("2.1"));
        assert_eq!(p.app.as_deref(), Some("web"));
        assert_eq!(p.version.as_deref(), Some("v2"));

        let bare = Peer::workload("db", "shop").pod_labels(Vec::<(String, String)>::new());
        assert_eq!(bare.canonical_service.as_deref(), Some("db"));
        assert_eq!(bare.app.as_deref(), Some("db"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let src = Peer::workload("a\"} 1\nforged_total{x=\"", "ns\\x");
        let l = ConnectionLabels::new(Reporter::Source, &src, &Peer::unknown(), None, SecurityPolicy::Unknown);
        assert_eq!(l.source_workload, r#"a\"} 1\nforged_total{x=\""#);
        assert_eq!(l.source_workload_namespace, r"ns\\x");
        assert!(!l.source_workload.contains('\n'));
    }

    #[test]
    fn service_and_identity() {
        let id = Identity::new("td.example", "shop", "web").unwrap();
        let dst = Peer::workload("web", "shop").identity(&id);
        let svc = ServiceRef::new("web", "shop", "cluster.local");
        let l =
            ConnectionLabels::new(Reporter::Destination, &Peer::unknown(), &dst, Some(&svc), SecurityPolicy::MutualTls)
                .with_response_flags("");
        assert_eq!(l.destination_service, "web.shop.svc.cluster.local");
        assert_eq!(l.destination_service_name, "web");
        assert_eq!(l.destination_service_namespace, "shop");
        assert_eq!(l.destination_principal, "spiffe://td.example/ns/shop/sa/web");
        assert_eq!(l.response_flags, "-");
        assert_eq!(l.source_principal, UNKNOWN);
    }
}
