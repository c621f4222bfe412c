//! The controller's reconcile against kube's mock client: which objects it applies, owned
//! by the Gateway, and the status it reports.

use std::sync::{Arc, Mutex};

use gateway_api::apis::experimental::gateways::Gateway;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::{Context, ControllerError, Settings, reconcile, sync_binding};

fn gateway(class: &str) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "shop", "uid": "gw-uid", "generation": 3},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    }))
    .unwrap()
}

const BINDING_PATH: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/pillion-waypoints";
const SA_PATH: &str = "/api/v1/namespaces/shop/serviceaccounts/wp";

type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// What the scripted API server holds at the start.
struct World {
    gateways: Vec<Gateway>,
    /// The binding's subjects.
    bound: Value,
    /// ServiceAccount shop/wp, if it exists.
    account: Option<Value>,
    /// PUTs of the binding answered 409 first.
    conflicts: u32,
    /// `data` of ConfigMap shop/wp-params (the Gateway's parameters), if it exists.
    params: Option<Value>,
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

fn account(owner_uid: Option<&str>) -> Value {
    let owners: Vec<Value> = owner_uid
        .into_iter()
        .map(|uid| json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp", "uid": uid}))
        .collect();
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "wp", "namespace": "shop", "ownerReferences": owners,
                        "labels": {"gateway.networking.k8s.io/gateway-name": "wp"}}})
}

/// A small API server over `world`: Gateways listed; the binding served and replaced
/// (409 for the first `conflicts` PUTs); the account read, listed and applied; the CA's
/// root ConfigMap; every other PATCH answered with the applied object plus what the API
/// server would add (a cluster IP, a ready replica). Records `(method, path, body)`.
fn server(seen: Seen, world: World) -> kube::Client {
    let World { gateways, mut bound, mut account, mut conflicts, params } = world;
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, tx)) = handle.next_request().await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let list = |items: Value| json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
            let mut code = 200;
            let answer = match (method.as_str(), path.as_str()) {
                ("GET", "/apis/gateway.networking.k8s.io/v1/gateways") => list(json!(gateways)),
                ("GET", "/api/v1/serviceaccounts") => list(json!(account.iter().collect::<Vec<_>>())),
                ("GET", SA_PATH) => account.clone().unwrap_or_else(|| {
                    code = 404;
                    not_found()
                }),
                ("PATCH", SA_PATH) => {
                    account = Some(body.clone());
                    body.clone()
                }
                ("GET", BINDING_PATH) => {
                    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "pillion-waypoints", "resourceVersion": "7"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pillion-waypoint"},
                    "subjects": bound})
                }
                ("PUT", BINDING_PATH) if conflicts > 0 => {
                    conflicts -= 1;
                    code = 409;
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                           "message": "the object has been modified", "reason": "Conflict", "code": 409})
                }
                ("PUT", BINDING_PATH) => {
                    bound = body["subjects"].clone();
                    body.clone()
                }
                ("GET", "/api/v1/namespaces/pillion-system/configmaps/pillion-ca-root-cert") => {
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pillion-ca-root-cert"},
                           "data": {"root-cert.pem": "-----BEGIN CERTIFICATE-----\nroot\n"}})
                }
                ("GET", "/api/v1/namespaces/shop/configmaps/wp-params") if params.is_some() => {
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wp-params", "namespace": "shop"},
                           "data": params})
                }
                // Nothing made earlier to delete.
                ("DELETE", _) => {
                    code = 404;
                    not_found()
                }
                (_, p) if p.ends_with("/services/wp") => {
                    let mut a = body.clone();
                    a["spec"]["clusterIP"] = json!("10.96.7.7");
                    a
                }
                (_, p) if p.ends_with("/deployments/wp") => {
                    let mut a = body.clone();
                    a["status"] = json!({"availableReplicas": 1});
                    a
                }
                (_, p) if p.ends_with("/gateways/wp/status") => {
                    serde_json::to_value(gateway("pillion-waypoint")).unwrap()
                }
                ("GET", _) => {
                    code = 404;
                    not_found()
                }
                _ => body.clone(),
            };
            seen.lock().unwrap().push((method, path, body));
            let response = Response::builder().status(code).body(Body::from(answer.to_string().into_bytes())).unwrap();
            tx.send_response(response);
        }
    });
    kube::Client::new(svc, "default")
}

