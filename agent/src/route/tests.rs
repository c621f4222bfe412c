use super::*;

const CONFIG: &str = r#"
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {serviceAccount: client, ips: [10.1.1.2, "fd00:1:1::2"], node: a}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: server-0, namespace: default, labels: {app: server}}
spec: {serviceAccount: server, ips: [10.2.1.2, "fd00:2:1::2"], node: b}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: default, labels: {app: server}}
spec: {serviceAccount: server, ips: [10.2.2.2], node: b}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: legacy, namespace: default, labels: {app: server}}
spec: {ips: [10.2.3.2], node: b, protocol: NONE}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: server, namespace: default}
spec:
  clusterIPs: [10.96.0.10]
  ports: [{name: tcp, port: 80, targetPort: 8080}]
  selector: {app: server}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: guarded, namespace: default, labels: {app: guarded}}
spec: {serviceAccount: guarded, ips: [10.2.4.2], node: b}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: guarded, namespace: default, labels: {istio.io/use-waypoint: wp}}
spec:
  clusterIPs: [10.96.0.11]
  ports: [{name: tcp, port: 80, targetPort: 8080}]
  selector: {app: guarded}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: wp-0, namespace: default, labels: {app: wp, istio.io/use-waypoint: none}}
spec: {serviceAccount: wp, ips: [10.2.5.2], node: b}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: wp, namespace: default, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIPs: [10.96.0.20]
  ports: [{name: mesh, port: 15008}]
  selector: {app: wp}
"#;

fn model() -> Model {
    mesh::config::parse(CONFIG, "test.yaml", 1).expect("test config parses")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn mesh_workload_goes_over_hbone_to_its_15008() {
    let m = model();
    let client = m.workload("default", "client");
    let r = route(&m, client, addr("10.2.1.2:8080"), 0);
    assert_eq!(r.service, None);
    match &r.hops[..] {
        [Hop::Hbone { hbone_addr, target, identity, via_waypoint: false, .. }] => {
            assert_eq!(*hbone_addr, addr("10.2.1.2:15008"));
            assert_eq!(target.socket_addr(), Some(addr("10.2.1.2:8080")));
            assert_eq!(identity.as_str(), "spiffe://cluster.local/ns/default/sa/server");
        }
        other => panic!("{other:?}"),
    }
    // IPv6 destinations keep their family.
    let r = route(&m, client, addr("[fd00:2:1::2]:8080"), 0);
    assert!(matches!(&r.hops[..], [Hop::Hbone { hbone_addr, .. }] if *hbone_addr == addr("[fd00:2:1::2]:15008")));
}

#[test]
fn outside_the_mesh_is_passthrough_either_way() {
    let m = model();
    let client = m.workload("default", "client");
    assert_eq!(
        route(&m, client, addr("192.0.2.1:443"), 0).hops,
        vec![Hop::Plain { dst: addr("192.0.2.1:443"), workload: None }]
    );
    // A destination with protocol NONE.
    assert!(matches!(&route(&m, client, addr("10.2.3.2:8080"), 0).hops[..], [Hop::Plain { .. }]));
    // A source the model does not know: no certificate to present.
    assert!(matches!(&route(&m, None, addr("10.2.1.2:8080"), 0).hops[..], [Hop::Plain { .. }]));
}

#[test]
fn a_service_vip_rotates_over_its_endpoints_with_target_ports() {
    let m = model();
    let client = m.workload("default", "client");
    let firsts: Vec<SocketAddr> = (0..3)
        .map(|rr| match &route(&m, client, addr("10.96.0.10:80"), rr).hops[0] {
            Hop::Hbone { target, .. } => target.socket_addr().unwrap(),
            Hop::Plain { dst, .. } => *dst,
        })
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(sorted, vec![addr("10.2.1.2:8080"), addr("10.2.2.2:8080"), addr("10.2.3.2:8080")]);
    let r = route(&m, client, addr("10.96.0.10:80"), 0);
    assert_eq!(r.hops.len(), 3, "every endpoint is a fallback candidate");
    assert_eq!(r.service, Some(("default".into(), "server".into())));
    // The NONE endpoint is reached in plaintext, the others over HBONE.
    assert_eq!(r.hops.iter().filter(|h| matches!(h, Hop::Plain { .. })).count(), 1);
}

#[test]
fn a_service_with_a_waypoint_goes_to_the_waypoint_with_the_service_host() {
    let m = model();
    let client = m.workload("default", "client");
    let r = route(&m, client, addr("10.96.0.11:80"), 0);
    match &r.hops[..] {
        [Hop::Hbone { hbone_addr, target, via_waypoint: true, identity, .. }] => {
            assert_eq!(*hbone_addr, addr("10.2.5.2:15008"));
            assert_eq!(target.host, Host::Name("guarded.default.svc.cluster.local".into()));
            assert_eq!(target.port, 80);
            assert_eq!(identity.as_str(), "spiffe://cluster.local/ns/default/sa/wp");
        }
        other => panic!("{other:?}"),
    }
    let guarded = m.workload("default", "guarded").unwrap();
    let ids = required_waypoint_identities(&m, guarded).expect("guarded sits behind a waypoint");
    assert_eq!(ids.iter().map(|i| i.as_str()).collect::<Vec<_>>(), vec!["spiffe://cluster.local/ns/default/sa/wp"]);
    assert_eq!(required_waypoint_identities(&m, m.workload("default", "server-0").unwrap()), None);
}
