//! The uninstall verdict for each answer the API server may give, against kube's mock
//! client.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::{Verdict, check};

const DS: &str = "/apis/apps/v1/namespaces/pillion-system/daemonsets/pillion-agent";
const NS: &str = "/api/v1/namespaces/pillion-system";

fn status(code: u16) -> (u16, Value) {
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": "m",
                  "reason": reason, "code": code}),
    )
}

/// Answers `DS` and `NS` as given; anything else 500.
async fn verdict(ds: (u16, Value), ns: (u16, Value)) -> Verdict {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, tx)) = handle.next_request().await {
            let (code, body) = match req.uri().path() {
                DS => ds.clone(),
                NS => ns.clone(),
                _ => status(500),
            };
            tx.send_response(Response::builder().status(code).body(Body::from(body.to_string().into_bytes())).unwrap());
        }
    });
    check(kube::Client::new(svc, "default"), "pillion-system", "pillion-agent").await
}

fn object(kind: &str, deleting: bool) -> (u16, Value) {
    let mut meta = json!({"name": "x"});
    if deleting {
        meta["deletionTimestamp"] = json!("2026-11-22T10:00:00Z");
    }
    let api = if kind == "DaemonSet" { "apps/v1" } else { "v1" };
    (200, json!({"apiVersion": api, "kind": kind, "metadata": meta}))
}

fn unknown(v: &Verdict) -> bool {
    matches!(v, Verdict::Unknown(_))
}

#[tokio::test]
async fn each_answer_gets_its_verdict() {
    let ns = object("Namespace", false);
    let ns_deleting = object("Namespace", true);
    assert_eq!(verdict(object("DaemonSet", false), ns.clone()).await, Verdict::Staying, "a rolling update");
    // Two different objects say so: uninstall.
    assert!(verdict(object("DaemonSet", true), ns_deleting.clone()).await.uninstalling());
    assert!(verdict(status(404), status(404)).await.uninstalling(), "DaemonSet and namespace gone");
    assert!(verdict(status(404), ns_deleting.clone()).await.uninstalling());
    assert!(verdict(status(404), status(403)).await.uninstalling(), "DaemonSet gone, the ClusterRole too");
    assert!(verdict(status(403), ns_deleting.clone()).await.uninstalling(), "the Role gone, namespace terminating");
    assert!(verdict(status(403), status(404)).await.uninstalling());
    // One sign alone is not enough.
    assert!(unknown(&verdict(object("DaemonSet", true), ns.clone()).await), "DaemonSet re-created, namespace kept");
    assert!(unknown(&verdict(status(404), ns.clone()).await));
    assert!(unknown(&verdict(status(403), ns.clone()).await), "a broken Role alone is not an uninstall");
    assert!(unknown(&verdict(status(403), status(403)).await), "one RBAC failure seen twice is one sign");
    // The API server unreachable or failing: keep everything.
    assert!(unknown(&verdict(status(500), ns_deleting.clone()).await));
    assert!(unknown(&verdict(status(404), status(500)).await));
}

/// L1: a single 401 (a token refresh failure, a service account key rotation) used to
/// mean "uninstalling", and the next SIGTERM unpinned capture for the whole node.
#[tokio::test]
async fn a_single_401_is_not_an_uninstall() {
    let v = verdict(status(401), object("Namespace", false)).await;
    assert!(unknown(&v), "{v:?}");
    let v = verdict(status(401), status(401)).await;
    assert!(!v.uninstalling(), "{v:?}");
    let v = verdict(status(404), status(401)).await;
    assert!(!v.uninstalling(), "the DaemonSet gone plus a 401 is still one sign: {v:?}");
}