fn world() -> World {
    World {
        gateways: vec![gateway("pillion-waypoint"), gateway("istio-waypoint")],
        bound: json!([]),
        account: None,
        conflicts: 0,
        params: None,
    }
}

fn context(seen: Seen, world: World) -> Arc<Context> {
    Arc::new(Context { client: server(seen, world), settings: Settings::for_namespace("pillion-system") })
}

#[tokio::test]
async fn a_waypoint_gateway_gets_owned_objects_and_a_status() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    reconcile(Arc::new(gateway("pillion-waypoint")), context(seen.clone(), world())).await.unwrap();
    let seen = seen.lock().unwrap();
    let calls: Vec<(&str, &str)> = seen.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
    assert_eq!(
        calls,
        [
            ("GET", SA_PATH),
            ("GET", "/api/v1/namespaces/pillion-system/configmaps/pillion-ca-root-cert"),
            ("PATCH", "/api/v1/namespaces/shop/configmaps/wp-ca-root"),
            ("PATCH", SA_PATH),
            ("GET", BINDING_PATH),
            ("GET", "/apis/gateway.networking.k8s.io/v1/gateways"),
            ("GET", "/api/v1/serviceaccounts"),
            ("PUT", BINDING_PATH),
            ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/wp"),
            ("PATCH", "/api/v1/namespaces/shop/services/wp"),
            // No parameters: no autoscaler or disruption budget (one made earlier goes).
            ("DELETE", "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/wp"),
            ("DELETE", "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/wp"),
            ("PATCH", "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/wp/status"),
        ]
    );
    // Only the account made for the pillion-waypoint Gateway is bound, before its
    // Deployment exists.
    assert_eq!(seen[7].2["subjects"], json!([{"kind": "ServiceAccount", "name": "wp", "namespace": "shop"}]));
    assert_eq!(seen[2].2["data"]["root-cert.pem"], "-----BEGIN CERTIFICATE-----\nroot\n");
    let applied: Vec<&Value> = [2, 3, 8, 9].iter().map(|&i| &seen[i].2).collect();
    for body in &applied {
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("Gateway"), Some("gw-uid")));
        assert_eq!(owner["controller"], true, "deleting the Gateway deletes its waypoint");
    }
    let seen: Vec<&(String, String, Value)> = [3, 8, 9, 12].iter().map(|&i| &seen[i]).collect();
    let pod = &seen[1].2["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert_eq!(pod_labels["gateway.networking.k8s.io/gateway-name"], "wp", "the source recognises waypoint pods by it");
    assert_eq!(pod_labels["istio.io/dataplane-mode"], "none");
    let container = &pod["spec"]["containers"][0];
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert!(env.contains(&("PILLION_KUBERNETES", "true")), "{env:?}");
    assert!(env.contains(&("PILLION_CA_ADDRESS", "https://pillion-ca.pillion-system.svc:15012")), "{env:?}");
    assert!(env.contains(&("PILLION_CA_ROOTS", "/var/run/secrets/pillion-ca-root/root-cert.pem")), "{env:?}");
    assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "wp-ca-root");
    let token = &pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "pillion-ca", "the CA only accepts tokens bound to it");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(seen[2].2["spec"]["ports"][0]["port"], 15008);
    let status = &seen[3].2["status"];
    assert_eq!(status["addresses"], json!([{"type": "IPAddress", "value": "10.96.7.7"}]));
    let conditions: Vec<(&str, &str)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(conditions, [("Accepted", "True"), ("Programmed", "True")]);
    assert_eq!(status["conditions"][0]["observedGeneration"], 3);
}

