//! The labels and names Pillion reads, the same as Istio ambient's so users' YAML works.

/// `ambient` on a namespace or pod enrols it; `none` on a pod opts it out.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_AMBIENT: &str = "ambient";
pub const DATAPLANE_NONE: &str = "none";

pub use mesh::model::{USE_WAYPOINT_LABEL as USE_WAYPOINT, USE_WAYPOINT_NAMESPACE_LABEL as USE_WAYPOINT_NAMESPACE};

/// Gateway classes whose Gateways are waypoints.
pub const WAYPOINT_CLASSES: &[&str] = &["pillion-waypoint", "istio-waypoint"];

/// Set by Gateway API implementations on the pods of a gateway (and so of a waypoint).
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// Istio's Gateway annotation naming the service account of the gateway's pods (read for
/// `istio-waypoint` Gateways only: Pillion's controller always uses the Gateway's name).
pub const GATEWAY_SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";

/// Links an EndpointSlice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
