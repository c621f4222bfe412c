//! The source against kube's mock client: a scripted API server (`pillion_k8s_fake`) answers the
//! real kube-rs watchers, so these tests cover list/watch handling, relists and backoff
//! as well as translation.

use std::time::Duration;

use mesh::model::authz::{Condition, StringMatch};
use mesh::model::{Action, MeshSettings, Model, MtlsMode, Protocol};
use serde_json::{Value, json};

use super::{KubeSource, Options};
use pillion_k8s_fake::*;

fn options(node: &str) -> Options {
    Options {
        node: Some(node.into()),
        debounce: Duration::from_millis(5),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Options::default()
    }
}

/// Waits (bounded) until the published model satisfies `f`.
async fn model_where(src: &KubeSource, what: &str, f: impl Fn(&Model) -> bool) -> std::sync::Arc<Model> {
    let mut rx = src.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|m| m.version() > 0 && f(m))).await;
    match waited {
        Ok(Ok(m)) => m.clone(),
        _ => panic!("timed out waiting for a model where {what}; status: {:#?}", src.status()),
    }
}

fn protocol(m: &Model, ns: &str, name: &str) -> Option<Protocol> {
    m.workload(ns, name).map(|w| w.protocol)
}

fn local_names(src: &KubeSource) -> Vec<String> {
    src.local_pods().borrow().iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
}

fn empty_crds() -> Vec<(&'static str, Value)> {
    Vec::new()
}

#[test_log::test(tokio::test)]
async fn namespace_label_enrols_and_pod_label_opts_out() {
    let ambient = json!({"istio.io/dataplane-mode": "ambient"});
    let mut objects = vec![
        (NAMESPACES, namespace("shop", ambient.clone())),
        (NAMESPACES, namespace("plain", json!({}))),
        (PODS, pod("shop", "cart-0", "node-a", "10.1.0.1", json!({"app": "cart"}))),
        (PODS, pod("shop", "web-0", "node-a", "10.1.0.2", json!({"istio.io/dataplane-mode": "none"}))),
        (PODS, pod("shop", "cart-1", "node-b", "10.2.0.1", json!({"app": "cart"}))),
        (PODS, pod("plain", "x-0", "node-a", "10.1.0.3", json!({}))),
        (PODS, pod("plain", "y-0", "node-a", "10.1.0.4", ambient.clone())),
        (SERVICES, service("shop", "cart", "10.96.0.10", 80, 8080, json!({}))),
        (SLICES, slice("shop", "cart", 8080, &[("cart-0", "10.1.0.1"), ("cart-1", "10.2.0.1")])),
    ];
    objects.extend(empty_crds());
    let (client, api) = FakeApi::start(objects);
    let src = KubeSource::start(client, options("node-a"));
    src.synced().await;
    let m = src.current();
    assert_eq!(protocol(&m, "shop", "cart-0"), Some(Protocol::Hbone), "namespace label enrols");
    assert_eq!(protocol(&m, "shop", "web-0"), Some(Protocol::None), "pod label `none` opts out");
    assert_eq!(protocol(&m, "plain", "x-0"), Some(Protocol::None), "unlabelled namespace: not in the mesh");
    assert_eq!(protocol(&m, "plain", "y-0"), Some(Protocol::Hbone), "pod label `ambient` enrols alone");
    assert_eq!(m.workload("shop", "cart-1").unwrap().node, "node-b");
    assert_eq!(m.workload("shop", "cart-0").unwrap().identity().as_str(), "spiffe://cluster.local/ns/shop/sa/cart");
    let target = m.service_by_vip("10.96.0.10:80".parse().unwrap()).expect("service by VIP");
    let mut eps: Vec<_> = target.endpoints.iter().map(|e| e.workload.name().to_owned()).collect();
    eps.sort();
    assert_eq!(eps, ["cart-0", "cart-1"]);
    assert_eq!(target.port.target_port, 8080);
    // Only this node's captured pods, with UIDs for finding their cgroups.
    assert_eq!(local_names(&src), ["plain/y-0", "shop/cart-0"]);
    assert_eq!(src.local_pods().borrow()[1].uid.as_deref(), Some("uid-cart-0"));

    // Label changes on running pods enrol and unenrol them.
    api.apply(PODS, pod("shop", "web-0", "node-a", "10.1.0.2", json!({})));
    api.apply(NAMESPACES, namespace("plain", ambient.clone()));
    let m = model_where(&src, "web-0 and x-0 enrolled", |m| {
        protocol(m, "shop", "web-0") == Some(Protocol::Hbone) && protocol(m, "plain", "x-0") == Some(Protocol::Hbone)
    })
    .await;
    assert!(m.version() >= 2);
    assert_eq!(local_names(&src), ["plain/x-0", "plain/y-0", "shop/cart-0", "shop/web-0"]);
    api.apply(NAMESPACES, namespace("shop", json!({})));
    model_where(&src, "shop unenrolled", |m| protocol(m, "shop", "cart-0") == Some(Protocol::None)).await;
    assert_eq!(local_names(&src), ["plain/x-0", "plain/y-0"]);
    // A deleted pod leaves the model and its service's endpoints.
    api.delete(PODS, pod("shop", "cart-1", "node-b", "10.2.0.1", json!({})));
    let m = model_where(&src, "cart-1 gone", |m| m.workload("shop", "cart-1").is_none()).await;
    let target = m.service_by_vip("10.96.0.10:80".parse().unwrap()).unwrap();
    assert_eq!(target.endpoints.len(), 1);
    assert!(src.status().skipped.is_empty(), "{:?}", src.status().skipped);
}