#[tokio::test]
async fn gateways_of_other_classes_are_left_alone() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    reconcile(Arc::new(gateway("istio-waypoint")), context(seen.clone(), world())).await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "Istio's controller owns istio-waypoint Gateways");
}

#[tokio::test]
async fn an_account_the_controller_did_not_make_is_not_taken_over() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let taken = World { account: Some(account(None)), ..world() };
    let e = reconcile(Arc::new(gateway("pillion-waypoint")), context(seen.clone(), taken)).await.unwrap_err();
    assert!(matches!(&e, ControllerError::AccountTaken(who) if who == "shop/wp"), "{e}");
    assert!(e.to_string().contains("rename the Gateway"), "{e}");
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(m, p, _)| m == "GET" || p.ends_with("/status")),
        "nothing applied, the binding untouched: {:?}",
        seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect::<Vec<_>>()
    );
    let status = &seen.last().unwrap().2["status"];
    assert_eq!(status["conditions"][0]["status"], "False");
    assert!(status["conditions"][0]["message"].as_str().unwrap().contains("does not belong"));
}

#[tokio::test]
async fn the_binding_follows_deleted_gateways_and_survives_a_conflict() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The Gateway is gone but its account (garbage collection pending) and the binding's
    // subject remain; the first replace loses a race.
    let stale = World {
        gateways: vec![gateway("istio-waypoint")],
        bound: json!([{"kind": "ServiceAccount", "name": "wp", "namespace": "shop"}]),
        account: Some(account(Some("gw-uid"))),
        conflicts: 1,
        params: None,
    };
    sync_binding(&server(seen.clone(), stale)).await.unwrap();
    let seen = seen.lock().unwrap();
    let puts: Vec<&Value> = seen.iter().filter(|(m, _, _)| m == "PUT").map(|(_, _, b)| b).collect();
    assert_eq!(puts.len(), 2, "retried after the 409");
    assert_eq!(puts[1]["subjects"], json!([]), "the deleted waypoint's account is unbound");
    assert_eq!(puts[1]["metadata"]["resourceVersion"], "7", "replace carries the version it read");
    let first: Vec<&str> = seen.iter().take(3).map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(first[0], BINDING_PATH, "the binding is read before the world it is compared with");
}

#[tokio::test]
async fn an_account_named_like_a_gateway_is_not_bound() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let lookalike = World { account: Some(account(Some("someone-else"))), ..world() };
    sync_binding(&server(seen.clone(), lookalike)).await.unwrap();
    assert!(seen.lock().unwrap().iter().all(|(m, _, _)| m == "GET"), "nothing to bind, nothing written");
}

#[tokio::test]
async fn three_conflicts_in_a_row_are_an_error() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let busy = World { account: Some(account(Some("gw-uid"))), conflicts: 3, ..world() };
    let e = sync_binding(&server(seen.clone(), busy)).await.unwrap_err();
    assert!(e.to_string().contains("ClusterRoleBinding pillion-waypoints"), "{e}");
    assert_eq!(seen.lock().unwrap().iter().filter(|(m, _, _)| m == "PUT").count(), 3);
}

#[tokio::test]
async fn an_unchanged_binding_is_not_written() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bound = World {
        bound: json!([{"kind": "ServiceAccount", "name": "wp", "namespace": "shop"}]),
        account: Some(account(Some("gw-uid"))),
        ..world()
    };
    sync_binding(&server(seen.clone(), bound)).await.unwrap();
    assert!(seen.lock().unwrap().iter().all(|(m, _, _)| m == "GET"));
}

#[tokio::test]
async fn without_the_ca_root_nothing_is_applied() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut ctx =
        Context { client: server(seen.clone(), world()), settings: Settings::for_namespace("pillion-system") };
    ctx.settings.ca_root.1 = "absent".into();
    let e = reconcile(Arc::new(gateway("pillion-waypoint")), Arc::new(ctx)).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("ConfigMap pillion-system/absent") && msg.contains("is pillion-ca running"), "{msg}");
    assert!(seen.lock().unwrap().iter().all(|(m, _, _)| m == "GET"), "no waypoint without a CA to trust");
}

