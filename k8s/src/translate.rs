//! From the cache to a [`Model`]: one pure function, run on every batch of changes.
//!
//! The file source refuses a whole file over one bad object, because its author is
//! right there to fix it. A cluster has many authors and no one reading our logs, so
//! here a bad object is left out of the model and reported (in [`Built::skipped`] and
//! the source's status) while everything else keeps being updated. What the model builder
//! would reject as a cross-reference error is checked first, for the same reason: a
//! `use-waypoint` label naming a waypoint that does not exist yet must not freeze the
//! configuration of the whole cluster.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use mesh::model::{Endpoints, MeshSettings, Model, ModelError, Protocol, Service, ServicePort, Workload};
use serde::Serialize;

use crate::cache::Cache;
use crate::labels::{
    DATAPLANE_AMBIENT, DATAPLANE_MODE, DATAPLANE_NONE, GATEWAY_NAME, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE,
};
use crate::objects::{PodInfo, TargetPort, WaypointInfo};

/// A pod on this node that the agent should capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// The outcome of one rebuild.
#[derive(Debug)]
pub struct Built {
    pub model: Model,
    /// Objects left out, each with why (`Pod shop/cart-0: …`).
    pub skipped: Vec<String>,
    /// Pods on the local node to capture, sorted by namespace and name.
    pub local: Vec<LocalPod>,
}

/// Whether a pod is in the ambient mesh: its own label decides (`none` opts out,
/// `ambient` opts in), else its namespace's.
pub fn captured(pod: &BTreeMap<String, String>, namespace: Option<&BTreeMap<String, String>>) -> bool {
    match pod.get(DATAPLANE_MODE).map(String::as_str) {
        Some(DATAPLANE_NONE) => false,
        Some(DATAPLANE_AMBIENT) => true,
        _ => namespace.and_then(|l| l.get(DATAPLANE_MODE)).is_some_and(|v| v == DATAPLANE_AMBIENT),
    }
}

