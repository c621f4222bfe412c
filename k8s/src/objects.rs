//! The compact forms the source keeps of each Kubernetes object: only the fields routing,
//! identity and policy need. Each watched object is converted as it arrives and the full
//! object dropped at once, so the cache costs a few hundred bytes per pod instead of the
//! 10–20 KB a full Pod (with `managedFields`, containers and status) takes in memory.
//!
//! A conversion returning `None` means "not relevant": the object is treated as deleted
//! (a pod that finished or has no IP yet, a Gateway of another class).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use gateway_api::apis::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::DynamicObject;
use mesh::model::{
    AuthorizationPolicy as ModelPolicy, MeshSettings, PeerAuthentication as ModelPeerAuth, PortProtocol,
};

use crate::consent::{self, AllowedNamespaces};
use crate::labels::{self, WAYPOINT_CLASSES};
use mesh::istio::{SpecError, authorization, decode, peer_authentication};

/// `(namespace, name)`; namespaces themselves use an empty first part.
pub type Key = (String, String);

pub fn key<K: kube::Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_k8s(ns: &Namespace) -> Option<Self> {
        Some(Self { labels: ns.labels().clone() })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// Kept only for pods on the agent's own node: the agent finds their cgroups by it.
    pub uid: Option<String>,
    /// Seconds since the epoch; the newest pod wins an IP that two pods claim.
    pub created: i64,
}

impl PodInfo {
    /// `local_node`: the agent's node, whose pods keep their UID.
    pub fn from_k8s(pod: &Pod, local_node: Option<&str>) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        // hostNetwork pods share the node's addresses and can never be captured.
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        // A finished pod keeps its IP in status while a new pod may already have it.
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if ips.is_empty()
            && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        if ips.is_empty() {
            return None;
        }
        let node = spec.node_name.clone().unwrap_or_default();
        let uid = if local_node == Some(node.as_str()) { pod.metadata.uid.clone() } else { None };
        Some(Self {
            labels: pod.labels().clone(),
            service_account: spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or("default".into()),
            node,
            ips,
            uid,
            created: pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved through the EndpointSlices.
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortInfo {
    pub name: String,
    pub port: u16,
    pub target: TargetPort,
    pub protocol: PortProtocol,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub labels: BTreeMap<String, String>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    pub traffic_distribution: Option<mesh::model::TrafficDistribution>,
}

impl ServiceInfo {
    pub fn from_k8s(svc: &Service) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        // ExternalName services are DNS aliases: nothing for the data plane to route.
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let vips = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .fold(Vec::new(), |mut v, ip| {
                if !v.contains(&ip) {
                    v.push(ip);
                }
                v
            });
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = match &p.target_port {
                    None => TargetPort::Number(port),
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s.clone()),
                    },
                };
                let protocol = match p.protocol.as_deref() {
                    Some("UDP") => PortProtocol::Udp,
                    Some("SCTP") => PortProtocol::Sctp,
                    _ => PortProtocol::Tcp,
                };
                Some(ServicePortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    target,
                    protocol,
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let traffic_distribution =
            spec.traffic_distribution.as_deref().and_then(mesh::model::TrafficDistribution::parse);
        Some(Self { labels: svc.labels().clone(), vips, ports, traffic_distribution })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    /// The Service this slice belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// `(port name, number)` as the slice resolved them (named target ports included).
    pub ports: Vec<(String, u16)>,
    /// Names of the ready Pods behind it.
    pub pods: Vec<String>,
    /// `(pod, zone)` where the slice says (Kubernetes copies the node's zone label here).
    pub zones: Vec<(String, String)>,
}

impl SliceInfo {
    pub fn from_k8s(slice: &EndpointSlice) -> Option<Self> {
        let service = slice.labels().get(labels::SERVICE_NAME)?.clone();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let pods = slice
            .endpoints
            .iter()
            // `ready` unset means ready (the API's documented default).
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.target_ref.as_ref())
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .filter_map(|r| r.name.clone())
            .collect();
        let zones = slice
            .endpoints
            .iter()
            .filter_map(|e| {
                let r = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"))?;
                Some((r.name.clone()?, e.zone.clone()?))
            })
            .collect();
        Some(Self { service, ports, pods, zones })
    }
}

/// A Gateway of a waypoint class with an HBONE listener on 15008.
#[derive(Debug, Clone, PartialEq)]
pub struct WaypointInfo {
    pub class: String,
    /// `status.addresses` as the waypoint controller reported them.
    pub addresses: Vec<String>,
    /// The service account its pods run as: only such pods are the waypoint.
    pub service_account: String,
    /// Which other namespaces may use it (its HBONE listener's `allowedRoutes`).
    pub allowed: AllowedNamespaces,
}

impl WaypointInfo {
    pub fn from_k8s(gw: &Gateway) -> Option<Self> {
        let class = &gw.spec.gateway_class_name;
        if !WAYPOINT_CLASSES.contains(&class.as_str()) {
            return None;
        }
        let hbone = gw.spec.listeners.iter().any(|l| l.port == 15008 && l.protocol == "HBONE");
        if !hbone {
            return None;
        }
        let addresses = gw.status.iter().flat_map(|s| s.addresses.iter().flatten()).map(|a| a.value.clone()).collect();
        Some(Self {
            class: class.clone(),
            addresses,
            service_account: consent::service_account(gw),
            allowed: AllowedNamespaces::of(gw),
        })
    }
}

/// A compiled policy, or why it could not be compiled (reported on every rebuild, so an
/// operator sees it in the source's status until it is fixed).
/// A policy as compiled, or, when it cannot be, a fail-closed stand-in for the same scope
/// (an AuthorizationPolicy becomes deny-all, a PeerAuthentication STRICT) with the
/// problem, which the source's status reports. Leaving a bad policy out would open what a
/// DENY or a STRICT mode closes.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled<T> {
    pub value: T,
    pub problem: Option<String>,
}

