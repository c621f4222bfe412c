//! The controller's reconcile against kube's mock client: which objects it applies, owned
//! by the Gateway, and the status it reports.

use std::sync::{Arc, Mutex};

use gateway_api::apis::experimental::gateways::Gateway;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::{Context, Settings, reconcile};

fn gateway(class: &str) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "shop", "uid": "gw-uid", "generation": 3},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    }))
    .unwrap()
}

/// Answers each PATCH with the applied object, adding what the API server would (a
/// cluster IP, a ready replica); records `(method, path, body)`.
fn context(seen: Arc<Mutex<Vec<(String, String, Value)>>>) -> Arc<Context> {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, tx)) = handle.next_request().await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            let mut answer = body.clone();
            if path.ends_with("/services/wp") {
                answer["spec"]["clusterIP"] = json!("10.96.7.7");
            } else if path.ends_with("/deployments/wp") {
                answer["status"] = json!({"availableReplicas": 1});
            } else if path.ends_with("/gateways/wp/status") {
                answer = serde_json::to_value(gateway("pillion-waypoint")).unwrap();
            }
            seen.lock().unwrap().push((method, path, body));
            tx.send_response(Response::builder().body(Body::from(answer.to_string().into_bytes())).unwrap());
        }
    });
    let settings = Settings { image: "pillion/pillion-waypoint:0.1.0".into(), pull_policy: "IfNotPresent".into() };
    Arc::new(Context { client: kube::Client::new(svc, "default"), settings })
}

#[tokio::test]
async fn a_waypoint_gateway_gets_owned_objects_and_a_status() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    reconcile(Arc::new(gateway("pillion-waypoint")), context(seen.clone())).await.unwrap();
    let seen = seen.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/shop/serviceaccounts/wp",
            "/apis/apps/v1/namespaces/shop/deployments/wp",
            "/api/v1/namespaces/shop/services/wp",
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/wp/status",
        ]
    );
    for (method, _, body) in &seen[..3] {
        assert_eq!(method, "PATCH");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("Gateway"), Some("gw-uid")));
        assert_eq!(owner["controller"], true, "deleting the Gateway deletes its waypoint");
    }
    let pod_labels = &seen[1].2["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["gateway.networking.k8s.io/gateway-name"], "wp", "the source recognises waypoint pods by it");
    assert_eq!(pod_labels["istio.io/dataplane-mode"], "none");
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
    reconcile(Arc::new(gateway("istio-waypoint")), context(seen.clone())).await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "Istio's controller owns istio-waypoint Gateways");
}
