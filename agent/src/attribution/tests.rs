use super::*;

const SHOP_P: &str = r#"
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: p, namespace: shop}
spec: {serviceAccount: cart, ips: [10.0.0.5], node: a}
"#;

fn model(yaml: &str) -> Model {
    mesh::config::parse(yaml, "test.yaml", 1).expect("test config parses")
}

fn pod(namespace: &str, name: &str, ip: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        namespace: namespace.into(),
        netns: "/var/run/netns/x".into(),
        ips: vec![ip.parse().unwrap()],
        cgroup: None,
        uid: None,
    }
}

/// With a uid on the model's side, as the Kubernetes source sets it.
fn with_uid(m: &Model, uid: &str) -> Model {
    let mut b = mesh::model::ModelBuilder::new(m.mesh().clone());
    for w in m.workloads() {
        let mut w = w.clone();
        w.uid = Some(uid.into());
        b.workload(w);
    }
    b.build(m.version() + 1).expect("model rebuilds")
}

#[test]
fn an_ip_reused_by_another_pod_does_not_get_its_identity() {
    // shop/p died; evil/q got its address before the model dropped shop/p.
    // Choosing by address alone handed q shop/p's certificate and policies.
    let m = model(SHOP_P);
    let got = attribute(&m, "a", &pod("evil", "q", "10.0.0.5"));
    assert_eq!(
        got.map(|w| w.identity().to_string()),
        Err(Unattributed::AddressOfAnother {
            pod: "evil/q".into(),
            ip: "10.0.0.5".parse().unwrap(),
            owner: "shop/p".into()
        })
    );
}

#[test]
fn a_pod_is_the_workload_of_its_own_name_on_this_node() {
    let m = model(SHOP_P);
    let w = attribute(&m, "a", &pod("shop", "p", "10.0.0.5")).expect("attributed");
    assert_eq!(w.identity().to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
}

#[test]
fn a_pod_missing_from_the_model_is_not_attributed() {
    let m = model(SHOP_P);
    assert_eq!(
        attribute(&m, "a", &pod("shop", "new", "10.0.0.9")).map(Workload::name),
        Err(Unattributed::NotInModel { pod: "shop/new".into() })
    );
}

#[test]
fn a_namesake_elsewhere_or_with_other_addresses_is_not_the_pod() {
    let m = model(SHOP_P);
    let elsewhere = attribute(&m, "b", &pod("shop", "p", "10.0.0.5"));
    assert!(matches!(elsewhere, Err(Unattributed::OtherNode { ref node, .. }) if node == "a"), "{elsewhere:?}");
    // A StatefulSet pod re-created under the same name with a new address.
    let moved = attribute(&m, "a", &pod("shop", "p", "10.0.0.6"));
    assert!(matches!(moved, Err(Unattributed::OtherAddresses { .. })), "{moved:?}");
}

#[test]
fn uids_must_agree_when_both_sides_know_them() {
    let m = with_uid(&model(SHOP_P), "uid-1");
    let mut p = pod("shop", "p", "10.0.0.5");
    assert!(attribute(&m, "a", &p).is_ok(), "an enrolment without a uid matches by name and address");
    p.uid = Some("uid-1".into());
    assert!(attribute(&m, "a", &p).is_ok());
    p.uid = Some("uid-2".into());
    assert!(matches!(attribute(&m, "a", &p), Err(Unattributed::OtherUid { .. })));
    assert!(attribute(&model(SHOP_P), "a", &p).is_ok(), "a model without uids matches by name and address");
}

#[tokio::test(start_paused = true)]
async fn the_wait_ends_when_the_model_lists_the_pod() {
    let (tx, rx) = watch::channel(Arc::new(Model::default()));
    let started = tokio::time::Instant::now();
    let p = pod("shop", "p", "10.0.0.5");
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { wait_for_pod(&rx, "a", &p, Duration::from_secs(5)).await }
    });
    tokio::task::yield_now().await;
    // An unrelated change does not end the wait; the one listing the pod does.
    tx.send(Arc::new(model(&SHOP_P.replace("name: p", "name: other")))).unwrap();
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    tx.send(Arc::new(model(SHOP_P))).unwrap();
    let got = waiting.await.unwrap();
    assert!(attribute(&got, "a", &p).is_ok());
    assert_eq!(started.elapsed(), Duration::ZERO, "woken by the change, not by the deadline");
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_bounded() {
    let (_tx, rx) = watch::channel(Arc::new(model(SHOP_P)));
    let started = tokio::time::Instant::now();
    let got = wait_for_pod(&rx, "a", &pod("evil", "q", "10.0.0.5"), Duration::from_secs(2)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(attribute(&got, "a", &pod("evil", "q", "10.0.0.5")).is_err());
}