#[test_log::test(tokio::test)]
async fn gateways_of_the_waypoint_classes_become_waypoints() {
    let ns_labels = json!({"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp"});
    let wp_pod_labels = json!({"gateway.networking.k8s.io/gateway-name": "wp", "istio.io/dataplane-mode": "none"});
    // Serves other namespaces: its HBONE listener says so.
    let mut shared = gateway("infra", "shared", "istio-waypoint");
    shared["spec"]["listeners"][0]["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    let objects = vec![
        (NAMESPACES, namespace("shop", ns_labels)),
        (NAMESPACES, namespace("infra", json!({}))),
        (PODS, pod("shop", "cart-0", "node-a", "10.1.0.1", json!({}))),
        (PODS, pod("shop", "api-0", "node-a", "10.1.0.2", json!({"istio.io/use-waypoint": "other"}))),
        (
            PODS,
            pod(
                "shop",
                "db-0",
                "node-a",
                "10.1.0.3",
                json!({"istio.io/use-waypoint": "shared", "istio.io/use-waypoint-namespace": "infra"}),
            ),
        ),
        (PODS, pod("shop", "wp-0", "node-a", "10.1.0.9", wp_pod_labels.clone())),
        // The label, but service account `default`: not the waypoint's pod.
        (PODS, pod("shop", "default-0", "node-a", "10.1.0.66", wp_pod_labels)),
        (GATEWAYS, gateway("shop", "wp", "pillion-waypoint")),
        (SERVICES, service("shop", "wp", "10.96.0.20", 15008, 15008, json!({}))),
        (SLICES, slice("shop", "wp", 15008, &[("wp-0", "10.1.0.9"), ("default-0", "10.1.0.66")])),
        (GATEWAYS, shared),
        (SERVICES, service("infra", "shared", "10.96.0.21", 15008, 15008, json!({}))),
        // Another class: an ingress gateway, not a waypoint.
        (GATEWAYS, gateway("shop", "other", "istio")),
        (SERVICES, service("shop", "other", "10.96.0.22", 15008, 15008, json!({}))),
    ];
    let (client, api) = FakeApi::start(objects);
    let src = KubeSource::start(client, options("node-a"));
    src.synced().await;
    let m = src.current();
    let wp = |m: &Model, name: &str| m.workload("shop", name).unwrap().waypoint.as_ref().map(|w| w.to_string());
    assert_eq!(wp(&m, "cart-0").as_deref(), Some("shop/wp"), "namespace label names the waypoint");
    assert_eq!(wp(&m, "db-0").as_deref(), Some("infra/shared"), "istio-waypoint class, another namespace");
    assert_eq!(wp(&m, "api-0").as_deref(), Some("shop/wp"), "a label naming a non-waypoint Gateway is ignored");
    let skipped = src.status().skipped;
    assert!(
        skipped.iter().any(|s| s.starts_with("Pod shop/api-0: label istio.io/use-waypoint=other ignored")),
        "{skipped:?}"
    );
    // The waypoint's own pods are reachable over HBONE but never captured by the agent.
    assert_eq!(protocol(&m, "shop", "wp-0"), Some(Protocol::Hbone));
    assert!(!local_names(&src).contains(&"shop/wp-0".to_owned()));
    let w = m.workload("shop", "cart-0").unwrap().waypoint.clone().unwrap();
    let wp_identity = m.workload("shop", "wp-0").unwrap().identity().spiffe_id().clone();
    assert!(m.is_waypoint_identity(&w, &wp_identity));
    // A pod with the label and another service account is an ordinary pod: its own label
    // `none` keeps it out of the mesh, and its identity never passes for the waypoint's.
    assert_eq!(protocol(&m, "shop", "default-0"), Some(Protocol::None));
    let impostor = m.workload("shop", "default-0").unwrap().identity().spiffe_id().clone();
    assert!(!m.is_waypoint_identity(&w, &impostor));

    // The Gateway goes away: workloads stop using it, the rest of the model carries on.
    api.delete(GATEWAYS, gateway("shop", "wp", "pillion-waypoint"));
    let m = model_where(&src, "waypoint gone", |m| m.workload("shop", "cart-0").unwrap().waypoint.is_none()).await;
    assert_eq!(wp(&m, "db-0").as_deref(), Some("infra/shared"));
}

