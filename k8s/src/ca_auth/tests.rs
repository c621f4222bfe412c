//! The CA's Kubernetes authorization against kube's mock client: a scripted API server
//! answers TokenReviews by token and lists pods by node.

use http::{Request, Response};
use kube::client::Body;
use mesh::Identity;
use mesh::ca::{CaAuthorizer, CaError, CallerInfo};
use serde_json::{Value, json};

use super::KubeAuthorizer;

fn review(token: &str) -> Value {
    let user = |name: &str, node: Option<&str>| {
        let mut u = json!({"username": name});
        if let Some(ns) = name.strip_prefix("system:serviceaccount:").and_then(|s| s.split(':').next()) {
            u["groups"] =
                json!(["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"]);
        }
        if let Some(n) = node {
            u["extra"] = json!({"authentication.kubernetes.io/node-name": [n]});
        }
        json!({"authenticated": true, "audiences": ["pillion-ca"], "user": u})
    };
    let status = match token {
        "agent-a" => user("system:serviceaccount:pillion-system:pillion-agent", Some("node-a")),
        "agent-no-node" => user("system:serviceaccount:pillion-system:pillion-agent", None),
        "cart" => user("system:serviceaccount:shop:cart", Some("node-a")),
        "human" => user("alice@example.org", None),
        "other-audience" => {
            let mut s = user("system:serviceaccount:shop:cart", Some("node-a"));
            s["audiences"] = json!(["https://kubernetes.default.svc"]);
            s
        }
        "no-audiences" => {
            let mut s = user("system:serviceaccount:shop:cart", Some("node-a"));
            s.as_object_mut().unwrap().remove("audiences");
            s
        }
        "not-in-group" => {
            let mut s = user("system:serviceaccount:shop:cart", Some("node-a"));
            s["user"]["groups"] = json!(["system:authenticated"]);
            s
        }
        _ => json!({"authenticated": false, "error": "token has expired"}),
    };
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {}, "status": status})
}

fn pods_on_node_a() -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": [
        {"metadata": {"name": "cart-0", "namespace": "shop"},
         "spec": {"nodeName": "node-a", "serviceAccountName": "cart", "containers": []}},
        {"metadata": {"name": "batch-0", "namespace": "shop"},
         "spec": {"nodeName": "node-a", "serviceAccountName": "batch", "containers": []},
         "status": {"phase": "Succeeded"}}
    ]})
}

fn authorizer() -> KubeAuthorizer {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, tx)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let body = req.into_body().collect_bytes().await.unwrap_or_default();
            let answer = if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                let sent: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(sent["spec"]["audiences"], json!(["pillion-ca"]), "tokens are checked for our audience");
                review(sent["spec"]["token"].as_str().unwrap())
            } else if path == "/api/v1/namespaces/shop/pods" && query.contains("spec.nodeName%3Dnode-a") {
                pods_on_node_a()
            } else {
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
            };
            tx.send_response(Response::builder().body(Body::from(answer.to_string().into_bytes())).unwrap());
        }
    });
    let client = kube::Client::new(svc, "default");
    KubeAuthorizer::new(client, "cluster.local", "pillion-ca", vec![("pillion-system".into(), "pillion-agent".into())])
}

fn caller(token: &str, impersonated: Option<&str>) -> CallerInfo {
    CallerInfo {
        bearer_token: Some(token.into()),
        impersonated: impersonated.map(|s| Identity::parse(s).unwrap()),
        peer: None,
    }
}

#[tokio::test]
async fn callers_get_their_own_identity() {
    let a = authorizer();
    let id = a.authorize(&caller("cart", None)).await.unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/cart");
    let same = a.authorize(&caller("cart", Some("spiffe://cluster.local/ns/shop/sa/cart"))).await.unwrap();
    assert_eq!(same, id);
    assert!(matches!(a.authorize(&caller("expired", None)).await, Err(CaError::Unauthenticated(_))));
    assert!(matches!(a.authorize(&caller("human", None)).await, Err(CaError::Unauthenticated(_))));
    let none = CallerInfo { bearer_token: None, impersonated: None, peer: None };
    assert!(matches!(a.authorize(&none).await, Err(CaError::Unauthenticated(_))));
}

#[tokio::test]
async fn agents_impersonate_only_identities_running_on_their_node() {
    let a = authorizer();
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let got = a.authorize(&caller("agent-a", Some(cart))).await.unwrap();
    assert_eq!(got.as_str(), cart);
    let elsewhere = a.authorize(&caller("agent-a", Some("spiffe://cluster.local/ns/shop/sa/payments"))).await;
    assert!(matches!(elsewhere, Err(CaError::PermissionDenied(m)) if m.contains("no pod running as")));
    let not_agent = a.authorize(&caller("cart", Some("spiffe://cluster.local/ns/shop/sa/payments"))).await;
    assert!(matches!(not_agent, Err(CaError::PermissionDenied(m)) if m.contains("not a node agent")));
    let no_node = a.authorize(&caller("agent-no-node", Some(cart))).await;
    assert!(matches!(no_node, Err(CaError::PermissionDenied(m)) if m.contains("names no node")));
    let foreign = a.authorize(&caller("agent-a", Some("spiffe://other.org/ns/shop/sa/cart"))).await;
    assert!(matches!(foreign, Err(CaError::PermissionDenied(_))));
    let finished = a.authorize(&caller("agent-a", Some("spiffe://cluster.local/ns/shop/sa/batch"))).await;
    assert!(
        matches!(finished, Err(CaError::PermissionDenied(m)) if m.contains("no pod running as")),
        "a finished pod needs no certificate"
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let got = authorizer().authorize(&caller("other-audience", None)).await;
    assert!(matches!(got, Err(CaError::Unauthenticated(m)) if m.contains("not bound to audience pillion-ca")));
}

/// L6: an answer without `audiences` used to skip the audience check.
#[tokio::test]
async fn an_answer_without_audiences_fails_closed() {
    let got = authorizer().authorize(&caller("no-audiences", None)).await;
    assert!(matches!(got, Err(CaError::Unauthenticated(m)) if m.contains("names no audiences")));
}

/// L6: a service-account-shaped name from outside the service account authenticator.
#[tokio::test]
async fn a_user_outside_the_service_accounts_group_is_refused() {
    let got = authorizer().authorize(&caller("not-in-group", None)).await;
    assert!(matches!(got, Err(CaError::Unauthenticated(m)) if m.contains("system:serviceaccounts")));
}
