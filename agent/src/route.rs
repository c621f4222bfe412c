//! The outbound decision: where a captured connection goes, from one model
//! snapshot. Pure: no I/O, so every case is unit-tested.
//!
//! - a service VIP:port → its waypoint when it has one (authority
//!   `service-host:port`), else its endpoints in round-robin order (the proxy
//!   tries them in turn, skipping those whose connect fails);
//! - a mesh workload's address → HBONE to `podIP:15008` (or to the workload's
//!   waypoint);
//! - anything else, or a source that is not in the mesh → passthrough.

use std::net::{IpAddr, SocketAddr};

use mesh::{
    Authority, Identity,
    model::{Model, Service, WaypointRef, Workload},
    parse::Host,
};

/// HBONE's port on every mesh workload.
pub const HBONE_PORT: u16 = 15008;

/// One way to reach the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Plain TCP to this address.
    Plain { dst: SocketAddr, workload: Option<WorkloadKey> },
    /// HBONE to `hbone_addr` asking for `target`, expecting `identity`.
    Hbone { hbone_addr: SocketAddr, target: Authority, identity: Identity, workload: WorkloadKey, via_waypoint: bool },
}

/// `namespace/name` of a workload (for logs, metrics and policy).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub name: String,
}

impl WorkloadKey {
    pub fn of(w: &Workload) -> Self {
        Self { namespace: w.namespace().to_owned(), name: w.name().to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Candidates in the order to try them.
    pub hops: Vec<Hop>,
    /// `namespace/name` of the service addressed by VIP, if any.
    pub service: Option<(String, String)>,
}

/// Decides the route for `dst` from `src` (the source pod's workload, if it
/// is in the model). `rr` rotates the start among service endpoints.
pub fn route(model: &Model, src: Option<&Workload>, dst: SocketAddr, rr: usize) -> Route {
    let src_in_mesh = src.is_some_and(Workload::in_mesh);
    if let Some(target) = model.service_by_vip(dst) {
        let service = Some((target.service.namespace.clone(), target.service.name.clone()));
        if src_in_mesh
            && let Some(hops) = via_waypoint(
                model,
                target.service.waypoint.as_ref(),
                service_authority(target.service, dst.port()),
                dst.ip(),
            )
        {
            return Route { hops, service };
        }
        let n = target.endpoints.len();
        let hops = (0..n)
            .filter_map(|i| {
                let ep = &target.endpoints[(rr + i) % n];
                let addr = ep.addr_like(dst.ip())?;
                Some(direct(ep.workload, addr, src_in_mesh))
            })
            .collect();
        return Route { hops, service };
    }
    if let Some(w) = model.workload_by_ip(dst.ip()) {
        if src_in_mesh
            && w.in_mesh()
            && let Some(hops) = via_waypoint(model, w.waypoint.as_ref(), Authority::from(dst), dst.ip())
        {
            return Route { hops, service: None };
        }
        return Route { hops: vec![direct(w, dst, src_in_mesh)], service: None };
    }
    Route { hops: vec![Hop::Plain { dst, workload: None }], service: None }
}

/// The hop straight to a workload: HBONE when both ends are in the mesh.
fn direct(w: &Workload, addr: SocketAddr, src_in_mesh: bool) -> Hop {
    if src_in_mesh && w.in_mesh() {
        Hop::Hbone {
            hbone_addr: SocketAddr::new(addr.ip(), HBONE_PORT),
            target: Authority::from(addr),
            identity: w.identity().clone(),
            workload: WorkloadKey::of(w),
            via_waypoint: false,
        }
    } else {
        Hop::Plain { dst: addr, workload: Some(WorkloadKey::of(w)) }
    }
}

fn service_authority(s: &Service, port: u16) -> Authority {
    Authority { host: Host::Name(s.host()), port }
}

/// A waypoint service's endpoints (the waypoint workloads).
fn waypoint_workloads<'m>(model: &'m Model, svc: &Service) -> Vec<&'m Workload> {
    let (Some(vip), Some(port)) = (svc.vips.first(), svc.ports.first()) else {
        return Vec::new();
    };
    model
        .service_by_vip(SocketAddr::new(*vip, port.port))
        .map(|t| t.endpoints.iter().map(|e| e.workload).collect())
        .unwrap_or_default()
}

/// Hops to the waypoint's endpoints, or `None` when there is no waypoint.
/// A waypoint that has no endpoints yields an empty list: the connection
/// fails rather than bypassing the waypoint.
fn via_waypoint(model: &Model, waypoint: Option<&WaypointRef>, target: Authority, like: IpAddr) -> Option<Vec<Hop>> {
    let waypoint = waypoint?;
    let Some(svc) = model.waypoint_service(waypoint) else {
        return Some(Vec::new());
    };
    let hops = waypoint_workloads(model, svc)
        .into_iter()
        .filter_map(|w| {
            let ip = w.ip_like(like)?;
            Some(Hop::Hbone {
                hbone_addr: SocketAddr::new(ip, HBONE_PORT),
                target: target.clone(),
                identity: w.identity().clone(),
                workload: WorkloadKey::of(w),
                via_waypoint: true,
            })
        })
        .collect();
    Some(hops)
}

/// Identities allowed to deliver traffic to `w` when it sits behind a
/// waypoint (its own, or that of a service selecting it); `None` when no
/// waypoint applies.
pub fn required_waypoint_identities(model: &Model, w: &Workload) -> Option<Vec<Identity>> {
    let selects_w = |s: &Service| {
        let (Some(vip), Some(port)) = (s.vips.first(), s.ports.first()) else { return false };
        model.service_by_vip(SocketAddr::new(*vip, port.port)).is_some_and(|t| {
            t.endpoints.iter().any(|e| e.workload.namespace() == w.namespace() && e.workload.name() == w.name())
        })
    };
    let refs: Vec<&WaypointRef> = w
        .waypoint
        .iter()
        .chain(
            model
                .services()
                .iter()
                .filter(|s| s.waypoint.is_some() && selects_w(s))
                .filter_map(|s| s.waypoint.as_ref()),
        )
        .collect();
    if refs.is_empty() {
        return None;
    }
    let ids = refs
        .into_iter()
        .filter_map(|r| model.waypoint_service(r))
        .flat_map(|svc| waypoint_workloads(model, svc))
        .map(|w| w.identity().clone())
        .collect();
    Some(ids)
}

#[cfg(test)]
mod tests;
