//! The Kubernetes source of the waypoint against the scripted API server: the first
//! snapshot, live updates, a refused AuthorizationPolicy keeping the last good L7
//! configuration, and a pod that never shows up.

use std::sync::Arc;
use std::time::Duration;

use pillion_k8s_fake::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{follow_kube, start_kube};
use crate::authz::PolicyTarget;
use crate::proxy::{Proxy, ProxyConfig};
use crate::route::ServiceKey;
use crate::testing::Scripted;

fn cluster() -> Vec<(&'static str, Value)> {
    vec![
        (NAMESPACES, namespace("shop", json!({"istio.io/dataplane-mode": "ambient"}))),
        (PODS, pod("shop", "wp-0", "node-a", "10.1.0.9", json!({"gateway.networking.k8s.io/gateway-name": "wp"}))),
        (PODS, pod("shop", "reviews-0", "node-b", "10.1.0.1", json!({"app": "reviews"}))),
        (SERVICES, service("shop", "wp", "10.96.0.9", 15008, 15008, json!({}))),
        (SERVICES, service("shop", "reviews", "10.96.0.20", 80, 9080, json!({}))),
        (SLICES, slice("shop", "wp", 15008, &[("wp-0", "10.1.0.9")])),
        (SLICES, slice("shop", "reviews", 9080, &[("reviews-0", "10.1.0.1")])),
        (GATEWAYS, gateway("shop", "wp", "pillion-waypoint")),
        (ROUTES, route("shop", "reviews", route_spec("reviews"))),
    ]
}

fn route_spec(service: &str) -> Value {
    json!({"parentRefs": [{"group": "", "kind": "Service", "name": service}],
           "rules": [{"backendRefs": [{"name": service, "port": 80}],
                      "retry": {"attempts": 2, "codes": [503]}}]})
}

fn deny(name: &str, paths: Value) -> Value {
    authz(
        "shop",
        name,
        json!({"targetRefs": [{"kind": "Service", "name": "reviews"}], "action": "DENY",
               "rules": [{"to": [{"operation": {"paths": paths}}]}]}),
    )
}

fn has_route(p: &Proxy, service: &str) -> bool {
    p.snapshot().l7.routes.has_routes(&ServiceKey::new("shop", service), 80, None)
}

/// Polls (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) -> Result<(), ()> {
    for _ in 0..500 {
        if f() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("timed out waiting until {what}");
    Err(())
}

#[tokio::test]
async fn the_waypoint_follows_the_cluster() {
    let (client, api) = FakeApi::start(cluster());
    let (kube, first) = start_kube(client, "shop", "wp-0", Some("wp"), Duration::from_secs(10)).await.unwrap();
    let me = first.model.workload("shop", "wp-0").expect("the waypoint's own pod is in the model");
    assert_eq!(me.identity().to_string(), "spiffe://cluster.local/ns/shop/sa/wp");
    assert!(first.l7.routes.has_routes(&ServiceKey::new("shop", "reviews"), 80, None));

    let proxy = Arc::new(Proxy::new(ProxyConfig::new(ServiceKey::new("shop", "wp")), first, Scripted::ok()));
    let stop = CancellationToken::new();
    tokio::spawn(follow_kube(kube, proxy.clone(), stop.clone()));

    // A new route and its Service arrive.
    api.apply(SERVICES, service("shop", "ratings", "10.96.0.21", 80, 9080, json!({})));
    api.apply(ROUTES, route("shop", "ratings", route_spec("ratings")));
    until("the ratings route applies", || has_route(&proxy, "ratings")).await.unwrap();
    assert!(proxy.snapshot().model.service("shop", "ratings").is_some());

    // A bad DENY is enforced as deny-all on its target; the rest keeps applying.
    api.apply(AUTHZ, deny("typo", json!("/admin")));
    api.delete(ROUTES, route("shop", "ratings", json!({})));
    until("the route deletion applies", || !has_route(&proxy, "ratings")).await.unwrap();
    let authz = proxy.snapshot().l7.authz.clone();
    assert_eq!(authz.len(), 1);
    assert_eq!((authz[0].name.as_str(), authz[0].rules.len()), ("typo", 1), "a deny-all stand-in");

    // A policy whose targets cannot be read is deny-all on its namespace; the rest of the
    // update still applies (one bad object never freezes the others).
    api.apply(AUTHZ, authz_unreadable("odd"));
    api.apply(ROUTES, route("shop", "ratings", route_spec("ratings")));
    until("the route applies beside the unreadable policy", || has_route(&proxy, "ratings")).await.unwrap();
    until("the unreadable policy is deny-all on its namespace", || {
        proxy.snapshot().l7.authz.iter().any(|p| p.name == "odd" && p.targets == [PolicyTarget::Namespace])
    })
    .await
    .unwrap();

    // Fixed: everything applies.
    api.delete(AUTHZ, authz_unreadable("odd"));
    api.apply(AUTHZ, deny("typo", json!(["/admin"])));
    until("the stand-in is gone", || proxy.snapshot().l7.authz.iter().all(|p| p.name != "odd")).await.unwrap();
    until("the fixed policy applies", || {
        proxy.snapshot().l7.authz.iter().any(|p| p.name == "typo" && p.rules[0].to.len() == 1)
    })
    .await
    .unwrap_or_else(|()| panic!("{:#?}", proxy.snapshot().l7.authz));
    assert!(has_route(&proxy, "reviews"));
    stop.cancel();
}

