//! The workload model: one immutable snapshot of workloads, services, waypoints and
//! policies, with the lookups the proxy paths need.
//!
//! Sources (the local YAML file in [`crate::config`], Kubernetes later) build a fresh
//! [`Model`] through [`ModelBuilder`] on every change and publish it as `Arc<Model>`; readers
//! never see a half-applied update. This module depends only on [`crate::parse`].

pub mod authz;
mod builder;
mod ipnet;
pub mod peer_auth;
mod service;
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

pub use authz::{Action, AuthorizationPolicy, ConnInfo, Reason, Verdict};
pub use builder::ModelBuilder;
pub use ipnet::{IpNet, IpNetError};
pub use peer_auth::{MtlsMode, PeerAuthentication};
pub use service::{Endpoint, Endpoints, PortProtocol, Service, ServicePort, ServiceTarget, TrafficDistribution};
pub use workload::{Locality, Protocol, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL, WaypointRef, Workload};

use crate::parse::SpiffeIdError;

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Mesh-wide settings (Pillion's `MeshConfig` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    pub trust_domain: String,
    /// Policies here without a selector apply to the whole mesh.
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self { trust_domain: DEFAULT_TRUST_DOMAIN.into(), root_namespace: DEFAULT_ROOT_NAMESPACE.into() }
    }
}

/// Names one object of the model in errors: `Workload shop/cart-0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Why a set of objects does not form a consistent model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "{object}: namespace and service account do not form a SPIFFE identity ({source}); use lower-case DNS names"
    )]
    Identity { object: String, source: SpiffeIdError },
    #[error("{object} is defined twice: give each object a unique namespace/name")]
    Duplicate { object: ObjectRef },
    #[error("{object} claims IP {ip}, already used by {first}: an address belongs to one workload or one service VIP")]
    IpConflict { object: ObjectRef, ip: IpAddr, first: String },
    #[error("{object} claims {addr}, already served by {first}: each VIP:port belongs to one service")]
    VipConflict { object: ObjectRef, addr: SocketAddr, first: String },
    #[error("{object} lists endpoint workload {workload}, which is not defined: add the Workload or fix the name")]
    UnknownEndpoint { object: ObjectRef, workload: String },
    #[error(
        "{object} uses waypoint {waypoint} (label istio.io/use-waypoint), but no Service {waypoint} is defined: add the waypoint's Service"
    )]
    UnknownWaypoint { object: ObjectRef, waypoint: WaypointRef },
    #[error(
        "{object} sets portLevelMtls without a selector: Istio only allows port-level modes on workload-specific policies"
    )]
    PortLevelWithoutSelector { object: ObjectRef },
}

impl ModelError {
    /// The object the error is about, so a source can point at where it was defined.
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            Self::Identity { .. } => None,
            Self::Duplicate { object }
            | Self::IpConflict { object, .. }
            | Self::VipConflict { object, .. }
            | Self::UnknownEndpoint { object, .. }
            | Self::UnknownWaypoint { object, .. }
            | Self::PortLevelWithoutSelector { object } => Some(object),
        }
    }
}

/// An immutable snapshot. Cheap lookups; serializes (without its indexes) for `/config_dump`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    version: u64,
    mesh: MeshSettings,
    /// Namespace labels (only namespaces declared by a source).
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    workloads: Vec<Workload>,
    services: Vec<Service>,
    authorization_policies: Vec<AuthorizationPolicy>,
    peer_authentications: Vec<PeerAuthentication>,
    #[serde(skip)]
    index: Index,
}

#[derive(Debug, Clone, Default)]
struct Index {
    by_ip: HashMap<IpAddr, usize>,
    by_name: NameIndex,
    by_node: HashMap<String, Vec<usize>>,
    /// VIP:port → (service, port position).
    by_vip: HashMap<SocketAddr, (usize, usize)>,
    services_by_name: NameIndex,
    /// Per service: its endpoint workloads.
    endpoints: Vec<Vec<usize>>,
    policies_by_ns: HashMap<String, Vec<usize>>,
}

impl Model {
    /// Increases by one with every accepted change; 0 is the empty model before any load.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn authorization_policies(&self) -> &[AuthorizationPolicy] {
        &self.authorization_policies
    }

    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_authentications
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    /// The workload owning `ip` (IPv4-mapped IPv6 addresses are looked up as IPv4).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.index.by_ip.get(&ip.to_canonical()).map(|&i| &self.workloads[i])
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.index.by_name.get(namespace, name).map(|i| &self.workloads[i])
    }

    /// Workloads the agent on `node` serves.
    pub fn workloads_on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.index.by_node.get(node).into_iter().flatten().map(|&i| &self.workloads[i])
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.index.services_by_name.get(namespace, name).map(|i| &self.services[i])
    }

    /// The service behind `VIP:port` and its endpoints with their target ports.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<ServiceTarget<'_>> {
        let key = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let &(si, pi) = self.index.by_vip.get(&key)?;
        let service = &self.services[si];
        let port = &service.ports[pi];
        let endpoints = self.index.endpoints[si]
            .iter()
            .map(|&wi| Endpoint { workload: &self.workloads[wi], port: port.target_port })
            .collect();
        Some(ServiceTarget { service, port, endpoints })
    }

    /// The Service fronting a waypoint reference.
    pub fn waypoint_service(&self, w: &WaypointRef) -> Option<&Service> {
        self.service(&w.namespace, &w.name)
    }

    /// The workloads running a waypoint (its Service's endpoints).
    pub fn waypoint_workloads<'a>(&'a self, w: &WaypointRef) -> impl Iterator<Item = &'a Workload> + 'a {
        let si = self.index.services_by_name.get(&w.namespace, &w.name);
        si.into_iter().flat_map(move |si| self.index.endpoints[si].iter().map(move |&wi| &self.workloads[wi]))
    }

    /// Whether `src` is the identity of one of the waypoint's workloads: the inbound check
    /// that traffic for a destination with a waypoint really came through it.
    pub fn is_waypoint_identity(&self, w: &WaypointRef, src: &crate::parse::SpiffeId) -> bool {
        self.waypoint_workloads(w).any(|wl| wl.identity().spiffe_id() == src)
    }
}

/// `namespace → name → position`, nested so lookups by `&str` allocate nothing (they run
/// for every connection and again for each live one on every reload).
#[derive(Debug, Clone, Default)]
struct NameIndex(HashMap<String, HashMap<String, usize>>);

impl NameIndex {
    fn get(&self, namespace: &str, name: &str) -> Option<usize> {
        self.0.get(namespace)?.get(name).copied()
    }

    /// Returns `false` if the name was taken.
    fn insert(&mut self, namespace: &str, name: &str, i: usize) -> bool {
        self.0.entry(namespace.to_owned()).or_default().insert(name.to_owned(), i).is_none()
    }
}

/// Kubernetes `matchLabels` semantics: every selector pair is present in `labels`.
pub(crate) fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Serializes a field through its `Display` form (identities).
pub(crate) fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