pub fn build(cache: &Cache, mesh: &MeshSettings, node: Option<&str>, version: u64) -> Result<Built, ModelError> {
    let mut skipped = Vec::new();
    let mut b = mesh::model::ModelBuilder::new(mesh.clone());

    // A waypoint is usable once its Gateway is ours and its Service exists: agents reach
    // a waypoint through that Service.
    let waypoints: Waypoints = cache
        .waypoints
        .iter()
        .filter(|((ns, n), _)| cache.services.get(ns, n).is_some())
        .map(|((ns, n), w)| ((ns.as_str(), n.as_str()), w))
        .collect();
    // As listed, for the waypoints' consent: `ns_labels` below are the checked ones.
    let raw_ns_labels: HashMap<&str, &BTreeMap<String, String>> =
        cache.namespaces.iter().map(|((_, name), ns)| (name.as_str(), &ns.labels)).collect();
    let wp = WaypointCheck { waypoints: &waypoints, ns_labels: &raw_ns_labels };
    let mut ns_labels: HashMap<&str, BTreeMap<String, String>> = HashMap::new();
    for ((_, name), ns) in cache.namespaces.iter() {
        let labels = wp.checked(("Namespace", "", name), name, &ns.labels, &mut skipped);
        b.namespace(name, labels.clone());
        ns_labels.insert(name, labels);
    }

    // Zones from the EndpointSlices (Kubernetes copies them from the nodes' labels).
    let zones: HashMap<(&str, &str), &str> = cache
        .slices
        .iter()
        .flat_map(|((ns, _), s)| s.zones.iter().map(move |(pod, zone)| ((ns.as_str(), pod.as_str()), zone.as_str())))
        .collect();
    // Newest first, so an IP claimed twice (a pod being replaced) goes to the newer pod.
    let mut pods: Vec<_> = cache.pods.iter().collect();
    pods.sort_by(|a, b| b.1.created.cmp(&a.1.created).then_with(|| a.0.cmp(b.0)));
    let mut ips_taken: HashMap<IpAddr, String> = HashMap::new();
    let mut workloads: BTreeSet<(&str, &str)> = BTreeSet::new();
    // Pods that are a waypoint's, by (namespace, pod name) → the waypoint's name.
    let mut waypoint_pods: HashMap<(&str, &str), &str> = HashMap::new();
    let mut local = Vec::new();
    for ((ns, name), pod) in pods {
        let who = format!("Pod {ns}/{name}");
        if let Some(ip) = pod.ips.iter().find(|ip| ips_taken.contains_key(&ip.to_canonical())) {
            skipped.push(format!(
                "{who}: IP {ip} is also claimed by the newer {}; left out",
                ips_taken[&ip.to_canonical()]
            ));
            continue;
        }
        let mut w = match Workload::new(&mesh.trust_domain, ns, name, &pod.service_account) {
            Ok(w) => w,
            Err(e) => {
                skipped.push(format!("{who}: {e}"));
                continue;
            }
        };
        let gateway = pod.labels.get(GATEWAY_NAME).filter(|g| waypoints.contains_key(&(ns.as_str(), g.as_str())));
        // The label is anyone's to set; the waypoint's service account is what makes a pod
        // the waypoint (its identity is what the destination checks).
        let is_waypoint = match gateway {
            Some(g) if waypoints[&(ns.as_str(), g.as_str())].service_account == pod.service_account => {
                waypoint_pods.insert((ns, name), g);
                true
            }
            Some(g) => {
                skipped.push(format!(
                    "{who}: label {GATEWAY_NAME}={g}, but it runs as service account {}, not the waypoint's ({}); treated as an ordinary pod",
                    pod.service_account,
                    waypoints[&(ns.as_str(), g.as_str())].service_account
                ));
                false
            }
            None => false,
        };
        let in_mesh = captured(&pod.labels, ns_labels.get(ns.as_str()));
        // Waypoint pods speak HBONE themselves: reachable over 15008, never captured.
        w.protocol = if in_mesh || is_waypoint { Protocol::Hbone } else { Protocol::None };
        w.ips = pod.ips.clone();
        w.node = pod.node.clone();
        w.locality.zone = zones.get(&(ns.as_str(), name.as_str())).map(|z| (*z).to_owned());
        w.labels = wp.checked(("Pod", ns, name), ns, &pod.labels, &mut skipped);
        w.uid = pod.uid.clone();
        for ip in &pod.ips {
            ips_taken.insert(ip.to_canonical(), who.clone());
        }
        if in_mesh && !is_waypoint && node == Some(pod.node.as_str()) {
            local.push(local_pod(ns, name, pod));
        }
        workloads.insert((ns, name));
        b.workload(w);
    }
    local.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut slices: HashMap<(&str, &str), Vec<&crate::objects::SliceInfo>> = HashMap::new();
    for ((ns, _), s) in cache.slices.iter() {
        slices.entry((ns.as_str(), s.service.as_str())).or_default().push(s);
    }
    let mut vips_taken: HashSet<SocketAddr> = HashSet::new();
    for ((ns, name), svc) in cache.services.iter() {
        let who = format!("Service {ns}/{name}");
        let svc_slices = slices.get(&(ns.as_str(), name.as_str())).map(Vec::as_slice).unwrap_or_default();
        if let Some(ip) = svc.vips.iter().find(|ip| ips_taken.contains_key(&ip.to_canonical())) {
            skipped.push(format!("{who}: VIP {ip} is a pod's address ({}); left out", ips_taken[&ip.to_canonical()]));
            continue;
        }
        let mut ports = Vec::new();
        for p in &svc.ports {
            let target = match &p.target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(_) => {
                    svc_slices.iter().flat_map(|s| &s.ports).find(|(n, _)| *n == p.name).map(|(_, port)| *port)
                }
            };
            match target {
                Some(target_port) => ports.push(ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port,
                    protocol: p.protocol,
                    app_protocol: p.app_protocol.clone(),
                }),
                // No ready endpoint resolved the name yet: nothing to send to anyway.
                None => skipped.push(format!(
                    "{who}: port {} has a named targetPort no EndpointSlice resolves yet; port left out",
                    p.port
                )),
            }
        }
        let addrs: Vec<SocketAddr> =
            svc.vips.iter().flat_map(|ip| ports.iter().map(|p| SocketAddr::new(ip.to_canonical(), p.port))).collect();
        if let Some(a) = addrs.iter().find(|a| vips_taken.contains(a)) {
            skipped.push(format!("{who}: {a} is already another Service's; left out"));
            continue;
        }
        vips_taken.extend(addrs);
        let is_waypoint = waypoints.contains_key(&(ns.as_str(), name.as_str()));
        let mut backends: Vec<(String, String)> = svc_slices
            .iter()
            .flat_map(|s| &s.pods)
            .filter(|p| workloads.contains(&(ns.as_str(), p.as_str())))
            // A waypoint's Service selects by the gateway-name label, which an impostor
            // can carry: only the waypoint's own pods may receive its traffic, and only
            // their identities pass for it (`Model::is_waypoint_identity`).
            .filter(|p| {
                let own = waypoint_pods.get(&(ns.as_str(), p.as_str())) == Some(&name.as_str());
                if is_waypoint && !own {
                    skipped.push(format!("{who}: endpoint {p} is not one of waypoint {ns}/{name}'s pods; left out"));
                }
                !is_waypoint || own
            })
            .map(|p| (ns.clone(), p.clone()))
            .collect();
        backends.sort();
        backends.dedup();
        b.service(Service {
            name: name.clone(),
            namespace: ns.clone(),
            vips: svc.vips.clone(),
            ports,
            endpoints: Endpoints::Workloads(backends),
            labels: wp.checked(("Service", ns, name), ns, &svc.labels, &mut skipped),
            waypoint: None,
            traffic_distribution: svc.traffic_distribution,
        });
    }

    for ((ns, name), p) in cache.authorization_policies.iter() {
        if let Some(e) = &p.problem {
            skipped.push(format!("AuthorizationPolicy {ns}/{name}: {e}"));
        }
        b.authorization_policy(p.value.clone());
    }
    for ((ns, name), p) in cache.peer_authentications.iter() {
        if let Some(e) = &p.problem {
            skipped.push(format!("PeerAuthentication {ns}/{name}: {e}"));
        }
        b.peer_authentication(p.value.clone());
    }

    let model = b.build(version)?;
    Ok(Built { model, skipped, local })
}