fn authz_unreadable(name: &str) -> Value {
    authz("shop", name, json!({"targetRefs": "all of them", "action": "DENY"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_snapshot_has_the_policies_of_the_first_list() {
    // On a multi-threaded runtime, as in the binary: the L7 objects must be there as soon
    // as the source says it is synced.
    for _ in 0..20 {
        let mut objects = cluster();
        objects.push((AUTHZ, deny("no-admin", json!(["/admin"]))));
        let (client, _api) = FakeApi::start(objects);
        let (_kube, first) = start_kube(client, "shop", "wp-0", Some("wp"), Duration::from_secs(10)).await.unwrap();
        assert_eq!(first.l7.authz.len(), 1, "a waypoint must never start without its policies");
    }
}

#[tokio::test]
async fn an_unreadable_policy_of_another_tenant_does_not_keep_a_new_waypoint_waiting() {
    let mut objects = cluster();
    objects.push((AUTHZ, authz("other", "odd", json!({"targetRefs": "all of them", "action": "DENY"}))));
    let (client, _api) = FakeApi::start(objects);
    let (_kube, first) = start_kube(client, "shop", "wp-0", Some("wp"), Duration::from_secs(10))
        .await
        .expect("ready: the bad policy binds only its own namespace");
    assert!(first.l7.routes.has_routes(&ServiceKey::new("shop", "reviews"), 80, None));
    let stand_in = first.l7.authz.iter().find(|p| p.name == "odd").expect("enforced, not dropped");
    assert_eq!((stand_in.namespace.as_str(), &stand_in.targets[..]), ("other", &[PolicyTarget::Namespace][..]));
}

#[tokio::test]
async fn no_access_to_the_api_is_a_clear_error() {
    let (client, api) = FakeApi::start(cluster());
    api.fail_lists(PODS, 1_000);
    let e = start_kube(client, "shop", "wp-0", Some("wp"), Duration::from_millis(500)).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("no full list from the API server") && msg.contains("pillion-waypoints"), "{msg}");
}

#[tokio::test]
async fn a_pod_that_never_appears_is_a_clear_error() {
    let (client, _api) = FakeApi::start(cluster());
    let e = start_kube(client, "shop", "wp-9", Some("wp"), Duration::from_millis(300)).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("pod shop/wp-9 or Service shop/wp not in the cluster's model"), "{msg}");
    assert!(msg.contains("POD_NAME"), "{msg}");
}