fn with_params(params_ref: Value) -> Gateway {
    let mut gw = serde_json::to_value(gateway("pillion-waypoint")).unwrap();
    gw["spec"]["infrastructure"] = json!({"parametersRef": params_ref});
    serde_json::from_value(gw).unwrap()
}

const PARAMS: fn() -> Value = || json!({"group": "", "kind": "ConfigMap", "name": "wp-params"});

#[tokio::test]
async fn parameters_give_the_waypoint_an_autoscaler_and_a_disruption_budget_aimed_at_itself() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let world = World {
        params: Some(json!({
            "horizontalPodAutoscaler": "spec:\n  minReplicas: 2\n  maxReplicas: 6\n",
            "podDisruptionBudget": "spec:\n  maxUnavailable: 1\n",
        })),
        ..world()
    };
    reconcile(Arc::new(with_params(PARAMS())), context(seen.clone(), world)).await.unwrap();
    let seen = seen.lock().unwrap();
    let body = |suffix: &str| {
        seen.iter()
            .find(|(m, p, _)| m == "PATCH" && p.ends_with(suffix))
            .map(|(_, _, b)| b.clone())
            .unwrap_or_else(|| panic!("no PATCH of {suffix}"))
    };
    let hpa = body("/horizontalpodautoscalers/wp");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"], json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "wp"}));
    assert_eq!((hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()), (Some(2), Some(6)));
    assert_eq!(hpa["metadata"]["ownerReferences"][0]["uid"], "gw-uid", "deleted with the Gateway");
    let pdb = body("/poddisruptionbudgets/wp");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["gateway.networking.k8s.io/gateway-name"], "wp");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let deployment = body("/deployments/wp");
    assert!(deployment["spec"].get("replicas").is_none(), "replicas are the autoscaler's to set");
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"], "100m");
    assert!(!seen.iter().any(|(m, _, _)| m == "DELETE"));
}

#[tokio::test]
async fn bad_or_missing_parameters_are_reported_on_the_gateway_and_nothing_is_applied() {
    let cases = [
        (
            PARAMS(),
            Some(json!({"horizontalPodAutoscaler": "spec: {maxReplicas: 3, scaleTargetRef: {name: payments}}"})),
            "scaleTargetRef cannot be set",
        ),
        (PARAMS(), None, "ConfigMap wp-params (spec.infrastructure.parametersRef) does not exist"),
        (json!({"group": "example.com", "kind": "Params", "name": "x"}), None, "must name a ConfigMap"),
    ];
    for (params_ref, params, why) in cases {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let world = World { params, ..world() };
        let e = reconcile(Arc::new(with_params(params_ref)), context(seen.clone(), world)).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|(m, p, _)| m == "GET" || p.ends_with("/status")),
            "nothing applied: {:?}",
            seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect::<Vec<_>>()
        );
        let status = &seen.last().unwrap().2["status"]["conditions"][0];
        assert_eq!((status["type"].as_str(), status["status"].as_str()), (Some("Accepted"), Some("False")));
        assert!(status["message"].as_str().unwrap().contains(why), "{status}");
    }
}

#[test]
fn an_edit_of_a_parameters_configmap_reaches_the_gateways_naming_it() {
    let with_params = |ns: &str, name: &str, class: &str, params: &str| -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": class,
                     "infrastructure": {"parametersRef": {"group": "", "kind": "ConfigMap", "name": params}},
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }))
        .unwrap()
    };
    let gws = [
        with_params("shop", "a", super::CLASS, "scale"),
        with_params("shop", "b", super::CLASS, "scale"),
        with_params("shop", "c", super::CLASS, "other"),
        with_params("web", "d", super::CLASS, "scale"),
        with_params("shop", "e", "istio-waypoint", "scale"),
        gateway(super::CLASS),
    ];
    let names: Vec<String> = super::referencing(&gws, "shop", "scale").into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"], "same namespace, same ConfigMap, our class only");
    assert!(super::referencing(&gws, "shop", "unrelated").is_empty());
}