#[test_log::test(tokio::test)]
async fn istio_security_policies_are_translated() {
    let objects = vec![
        (NAMESPACES, namespace("shop", json!({"istio.io/dataplane-mode": "ambient"}))),
        (PODS, pod("shop", "cart-0", "node-a", "10.1.0.1", json!({"app": "cart"}))),
        (PODS, pod("shop", "web-0", "node-a", "10.1.0.2", json!({"app": "web"}))),
        (
            AUTHZ,
            authz(
                "shop",
                "allow-web",
                json!({
                    "selector": {"matchLabels": {"app": "cart"}},
                    "action": "ALLOW",
                    "rules": [{
                        "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"], "notNamespaces": ["dev-*"]}}],
                        "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}],
                        "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]
                    }]
                }),
            ),
        ),
        (AUTHZ, authz("shop", "deny-all", json!({"action": "DENY", "rules": [{}]}))),
        (AUTHZ, authz("shop", "broken", json!({"action": "MAYBE"}))),
        // Not even decodable (the CRD's schema is open): must not stall the whole list.
        (AUTHZ, authz("shop", "garbled", json!({"selector": {"matchLabels": {"app": "web"}}, "rules": "all"}))),
        (
            PEER_AUTHN,
            peer_authn(
                "shop",
                "typo",
                json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICTER"}}),
            ),
        ),
        (
            PEER_AUTHN,
            peer_authn(
                "shop",
                "strict",
                json!({
                    "selector": {"matchLabels": {"app": "cart"}},
                    "mtls": {"mode": "STRICT"},
                    "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}
                }),
            ),
        ),
    ];
    let (client, api) = FakeApi::start(objects);
    let mesh = MeshSettings { trust_domain: "example.org".into(), ..MeshSettings::default() };
    let src = KubeSource::start(client, Options { mesh, ..options("node-a") });
    src.synced().await;
    let m = src.current();
    let policies = m.authorization_policies();
    assert_eq!(policies.len(), 4, "{policies:?}");
    // Bad policies fail closed: DENY-all for the scope they name (or their namespace).
    let broken = policies.iter().find(|p| p.name == "broken").unwrap();
    assert_eq!((broken.action, broken.selector.len(), broken.rules.len()), (Action::Deny, 0, 1));
    assert_eq!(broken.rules[0], mesh::model::authz::Rule::default(), "an empty rule matches everything");
    let garbled = policies.iter().find(|p| p.name == "garbled").unwrap();
    assert_eq!(garbled.action, Action::Deny);
    assert_eq!(garbled.selector.get("app").map(String::as_str), Some("web"), "the readable selector is kept");
    let allow = policies.iter().find(|p| p.name == "allow-web").unwrap();
    assert_eq!(allow.action, Action::Allow);
    assert_eq!(allow.selector.get("app").map(String::as_str), Some("cart"));
    let rule = &allow.rules[0];
    assert_eq!(
        rule.from[0].principals.values,
        [StringMatch::Exact("example.org/ns/shop/sa/web".into())],
        "cluster.local in a principal means this mesh's trust domain"
    );
    assert_eq!(rule.from[0].namespaces.not_values, [StringMatch::Prefix("dev-".into())]);
    assert_eq!(rule.to[0].ports.values, [8080]);
    assert_eq!(rule.l7_fields, ["to.operation.methods"]);
    assert!(matches!(&rule.when[0], Condition::SourceIp(m) if m.values.len() == 1));
    assert_eq!(policies.iter().find(|p| p.name == "deny-all").unwrap().action, Action::Deny);
    let skipped = src.status().skipped;
    assert!(
        skipped.iter().any(|s| s.contains("AuthorizationPolicy shop/broken: unknown action \"MAYBE\"")
            && s.contains("enforced as DENY-all")),
        "{skipped:?}"
    );
    assert!(skipped.iter().any(|s| s.starts_with("AuthorizationPolicy shop/garbled: spec:")), "{skipped:?}");
    assert!(
        skipped.iter().any(|s| s.contains("PeerAuthentication shop/typo") && s.contains("enforced as STRICT")),
        "{skipped:?}"
    );
    let web = m.workload("shop", "web-0").unwrap();
    assert_eq!(m.peer_auth_mode(web, 8080), MtlsMode::Strict, "a bad PeerAuthentication fails closed");
    let w = m.workload("shop", "cart-0").unwrap();
    assert_eq!(m.peer_auth_mode(w, 8080), MtlsMode::Strict);
    assert_eq!(m.peer_auth_mode(w, 9090), MtlsMode::Permissive);

    // Dry-run annotation and a fix of the broken policy arrive as one new model.
    let mut dry = authz("shop", "deny-all", json!({"action": "DENY", "rules": [{}]}));
    dry["metadata"]["annotations"] = json!({"istio.io/dry-run": "true"});
    api.apply(AUTHZ, dry);
    api.apply(AUTHZ, authz("shop", "broken", json!({"action": "ALLOW"})));
    api.delete(AUTHZ, authz("shop", "garbled", json!({})));
    api.delete(PEER_AUTHN, peer_authn("shop", "typo", json!({})));
    let m = model_where(&src, "dry-run and fix", |m| {
        m.authorization_policies().len() == 3
            && m.authorization_policies().iter().any(|p| p.name == "broken" && p.action == Action::Allow)
    })
    .await;
    assert!(m.authorization_policies().iter().find(|p| p.name == "deny-all").unwrap().dry_run);
    assert!(src.status().skipped.is_empty(), "{:?}", src.status().skipped);
}

