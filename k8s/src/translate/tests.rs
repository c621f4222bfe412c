//! The cache → model function on its own: the conflicts a cluster can produce and the
//! model builder would refuse wholesale.

use std::collections::BTreeMap;

use mesh::model::{MeshSettings, PortProtocol};

use super::build;
use crate::cache::{Cache, Change, Ev};
use crate::objects::{NamespaceInfo, PodInfo, ServiceInfo, ServicePortInfo, SliceInfo, TargetPort, WaypointInfo};

fn synced() -> Cache {
    let c = Cache::listed_empty();
    assert!(c.synced());
    c
}

fn key(name: &str) -> (String, String) {
    ("shop".into(), name.into())
}

fn pod(ip: &str, created: i64) -> PodInfo {
    PodInfo {
        labels: BTreeMap::new(),
        service_account: "default".into(),
        node: "n".into(),
        ips: vec![ip.parse().unwrap()],
        uid: None,
        created,
    }
}

#[test]
fn an_ip_claimed_twice_goes_to_the_newer_pod() {
    let mut c = synced();
    c.apply(Change::Pod(Ev::Apply(key("old"), Some(pod("10.0.0.1", 100)))));
    c.apply(Change::Pod(Ev::Apply(key("new"), Some(pod("10.0.0.1", 200)))));
    let built = build(&c, &MeshSettings::default(), None, 1).expect("conflicts never fail the build");
    assert!(built.model.workload("shop", "new").is_some());
    assert!(built.model.workload("shop", "old").is_none());
    assert_eq!(built.skipped.len(), 1);
    assert!(built.skipped[0].contains("Pod shop/old: IP 10.0.0.1"), "{:?}", built.skipped);
}

#[test]
fn named_target_ports_resolve_through_slices_and_bad_vips_are_left_out() {
    let mut c = synced();
    c.apply(Change::Pod(Ev::Apply(key("web-0"), Some(pod("10.0.0.1", 1)))));
    let port = |target| ServicePortInfo {
        name: "http".into(),
        port: 80,
        target,
        protocol: PortProtocol::Tcp,
        app_protocol: None,
    };
    let svc = |vip: &str, target| ServiceInfo {
        labels: BTreeMap::new(),
        vips: vec![vip.parse().unwrap()],
        ports: vec![port(target)],
        traffic_distribution: Some(mesh::model::TrafficDistribution::PreferSameZone),
    };
    c.apply(Change::Service(Ev::Apply(key("web"), Some(svc("10.96.0.1", TargetPort::Name("http".into()))))));
    c.apply(Change::Slice(Ev::Apply(
        key("web-x"),
        Some(SliceInfo {
            service: "web".into(),
            ports: vec![("http".into(), 8080)],
            pods: vec!["web-0".into()],
            zones: vec![("web-0".into(), "zone-a".into())],
        }),
    )));
    // A VIP that is a pod address, and a second owner of the same VIP:port.
    c.apply(Change::Service(Ev::Apply(key("bad"), Some(svc("10.0.0.1", TargetPort::Number(80))))));
    c.apply(Change::Service(Ev::Apply(key("zz-dup"), Some(svc("10.96.0.1", TargetPort::Number(80))))));
    let built = build(&c, &MeshSettings::default(), None, 1).unwrap();
    let t = built.model.service_by_vip("10.96.0.1:80".parse().unwrap()).unwrap();
    assert_eq!(t.service.name, "web");
    assert_eq!(t.port.target_port, 8080);
    assert_eq!(t.endpoints.len(), 1);
    // Locality: the zone the slice gave the pod, and the Service's traffic distribution.
    assert_eq!(built.model.workload("shop", "web-0").unwrap().locality.zone.as_deref(), Some("zone-a"));
    assert_eq!(t.service.traffic_distribution, Some(mesh::model::TrafficDistribution::PreferSameZone));
    assert!(built.model.service("shop", "bad").is_none());
    assert!(built.model.service("shop", "zz-dup").is_none());
    assert_eq!(built.skipped.len(), 2, "{:?}", built.skipped);
}

fn gateway(ns: &str, name: &str, class: &str, allowed_routes: Option<serde_json::Value>) -> WaypointInfo {
    let mut listener = serde_json::json!({"name": "mesh", "port": 15008, "protocol": "HBONE"});
    if let Some(a) = allowed_routes {
        listener["allowedRoutes"] = a;
    }
    let gw = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [listener]}
    }))
    .unwrap();
    WaypointInfo::from_k8s(&gw).expect("a waypoint Gateway")
}

