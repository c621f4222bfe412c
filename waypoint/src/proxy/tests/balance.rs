//! Endpoint choice through the pipeline: closeness (`trafficDistribution`) relative to the
//! waypoint's own workload, and the DestinationRule's consistent hash.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

use crate::proxy::{Proxy, ProxyConfig};
use crate::route::ServiceKey;
use crate::testing::{Scripted, req, send};

/// `near` has three endpoints: one on the waypoint's node (node-a, zone za), one in its zone
/// on another node, one in another zone.
const NEAR: &str = r#"
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: near-0, namespace: shop, labels: {app: near}}
spec: {serviceAccount: near, ips: [10.0.5.1], node: node-a, locality: r1/za}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: near-1, namespace: shop, labels: {app: near}}
spec: {serviceAccount: near, ips: [10.0.5.2], node: node-c, locality: r1/za}
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata: {name: near-2, namespace: shop, labels: {app: near}}
spec: {serviceAccount: near, ips: [10.0.5.3], node: node-b, locality: r1/zb}
"#;

fn near_service(distribution: &str) -> String {
    format!(
        "{NEAR}---\napiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {{name: near, namespace: shop}}\nspec: {{clusterIPs: [10.96.0.9], ports: [{{name: http, port: 80, targetPort: 8080}}], selector: {{app: near}}{distribution}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: near, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 80}}]\n  rules: [{{backendRefs: [{{name: near, port: 80}}]}}]\n"
    )
}

/// A proxy that knows it is `shop/waypoint-0` (node-a; the test mesh gives it no zone, so
/// this file's waypoint gets one).
fn proxy_at_node_a(extra: &str, up: Arc<Scripted>) -> Arc<Proxy> {
    let me = "---\napiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {name: waypoint-z, namespace: shop, labels: {app: waypoint, istio.io/use-waypoint: none}}\nspec: {serviceAccount: waypoint, ips: [10.0.9.2], node: node-a, locality: r1/za}\n";
    let mut config = ProxyConfig::new(ServiceKey::new("shop", "waypoint"));
    config.workload = Some(("shop".into(), "waypoint-z".into()));
    Arc::new(Proxy::new(config, crate::testing::snapshot(&format!("{extra}{me}")), up).with_seed(7))
}

async fn endpoints_hit(p: &Arc<Proxy>, up: &Scripted, n: usize, header: Option<(&str, &str)>) -> BTreeSet<String> {
    let before = up.calls().len();
    for _ in 0..n {
        let mut r = req("GET", "/");
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        send(p, r.body(Full::new(Bytes::new())).unwrap()).await;
    }
    up.calls()[before..].iter().map(|c| c.target.addr.ip().to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn prefer_same_node_and_same_zone_keep_traffic_close() {
    let up = Scripted::ok();
    let p = proxy_at_node_a(&near_service(", trafficDistribution: PreferSameNode"), up.clone());
    assert_eq!(endpoints_hit(&p, &up, 30, None).await, BTreeSet::from(["10.0.5.1".to_owned()]));
    let p = proxy_at_node_a(&near_service(", trafficDistribution: PreferClose"), up.clone());
    assert_eq!(
        endpoints_hit(&p, &up, 30, None).await,
        BTreeSet::from(["10.0.5.1".to_owned(), "10.0.5.2".to_owned()]),
        "the waypoint's zone, both nodes"
    );
    let p = proxy_at_node_a(&near_service(""), up.clone());
    assert_eq!(endpoints_hit(&p, &up, 60, None).await.len(), 3, "no preference: every endpoint");
}

#[tokio::test(start_paused = true)]
async fn a_consistent_hash_sends_one_user_to_one_endpoint() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: near, namespace: shop}\nspec:\n  host: near\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n";
    let up = Scripted::ok();
    let p = proxy_at_node_a(&format!("{}{dr}", near_service("")), up.clone());
    for user in ["ann", "bob", "cy"] {
        assert_eq!(endpoints_hit(&p, &up, 10, Some(("x-user", user))).await.len(), 1, "{user} stays on one endpoint");
    }
    let spread: BTreeSet<String> = {
        let mut all = BTreeSet::new();
        for i in 0..30 {
            all.extend(endpoints_hit(&p, &up, 1, Some(("x-user", &format!("user-{i}")))).await);
        }
        all
    };
    assert_eq!(spread.len(), 3, "users spread over the endpoints");
}