#[test_log::test(tokio::test)]
async fn watch_errors_and_relists_recover_with_backoff() {
    let objects = vec![
        (NAMESPACES, namespace("shop", json!({"istio.io/dataplane-mode": "ambient"}))),
        (PODS, pod("shop", "cart-0", "node-a", "10.1.0.1", json!({}))),
        (PODS, pod("shop", "cart-1", "node-a", "10.1.0.2", json!({}))),
    ];
    let (client, api) = FakeApi::start(objects);
    // Before anything is listed: pods fail twice, and the Gateway API CRDs are missing.
    api.fail_lists(PODS, 2);
    api.missing(GATEWAYS);
    let src = KubeSource::start(client, options("node-a"));
    src.synced().await;
    let status = src.status();
    assert_eq!(status.watch_errors.get("Pod"), Some(&2), "{status:#?}");
    assert_eq!(status.missing_kinds, ["Gateway"]);
    let m = src.current();
    assert_eq!(m.workloads().len(), 2, "nothing is published before every kind is listed");
    assert_eq!(m.version(), 1);

    // While the watch is broken, cart-1 is replaced by cart-2; the 410 forces a relist,
    // and the relist lands as one change.
    let mut versions = src.subscribe();
    versions.mark_unchanged();
    api.silently(
        PODS,
        Some(pod("shop", "cart-2", "node-a", "10.1.0.3", json!({}))),
        pod("shop", "cart-1", "node-a", "", json!({})),
    );
    api.expire(PODS);
    let m = model_where(&src, "relisted", |m| m.workload("shop", "cart-2").is_some()).await;
    assert!(m.workload("shop", "cart-1").is_none(), "the relist replaces the table as a whole");
    assert!(m.workload("shop", "cart-0").is_some());
    assert_eq!(m.version(), 2, "one relist, one new model");
    assert_eq!(local_names(&src), ["shop/cart-0", "shop/cart-2"]);
    assert!(src.status().watch_errors.get("Pod") >= Some(&3), "the 410 is counted: {:#?}", src.status());

    // The Gateway API CRDs get installed: the next list ends the "missing" state.
    api.installed(GATEWAYS);
    let mut status = src.subscribe_status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.missing_kinds.is_empty()))
        .await
        .expect("Gateway no longer reported missing")
        .unwrap();

    // Watches keep working after the relist.
    api.apply(PODS, pod("shop", "cart-3", "node-a", "10.1.0.4", json!({})));
    model_where(&src, "cart-3 after relist", |m| m.workload("shop", "cart-3").is_some()).await;
}

