//! A waypoint's service account and its `allowedRoutes`, read from Gateways as users write them.

use std::collections::BTreeMap;

use gateway_api::apis::experimental::gateways::Gateway;
use serde_json::{Value, json};

use super::{AllowedNamespaces, service_account};
use crate::waypoints::{Settings, desired};

fn gateway(class: &str, annotations: Value, allowed_routes: Option<Value>) -> Gateway {
    let mut listener = json!({"name": "mesh", "port": 15008, "protocol": "HBONE"});
    if let Some(a) = allowed_routes {
        listener["allowedRoutes"] = a;
    }
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "infra", "uid": "gw-uid", "annotations": annotations},
        "spec": {"gatewayClassName": class, "listeners": [
            // Istio reads the HBONE listener only: another listener's openness is not consent.
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
            listener
        ]}
    }))
    .unwrap()
}

fn allowed(namespaces: Value) -> AllowedNamespaces {
    AllowedNamespaces::of(&gateway("istio-waypoint", json!({}), Some(json!({"namespaces": namespaces}))))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_controller_names_the_account_the_source_trusts() {
    let annotated = json!({"gateway.istio.io/service-account": "custom"});
    let ours = gateway("pillion-waypoint", annotated.clone(), None);
    let [sa, deployment, ..] = desired(&ours, &Settings::for_namespace("pillion-system"), "pem").unwrap();
    assert_eq!(sa["metadata"]["name"], "wp");
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "wp");
    // Pillion's controller ignores Istio's annotation, so the source must too.
    assert_eq!(service_account(&ours), "wp");
    // Istio's controller honours it for istio-waypoint Gateways, and names the account
    // after the Gateway (no class suffix) otherwise.
    assert_eq!(service_account(&gateway("istio-waypoint", annotated, None)), "custom");
    assert_eq!(service_account(&gateway("istio-waypoint", json!({}), None)), "wp");
}

#[test]
fn a_waypoint_admits_other_namespaces_only_as_its_hbone_listener_says() {
    let team = labels(&[("team", "shop"), ("env", "prod")]);
    let cases: Vec<(&str, AllowedNamespaces, bool)> = vec![
        ("no allowedRoutes: Same", AllowedNamespaces::of(&gateway("istio-waypoint", json!({}), None)), false),
        ("no namespaces: Same", AllowedNamespaces::of(&gateway("istio-waypoint", json!({}), Some(json!({})))), false),
        ("from unset: Same", allowed(json!({})), false),
        ("Same", allowed(json!({"from": "Same"})), false),
        ("All", allowed(json!({"from": "All"})), true),
        ("matching labels", allowed(json!({"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}})), true),
        ("other labels", allowed(json!({"from": "Selector", "selector": {"matchLabels": {"team": "ads"}}})), false),
        ("empty selector: every namespace", allowed(json!({"from": "Selector", "selector": {}})), true),
        (
            "In",
            allowed(json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]}]}})),
            true,
        ),
        (
            "NotIn",
            allowed(json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "env", "operator": "NotIn", "values": ["prod"]}]}})),
            false,
        ),
        (
            "Exists and DoesNotExist",
            allowed(json!({"from": "Selector", "selector": {"matchLabels": {"team": "shop"}, "matchExpressions": [
                {"key": "env", "operator": "Exists"}, {"key": "quarantine", "operator": "DoesNotExist"}]}})),
            true,
        ),
        ("Selector without a selector", allowed(json!({"from": "Selector"})), false),
        (
            "unknown operator",
            allowed(json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "env", "operator": "Like", "values": ["p*"]}]}})),
            false,
        ),
        (
            "In without values",
            allowed(json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "env", "operator": "NotIn", "values": []}]}})),
            false,
        ),
    ];
    for (name, a, want) in cases {
        assert_eq!(a.admits("infra", "shop", Some(&team)), want, "{name}: {a:?}");
        // Consent is about crossing namespaces: the Gateway's own is always in.
        assert!(a.admits("infra", "infra", None), "{name}: own namespace");
    }
    assert!(matches!(allowed(json!({"from": "Selector"})), AllowedNamespaces::Invalid(_)));
}

#[test]
fn a_namespace_not_seen_matches_as_one_without_labels() {
    let a = allowed(json!({"from": "Selector", "selector": {"matchExpressions": [
        {"key": "quarantine", "operator": "DoesNotExist"}]}}));
    assert!(a.admits("infra", "new", None));
    let a = allowed(json!({"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}));
    assert!(!a.admits("infra", "new", None));
}
