//! The cache → model function on its own: the conflicts a cluster can produce and the
//! model builder would refuse wholesale.

use std::collections::BTreeMap;

use mesh::model::{MeshSettings, PortProtocol};

use super::build;
use crate::cache::{Cache, Change, Ev};
use crate::objects::{PodInfo, ServiceInfo, ServicePortInfo, SliceInfo, TargetPort};

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
    };
    c.apply(Change::Service(Ev::Apply(key("web"), Some(svc("10.96.0.1", TargetPort::Name("http".into()))))));
    c.apply(Change::Slice(Ev::Apply(
        key("web-x"),
        Some(SliceInfo { service: "web".into(), ports: vec![("http".into(), 8080)], pods: vec!["web-0".into()] }),
    )));
    // A VIP that is a pod address, and a second owner of the same VIP:port.
    c.apply(Change::Service(Ev::Apply(key("bad"), Some(svc("10.0.0.1", TargetPort::Number(80))))));
    c.apply(Change::Service(Ev::Apply(key("zz-dup"), Some(svc("10.96.0.1", TargetPort::Number(80))))));
    let built = build(&c, &MeshSettings::default(), None, 1).unwrap();
    let t = built.model.service_by_vip("10.96.0.1:80".parse().unwrap()).unwrap();
    assert_eq!(t.service.name, "web");
    assert_eq!(t.port.target_port, 8080);
    assert_eq!(t.endpoints.len(), 1);
    assert!(built.model.service("shop", "bad").is_none());
    assert!(built.model.service("shop", "zz-dup").is_none());
    assert_eq!(built.skipped.len(), 2, "{:?}", built.skipped);
}