#[test_log::test(tokio::test)]
async fn l7_objects_are_kept_whole_for_the_waypoint() {
    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
        "rules": [{
            "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                            {"name": "reviews-v2", "port": 9080, "weight": 10}],
            "retry": {"attempts": 3, "codes": [503], "backoff": "100ms"}
        }]
    });
    let rule = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}", "team": "a"}},
        "spec": {"host": "reviews", "trafficPolicy": {"connectionPool": {"http": {"http1MaxPendingRequests": 5}}}}});
    let objects = vec![(ROUTES, route("shop", "reviews", spec)), (DESTINATION_RULES, rule)];
    let (client, api) = FakeApi::start(objects);
    // A cluster without the experimental Gateway API CRDs still syncs.
    api.missing(BACKEND_POLICIES);
    let src = KubeSource::start(client, Options { watch_l7: true, ..options("node-a") });
    src.synced().await;
    assert_eq!(src.status().missing_kinds, ["XBackendTrafficPolicy"]);
    let objects = src.l7_objects().borrow().clone();
    let kinds: Vec<_> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["HTTPRoute", "DestinationRule"], "one stable order: by kind, then name");

    let r = &objects[0];
    assert_eq!(r["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(r["metadata"]["name"], "reviews");
    assert!(r["metadata"].get("managedFields").is_none(), "bookkeeping stripped");
    let rule = &r["spec"]["rules"][0];
    let weights: Vec<_> = rule["backendRefs"].as_array().unwrap().iter().map(|b| b["weight"].clone()).collect();
    assert_eq!(weights, [json!(90), json!(10)]);
    assert_eq!(rule["retry"], json!({"attempts": 3, "codes": [503], "backoff": "100ms"}), "experimental retry kept");

    let d = &objects[1];
    assert_eq!(d["metadata"]["annotations"], json!({"team": "a"}), "last-applied stripped, the rest kept");
    assert_eq!(d["spec"]["trafficPolicy"]["connectionPool"]["http"]["http1MaxPendingRequests"], 5);

    // A FaultInjection arrives live; a deleted route leaves.
    let mut rx = src.l7_objects();
    api.apply(
        FAULTS,
        json!({"apiVersion": "pillion.dev/v1alpha1", "kind": "FaultInjection",
               "metadata": {"name": "reviews", "namespace": "shop"}, "spec": {"abort": {"httpStatus": 503}}}),
    );
    api.delete(ROUTES, route("shop", "reviews", json!({})));
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|o| o.iter().map(|o| o["kind"].as_str().unwrap()).eq(["DestinationRule", "FaultInjection"])),
    )
    .await;
    assert!(got.is_ok(), "objects now: {:?}", src.l7_objects().borrow());
}

#[test_log::test(tokio::test)]
async fn agents_do_not_watch_l7_kinds() {
    let (client, _api) = FakeApi::start(vec![(ROUTES, route("shop", "reviews", json!({})))]);
    let src = KubeSource::start(client, options("node-a"));
    src.synced().await;
    assert!(src.l7_objects().borrow().is_empty());
}
