//! L7 policy evaluation.

use http::HeaderMap;

use super::*;
use crate::config;

fn policies(yaml: &str) -> Vec<L7Policy> {
    config::parse(yaml, "t.yaml", "cluster.local").unwrap().authz
}

fn check(p: &[L7Policy], method: &str, path: &str, principal: &str, headers: &HeaderMap) -> Decision {
    let r = RequestAttrs {
        principal: Some(principal),
        source_namespace: principal.split("/ns/").nth(1).and_then(|s| s.split('/').next()),
        method,
        path,
        host: "svc.shop.svc.cluster.local",
        port: 80,
        headers,
    };
    authorize(p, &ServiceKey::new("shop", "waypoint"), &ServiceKey::new("shop", "svc"), &r)
}

const WEB: &str = "cluster.local/ns/web/sa/client";
const OPS: &str = "cluster.local/ns/ops/sa/admin";

fn policy(name: &str, target: &str, action: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRefs: [{target}]\n  action: {action}\n  rules: {rules}\n"
    )
}

#[test]
fn no_policy_allows_and_deny_wins_over_allow() {
    let h = HeaderMap::new();
    assert_eq!(check(&[], "GET", "/", WEB, &h), Decision::Allow);
    let text = policy("allow-all", "{kind: Service, name: svc}", "ALLOW", "[{}]")
        + &policy(
            "deny-admin",
            "{kind: Gateway, name: waypoint}",
            "DENY",
            "[{to: [{operation: {paths: [\"/admin/*\"], notMethods: [OPTIONS]}}]}]",
        );
    let p = policies(&text);
    assert_eq!(check(&p, "GET", "/admin/x", WEB, &h), Decision::Denied("shop/deny-admin".into()));
    assert_eq!(check(&p, "OPTIONS", "/admin/x", WEB, &h), Decision::Allow);
    assert_eq!(check(&p, "GET", "/public", WEB, &h), Decision::Allow);
}

#[test]
fn allow_policies_must_match_when_present() {
    let text = policy(
        "ops-only",
        "{kind: Service, name: svc}",
        "ALLOW",
        "[{from: [{source: {namespaces: [ops]}}], when: [{key: \"request.headers[x-env]\", notValues: [prod]}]}]",
    );
    let p = policies(&text);
    let mut h = HeaderMap::new();
    assert_eq!(check(&p, "GET", "/", OPS, &h), Decision::Allow);
    assert_eq!(check(&p, "GET", "/", WEB, &h), Decision::NotAllowed);
    h.insert("x-env", "prod".parse().unwrap());
    assert_eq!(check(&p, "GET", "/", OPS, &h), Decision::NotAllowed);
}

#[test]
fn policies_for_other_targets_and_dry_runs_do_not_apply() {
    let mut text = policy("other", "{kind: Service, name: elsewhere}", "DENY", "[{}]");
    text += "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: trial, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  targetRefs: [{kind: Service, name: svc}]\n  action: DENY\n  rules: [{}]\n";
    // A selector-based policy is the node agent's, not the waypoint's.
    text += "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: l4, namespace: shop}\nspec:\n  selector: {matchLabels: {app: svc}}\n  action: DENY\n  rules: [{}]\n";
    let p = policies(&text);
    assert_eq!(p.len(), 2);
    assert_eq!(check(&p, "GET", "/", WEB, &HeaderMap::new()), Decision::Allow);
}

#[test]
fn a_repeated_header_cannot_hide_a_value_from_a_deny() {
    let text = policy(
        "no-admins",
        "{kind: Service, name: svc}",
        "DENY",
        "[{when: [{key: \"request.headers[x-user]\", values: [admin]}]}]",
    );
    let p = policies(&text);
    let mut h = HeaderMap::new();
    h.append("x-user", "guest".parse().unwrap());
    assert_eq!(check(&p, "GET", "/", WEB, &h), Decision::Allow);
    h.append("x-user", "admin".parse().unwrap());
    assert!(matches!(check(&p, "GET", "/", WEB, &h), Decision::Denied(_)), "the second copy is judged too");
}

#[test]
fn principals_are_read_in_the_meshs_own_trust_domain() {
    // A mesh in trust domain corp.example: its peers' principals arrive as
    // corp.example/…, and a policy's `cluster.local/…` means this mesh (as Istio reads it).
    let mesh = "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: corp.example}\n";
    let deny = policy(
        "deny-web",
        "{kind: Service, name: svc}",
        "DENY",
        "[{from: [{source: {principals: [\"cluster.local/ns/web/sa/client\"]}}]}]",
    );
    let snapshot = crate::source::parse(&format!("{mesh}{deny}"), "t.yaml", 1).unwrap();
    let h = HeaderMap::new();
    assert_eq!(
        check(&snapshot.l7.authz, "GET", "/", "corp.example/ns/web/sa/client", &h),
        Decision::Denied("shop/deny-web".into()),
        "a DENY compiled for another trust domain would never match this mesh's peers"
    );
    assert_eq!(check(&snapshot.l7.authz, "GET", "/", "corp.example/ns/ops/sa/admin", &h), Decision::Allow);
}