/// Usable waypoints by (namespace, name).
type Waypoints<'c> = HashMap<(&'c str, &'c str), &'c WaypointInfo>;

/// What decides whether a `use-waypoint` label is honoured.
struct WaypointCheck<'a, 'c> {
    waypoints: &'a Waypoints<'c>,
    /// Every namespace's labels, for the waypoints' `allowedRoutes` selectors.
    ns_labels: &'a HashMap<&'c str, &'c BTreeMap<String, String>>,
}

impl WaypointCheck<'_, '_> {
    /// An object's labels with an unusable `istio.io/use-waypoint` removed (and reported):
    /// the object then follows its namespace's waypoint, if any, as if it had no label.
    /// Unusable: no such waypoint, or one in another namespace that does not admit the
    /// object's. Either way its traffic goes without that waypoint (fail open, as before:
    /// refusing it would let a waypoint owner cut off any namespace that names it), and
    /// the source's status says so.
    fn checked(
        &self,
        (kind, ns, name): (&str, &str, &str),
        own_ns: &str,
        labels: &BTreeMap<String, String>,
        skipped: &mut Vec<String>,
    ) -> BTreeMap<String, String> {
        let mut labels = labels.clone();
        let Some(wp) = labels.get(USE_WAYPOINT).filter(|v| *v != DATAPLANE_NONE) else { return labels };
        let wp_ns = labels.get(USE_WAYPOINT_NAMESPACE).map_or(own_ns, String::as_str);
        let why = match self.waypoints.get(&(wp_ns, wp.as_str())) {
            None => Some(format!(
                "no Gateway {wp_ns}/{wp} of class pillion-waypoint or istio-waypoint with an HBONE listener on 15008 and a Service of that name"
            )),
            Some(w) if !w.allowed.admits(wp_ns, own_ns, self.ns_labels.get(own_ns).copied()) => Some(format!(
                "Gateway {wp_ns}/{wp} {}, not namespace {own_ns}; its traffic goes without that waypoint until the Gateway's HBONE listener allows it",
                w.allowed.describe()
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            let who = if ns.is_empty() { name.to_owned() } else { format!("{ns}/{name}") };
            skipped.push(format!("{kind} {who}: label {USE_WAYPOINT}={wp} ignored: {why}"));
            labels.remove(USE_WAYPOINT);
            labels.remove(USE_WAYPOINT_NAMESPACE);
        }
        labels
    }
}

fn local_pod(ns: &str, name: &str, pod: &PodInfo) -> LocalPod {
    LocalPod { namespace: ns.to_owned(), name: name.to_owned(), uid: pod.uid.clone(), ips: pod.ips.clone() }
}
