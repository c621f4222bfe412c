//! A service: virtual IPs and ports in front of a set of workloads.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::workload::{WaypointRef, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// The workload port traffic is sent to (Kubernetes `targetPort`; defaults to `port`).
    pub target_port: u16,
    pub protocol: PortProtocol,
    /// Kubernetes `appProtocol` (`http`, `kubernetes.io/h2c`, …): the application protocol,
    /// which decides before the port name whether a waypoint speaks HTTP on the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// Which workloads back a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoints {
    /// Workloads in the service's namespace whose labels include all of these
    /// (Kubernetes `spec.selector`). An empty selector selects nothing, as in Kubernetes.
    Selector(BTreeMap<String, String>),
    /// Named workloads as `(namespace, name)`, for services without a selector.
    Workloads(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Endpoints,
    pub labels: BTreeMap<String, String>,
    /// Filled in by [`super::ModelBuilder`] from the Service's or its namespace's
    /// `istio.io/use-waypoint` label.
    pub waypoint: Option<WaypointRef>,
    /// Kubernetes `spec.trafficDistribution`: prefer endpoints close to the proxy choosing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<TrafficDistribution>,
}

/// Kubernetes `trafficDistribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TrafficDistribution {
    /// `PreferSameZone`, and `PreferClose` (its older name): the closest zone (then region)
    /// that has endpoints.
    PreferSameZone,
    /// `PreferSameNode`: endpoints on the same node first, then the same zone.
    PreferSameNode,
}

impl TrafficDistribution {
    /// The Kubernetes value; unknown values (newer ones) are ignored, as kube-proxy does.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PreferClose" | "PreferSameZone" => Some(Self::PreferSameZone),
            "PreferSameNode" => Some(Self::PreferSameNode),
            _ => None,
        }
    }
}

impl Service {
    /// `<name>.<namespace>.svc.cluster.local`, the host a waypoint is addressed by.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether `w` is one of this service's workloads.
    pub fn selects(&self, w: &Workload) -> bool {
        match &self.endpoints {
            Endpoints::Selector(sel) => {
                !sel.is_empty() && w.namespace() == self.namespace && super::labels_match(sel, &w.labels)
            }
            Endpoints::Workloads(names) => names.iter().any(|(ns, n)| ns == w.namespace() && n == w.name()),
        }
    }
}

/// One backend of a service port: the workload and the port to dial on it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub workload: &'a Workload,
    pub port: u16,
}

impl Endpoint<'_> {
    /// The socket address to dial, in the family of `like` when the workload has one.
    pub fn addr_like(&self, like: IpAddr) -> Option<SocketAddr> {
        self.workload.ip_like(like).map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// What a connection to `VIP:port` resolves to.
#[derive(Debug, Clone)]
pub struct ServiceTarget<'a> {
    pub service: &'a Service,
    pub port: &'a ServicePort,
    pub endpoints: Vec<Endpoint<'a>>,
}