fn labelled(mut p: PodInfo, sa: &str, labels: &[(&str, &str)]) -> PodInfo {
    p.service_account = sa.into();
    p.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    p
}

fn mesh_service(vip: &str, port: u16) -> ServiceInfo {
    ServiceInfo {
        labels: BTreeMap::new(),
        vips: vec![vip.parse().unwrap()],
        ports: vec![ServicePortInfo {
            name: "mesh".into(),
            port,
            target: TargetPort::Number(port),
            protocol: PortProtocol::Tcp,
            app_protocol: None,
        }],
        traffic_distribution: None,
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Change {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Change::Namespace(Ev::Apply((String::new(), name.into()), Some(NamespaceInfo { labels })))
}

#[test]
fn a_pod_with_the_gateway_label_but_another_account_is_captured_and_never_the_waypoint() {
    let mut c = synced();
    c.apply(namespace("shop", &[("istio.io/dataplane-mode", "ambient"), ("istio.io/use-waypoint", "wp")]));
    let gw_label = ("gateway.networking.k8s.io/gateway-name", "wp");
    c.apply(Change::Pod(Ev::Apply(key("wp-0"), Some(labelled(pod("10.0.0.9", 1), "wp", &[gw_label])))));
    c.apply(Change::Pod(Ev::Apply(key("impostor"), Some(labelled(pod("10.0.0.66", 2), "default", &[gw_label])))));
    c.apply(Change::Pod(Ev::Apply(key("cart-0"), Some(pod("10.0.0.1", 3)))));
    c.apply(Change::Waypoint(Ev::Apply(key("wp"), Some(gateway("shop", "wp", "pillion-waypoint", None)))));
    c.apply(Change::Service(Ev::Apply(key("wp"), Some(mesh_service("10.96.0.9", 15008)))));
    // The Service selects by the label, so its EndpointSlice lists the impostor too.
    c.apply(Change::Slice(Ev::Apply(
        key("wp-x"),
        Some(SliceInfo {
            service: "wp".into(),
            ports: vec![("mesh".into(), 15008)],
            pods: vec!["wp-0".into(), "impostor".into()],
            zones: Vec::new(),
        }),
    )));
    let built = build(&c, &MeshSettings::default(), Some("n"), 1).unwrap();
    let m = &built.model;
    let local: Vec<_> = built.local.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(local, ["cart-0", "impostor"], "the impostor is captured like any pod of its namespace");
    let wp = m.workload("shop", "cart-0").unwrap().waypoint.clone().expect("cart-0 uses the waypoint");
    let impostor = m.workload("shop", "impostor").unwrap();
    assert!(!m.is_waypoint_identity(&wp, impostor.identity().spiffe_id()));
    assert!(m.is_waypoint_identity(&wp, m.workload("shop", "wp-0").unwrap().identity().spiffe_id()));
    let serving: Vec<_> = m.waypoint_workloads(&wp).map(|w| w.name()).collect();
    assert_eq!(serving, ["wp-0"], "nor does the impostor receive the waypoint's traffic");
    assert!(
        built.skipped.iter().any(|s| s.starts_with("Pod shop/impostor:") && s.contains("service account default")),
        "{:?}",
        built.skipped
    );
}

#[test]
fn istio_waypoints_trust_the_account_their_annotation_names() {
    let mut c = synced();
    c.apply(namespace("shop", &[("istio.io/dataplane-mode", "ambient")]));
    let gw_label = ("gateway.networking.k8s.io/gateway-name", "wp");
    c.apply(Change::Pod(Ev::Apply(key("wp-0"), Some(labelled(pod("10.0.0.9", 1), "custom", &[gw_label])))));
    let mut gw: gateway_api::apis::experimental::gateways::Gateway = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "shop", "annotations": {"gateway.istio.io/service-account": "custom"}},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    }))
    .unwrap();
    c.apply(Change::Waypoint(Ev::Apply(key("wp"), WaypointInfo::from_k8s(&gw))));
    c.apply(Change::Service(Ev::Apply(key("wp"), Some(mesh_service("10.96.0.9", 15008)))));
    let built = build(&c, &MeshSettings::default(), Some("n"), 1).unwrap();
    assert!(built.local.is_empty(), "a waypoint pod is never captured");
    assert!(built.skipped.is_empty(), "{:?}", built.skipped);
    // Without the annotation the account must be named after the Gateway: `custom` is
    // then just another account of an enrolled namespace.
    gw.metadata.annotations = None;
    c.apply(Change::Waypoint(Ev::Apply(key("wp"), WaypointInfo::from_k8s(&gw))));
    let built = build(&c, &MeshSettings::default(), Some("n"), 2).unwrap();
    assert_eq!(built.local.len(), 1, "captured");
    assert!(built.skipped.iter().any(|s| s.starts_with("Pod shop/wp-0:")), "{:?}", built.skipped);
}