/// Policies are watched as `DynamicObject`s and decoded one by one: a typed watch fails
/// the whole list on one object it cannot decode, and the CRDs' open schemas let anything
/// through. Decoding and compiling are `mesh::istio`'s, shared with the file source and
/// the waypoint.
pub fn authorization_policy(mesh: MeshSettings) -> impl Fn(&DynamicObject) -> Option<Compiled<ModelPolicy>> {
    move |o| {
        let compiled = compile_or(
            o,
            |ns, name, spec| {
                decode(spec)
                    .and_then(|s| authorization::compile(&mesh, ns, name, o.annotations(), s.as_ref()))
                    .map(|a| a.policy)
            },
            |ns, name, spec| ModelPolicy {
                name,
                namespace: ns,
                selector: raw_selector(spec),
                action: mesh::model::Action::Deny,
                // One empty rule matches every connection.
                rules: vec![mesh::model::authz::Rule::default()],
                targets_waypoint: spec.get("targetRef").is_some() || spec.get("targetRefs").is_some(),
                dry_run: false,
            },
            "DENY-all",
        );
        Some(compiled)
    }
}

pub fn peer_authentication(o: &DynamicObject) -> Option<Compiled<ModelPeerAuth>> {
    let mut compiled = compile_or(
        o,
        |ns, name, spec| decode(spec).and_then(|s| peer_authentication::compile(ns, name, s.as_ref())),
        |ns, name, spec| ModelPeerAuth {
            name,
            namespace: ns,
            selector: raw_selector(spec),
            mode: mesh::model::MtlsMode::Strict,
            port_level: BTreeMap::new(),
            created: None,
        },
        "STRICT",
    );
    // Istio gives a tie between equally specific policies to the oldest.
    compiled.value.created = o.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
    Some(compiled)
}

/// Compiles `spec`; on any problem, the `stand_in` for the same scope, enforced `as` what
/// the message says.
fn compile_or<T>(
    o: &DynamicObject,
    compile: impl FnOnce(&str, &str, &serde_json::Value) -> Result<T, SpecError>,
    stand_in: impl FnOnce(String, String, &serde_json::Value) -> T,
    enforced_as: &str,
) -> Compiled<T> {
    let (ns, name) = key(o);
    let spec = o.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    match compile(&ns, &name, &spec) {
        Ok(value) => Compiled { value, problem: None },
        Err(problem) => Compiled {
            value: stand_in(ns, name, &spec),
            problem: Some(format!("{problem}; enforced as {enforced_as} for its workloads until fixed")),
        },
    }
}

/// `spec.selector.matchLabels` if it can be read; otherwise none, which widens a
/// stand-in to the whole namespace (the widest scope the policy could have had).
fn raw_selector(spec: &serde_json::Value) -> BTreeMap<String, String> {
    spec.get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default()
}

/// An object the waypoint interprets itself, as `{apiVersion, kind, metadata: {name,
/// namespace, annotations}, spec}`: the shape of a document in a config file, so the
/// waypoint reads both with one parser.
pub type L7Object = Arc<serde_json::Value>;

/// The kinds the waypoint reads beyond the model (`waypoint/src/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Kind {
    HttpRoute,
    GrpcRoute,
    /// Watched raw as well: the agent's compiled form drops the L7 fields.
    AuthorizationPolicy,
    DestinationRule,
    BackendTrafficPolicy,
    FaultInjection,
    /// Consent for cross-namespace `backendRefs` and mirrors of HTTPRoutes.
    ReferenceGrant,
}

impl L7Kind {
    pub const ALL: [L7Kind; 7] = [
        Self::HttpRoute,
        Self::GrpcRoute,
        Self::AuthorizationPolicy,
        Self::DestinationRule,
        Self::BackendTrafficPolicy,
        Self::FaultInjection,
        Self::ReferenceGrant,
    ];

    pub fn name(self) -> &'static str {
        self.resource().2
    }

    /// `(group, version, kind, plural)`.
    pub fn resource(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Self::HttpRoute => ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            Self::GrpcRoute => ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
            Self::AuthorizationPolicy => ("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"),
            Self::DestinationRule => ("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
            Self::BackendTrafficPolicy => {
                ("gateway.networking.x-k8s.io", "v1alpha1", "XBackendTrafficPolicy", "xbackendtrafficpolicies")
            }
            Self::FaultInjection => ("pillion.dev", "v1alpha1", "FaultInjection", "faultinjections"),
            Self::ReferenceGrant => ("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant", "referencegrants"),
        }
    }

    pub fn api_resource(self) -> kube::api::ApiResource {
        let (group, version, kind, plural) = self.resource();
        kube::api::ApiResource::from_gvk_with_plural(&kube::api::GroupVersionKind::gvk(group, version, kind), plural)
    }
}

/// The waypoint's view of an object: identity, annotations (some kinds are configured
/// through them) and `spec`. `apiVersion` and `kind` come from the watch, since list
/// items may omit them.
pub fn l7_object(kind: L7Kind, meta: &kube::api::ObjectMeta, spec: Option<&serde_json::Value>) -> L7Object {
    let (group, version, kind, _) = kind.resource();
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    Arc::new(serde_json::json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "annotations": annotations},
        "spec": spec.cloned().unwrap_or(serde_json::Value::Null),
    }))
}

pub fn dynamic_l7(kind: L7Kind) -> impl Fn(&kube::api::DynamicObject) -> Option<L7Object> {
    move |o| Some(l7_object(kind, &o.metadata, o.data.get("spec")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": kind,
            "metadata": {"name": "p", "namespace": "shop"}, "spec": spec,
        }))
        .unwrap()
    }

    /// The file source and the waypoint refuse unknown fields; so does this source now,
    /// with its fail-closed stand-in: a matcher it skipped would widen an ALLOW.
    #[test]
    fn unknown_fields_fail_closed_as_in_the_file_source() {
        let spec = serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "action": "ALLOW",
            "rules": [{"from": [{"source": {"namespaces": ["web"], "principalz": ["x"]}}]}]});
        let c = authorization_policy(MeshSettings::default())(&object("AuthorizationPolicy", spec)).unwrap();
        assert_eq!(c.value.action, mesh::model::Action::Deny);
        assert_eq!(c.value.selector.get("app").map(String::as_str), Some("a"));
        assert!(c.problem.as_deref().is_some_and(|p| p.contains("unknown field `principalz`")), "{:?}", c.problem);

        let pa = serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "PERMISSIVE", "strict": true}});
        let c = peer_authentication(&object("PeerAuthentication", pa)).unwrap();
        assert_eq!(c.value.mode, mesh::model::MtlsMode::Strict);
    }
}