#[test]
fn a_waypoint_of_another_namespace_is_used_only_with_its_consent() {
    let mut c = synced();
    c.apply(namespace("shop", &[("team", "shop")]));
    c.apply(namespace("infra", &[]));
    let uses = |wp: &'static str| [("istio.io/use-waypoint", wp), ("istio.io/use-waypoint-namespace", "infra")];
    let shop = |name: &str| ("shop".to_owned(), name.to_owned());
    let infra = |name: &str| ("infra".to_owned(), name.to_owned());
    let cases = [
        ("closed", None, false),
        ("open", Some(serde_json::json!({"namespaces": {"from": "All"}})), true),
        (
            "teams",
            Some(
                serde_json::json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}}),
            ),
            true,
        ),
        (
            "others",
            Some(serde_json::json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "ads"}}}})),
            false,
        ),
    ];
    for (i, (wp, allowed, _)) in cases.iter().enumerate() {
        let ip = format!("10.0.0.{}", i + 1);
        c.apply(Change::Pod(Ev::Apply(shop(&format!("{wp}-user")), Some(labelled(pod(&ip, 1), "default", &uses(wp))))));
        c.apply(Change::Waypoint(Ev::Apply(infra(wp), Some(gateway("infra", wp, "istio-waypoint", allowed.clone())))));
        c.apply(Change::Service(Ev::Apply(infra(wp), Some(mesh_service(&format!("10.96.0.{}", i + 1), 15008)))));
    }
    // A Service and a namespace are held to the same consent as a pod.
    let mut svc = mesh_service("10.96.1.1", 80);
    svc.labels = uses("closed").iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    c.apply(Change::Service(Ev::Apply(shop("cart"), Some(svc))));
    c.apply(namespace("ads", &uses("closed")));
    let built = build(&c, &MeshSettings::default(), None, 1).unwrap();
    let m = &built.model;
    for (wp, _, admitted) in cases {
        let got = m.workload("shop", &format!("{wp}-user")).unwrap().waypoint.as_ref().map(|w| w.to_string());
        assert_eq!(got, admitted.then(|| format!("infra/{wp}")), "{wp}");
    }
    assert_eq!(m.service("shop", "cart").unwrap().waypoint, None);
    assert!(m.namespace_labels("ads").unwrap().get("istio.io/use-waypoint").is_none());
    let denied: Vec<_> = built.skipped.iter().filter(|s| s.contains("not namespace")).collect();
    assert_eq!(denied.len(), 4, "{:?}", built.skipped);
    assert!(
        denied.iter().any(|s| s.starts_with("Pod shop/closed-user: label istio.io/use-waypoint=closed ignored: Gateway infra/closed admits only its own namespace")),
        "{denied:?}"
    );
    assert!(denied.iter().any(|s| s.starts_with("Service shop/cart:")), "{denied:?}");
    assert!(denied.iter().any(|s| s.starts_with("Namespace ads:")), "{denied:?}");
}

#[test]
fn tied_peer_authentications_go_to_the_oldest_not_the_first_by_name() {
    let mut c = synced();
    c.apply(Change::Pod(Ev::Apply(key("cart-0"), Some(pod("10.0.0.1", 1)))));
    let pa = |name: &str, mode: &str, created: &str| {
        let o: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
            "spec": {"mtls": {"mode": mode}}
        }))
        .unwrap();
        Change::PeerAuthentication(Ev::Apply(key(name), crate::objects::peer_authentication(&o)))
    };
    // Both namespace-wide: equally specific. The newer one sorts first by name.
    c.apply(pa("a-strict", "STRICT", "2026-12-02T10:00:00Z"));
    c.apply(pa("b-permissive", "PERMISSIVE", "2026-12-01T10:00:00Z"));
    let m = build(&c, &MeshSettings::default(), None, 1).unwrap().model;
    let w = m.workload("shop", "cart-0").unwrap();
    assert_eq!(m.peer_auth_mode(w, 80), mesh::model::MtlsMode::Permissive);
}
