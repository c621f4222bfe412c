//! Matching and Gateway API precedence, on the compiled table.

use http::Request;

use super::*;
use crate::config;

fn table(rules: &str) -> RouteTable {
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  rules:\n{rules}"
    );
    config::parse(&text, "t.yaml", "cluster.local").unwrap().routes
}

/// The index of the rule a request selects (`None`: no match).
fn pick(t: &RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<usize> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    t.select(&ServiceKey::new("shop", "svc"), 80, Some("shop"), &parts).map(|s| s.rule.index)
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let t = table(
        "  - matches: [{path: {type: PathPrefix, value: /}}]\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n  - matches: [{path: {type: PathPrefix, value: /a/b}}]\n  - matches: [{path: {type: Exact, value: /a/b}}]\n",
    );
    assert_eq!(pick(&t, "GET", "/a/b", &[]), Some(3));
    assert_eq!(pick(&t, "GET", "/a/b/c", &[]), Some(2));
    assert_eq!(pick(&t, "GET", "/a/x", &[]), Some(1));
    assert_eq!(pick(&t, "GET", "/zzz", &[]), Some(0));
}

#[test]
fn prefixes_match_whole_segments() {
    let t = table("  - matches: [{path: {type: PathPrefix, value: /api/}}]\n");
    assert_eq!(pick(&t, "GET", "/api", &[]), Some(0));
    assert_eq!(pick(&t, "GET", "/api/v1", &[]), Some(0));
    assert_eq!(pick(&t, "GET", "/apiv1", &[]), None);
}

#[test]
fn method_then_header_count_then_query_count_break_ties() {
    let t = table(
        r#"  - matches: [{path: {type: PathPrefix, value: /}}]
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: a, value: "1"}]}]
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
  - matches: [{path: {type: PathPrefix, value: /}, method: DELETE}]
  - matches: [{path: {type: PathPrefix, value: /}, queryParams: [{name: q, value: "x y"}]}]
"#,
    );
    assert_eq!(pick(&t, "GET", "/", &[("a", "1"), ("b", "2")]), Some(2));
    assert_eq!(pick(&t, "GET", "/", &[("a", "1")]), Some(1));
    // A method match outranks any number of header matches.
    assert_eq!(pick(&t, "DELETE", "/", &[("a", "1"), ("b", "2")]), Some(3));
    assert_eq!(pick(&t, "GET", "/?q=x%20y", &[]), Some(4));
    assert_eq!(pick(&t, "GET", "/?q=other", &[]), Some(0));
}

#[test]
fn regular_expressions_are_anchored_and_rank_below_prefixes() {
    let t = table(
        r#"  - matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
  - matches: [{path: {type: PathPrefix, value: /items}, headers: [{type: RegularExpression, name: x-user, value: "adm.*"}]}]
"#,
    );
    assert_eq!(pick(&t, "GET", "/items/42", &[]), Some(0));
    assert_eq!(pick(&t, "GET", "/items/42x", &[]), None);
    assert_eq!(pick(&t, "GET", "/items/42", &[("x-user", "admin")]), Some(1));
    assert_eq!(pick(&t, "GET", "/items/42", &[("x-user", "root")]), Some(0));
}

#[test]
fn equal_precedence_keeps_rule_order_and_a_rule_without_matches_matches_all() {
    let t = table(
        "  - matches: [{path: {type: PathPrefix, value: /x}}]\n  - matches: [{path: {type: PathPrefix, value: /x}}]\n  - {}\n",
    );
    assert_eq!(pick(&t, "GET", "/x", &[]), Some(0));
    assert_eq!(pick(&t, "GET", "/y", &[]), Some(2));
}

#[test]
fn parent_port_limits_where_a_route_applies() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: svc, port: 8080}]\n  rules: [{}]\n";
    let t = config::parse(text, "t.yaml", "cluster.local").unwrap().routes;
    let svc = ServiceKey::new("shop", "svc");
    assert!(t.has_routes(&svc, 8080, None));
    assert!(!t.has_routes(&svc, 80, None));
}

#[test]
fn prefix_rewrite_keeps_the_rest_of_the_path() {
    let r = PathRewrite::Prefix("/new".into());
    assert_eq!(rewrite_path(&r, "/old/a", Some("/old")), "/new/a");
    assert_eq!(rewrite_path(&r, "/old", Some("/old")), "/new");
    let root = PathRewrite::Prefix("/".into());
    assert_eq!(rewrite_path(&root, "/old/a", Some("/old")), "/a");
    assert_eq!(rewrite_path(&root, "/old", Some("/old")), "/");
    assert_eq!(rewrite_path(&PathRewrite::Full("/f".into()), "/old/a", None), "/f");
}

/// A route in `ns` named `name`, attached to Service `shop/svc`, sending to `backend`.
fn route_doc(ns: &str, name: &str, backend: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: svc, namespace: shop}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{backend}]\n"
    )
}

fn chosen(t: &RouteTable, client: Option<&str>) -> Option<String> {
    let (parts, ()) = Request::get("/hello").body(()).unwrap().into_parts();
    t.select(&ServiceKey::new("shop", "svc"), 80, client, &parts).map(|s| s.rule.route.clone())
}

#[test]
fn a_route_from_another_namespace_applies_only_to_that_namespaces_clients() {
    let text = route_doc("shop", "own", "{name: svc, port: 80}")
        + &route_doc("evil", "hijack", "{name: sink, namespace: evil, port: 80}");
    let t = config::parse(&text, "t.yaml", "cluster.local").unwrap().routes;
    // Everyone else keeps the Service owner's route: the consumer route is not theirs.
    assert_eq!(chosen(&t, Some("shop")).as_deref(), Some("shop/own"));
    assert_eq!(chosen(&t, Some("web")).as_deref(), Some("shop/own"));
    assert_eq!(chosen(&t, None).as_deref(), Some("shop/own"));
    // Its own namespace's clients get it, ahead of the producer route (GAMMA).
    assert_eq!(chosen(&t, Some("evil")).as_deref(), Some("evil/hijack"));
    // A consumer route alone does not give other clients routes at all.
    let t = config::parse(
        &route_doc("evil", "hijack", "{name: sink, namespace: evil, port: 80}"),
        "t.yaml",
        "cluster.local",
    )
    .unwrap()
    .routes;
    assert!(!t.has_routes(&ServiceKey::new("shop", "svc"), 80, Some("web")));
    assert!(t.has_routes(&ServiceKey::new("shop", "svc"), 80, Some("evil")));
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let cross = route_doc("web", "to-shop", "{name: legacy, namespace: shop, port: 80}");
    let e = config::parse(&cross, "t.yaml", "cluster.local").expect_err("no grant").to_string();
    assert!(e.contains("no ReferenceGrant in shop allows HTTPRoutes of namespace web"), "{e}");
    let mirror = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: m, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: svc}]\n  rules:\n  - backendRefs: [{name: svc, port: 80}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: tap, namespace: evil, port: 80}}}]\n";
    let e = config::parse(mirror, "t.yaml", "cluster.local")
        .expect_err("a mirror into another namespace needs a grant too");
    assert!(e.to_string().contains("ReferenceGrant in evil"), "{e}");

    let grant = |to: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: shop}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web}}]\n  to: [{to}]\n"
        )
    };
    // A grant for all Services, or for this one by name, allows it; one for another name does not.
    for (to, ok) in [
        ("{group: \"\", kind: Service}", true),
        ("{group: \"\", kind: Service, name: legacy}", true),
        ("{group: \"\", kind: Service, name: other}", false),
        ("{group: \"\", kind: Secret}", false),
    ] {
        let got = config::parse(&(cross.clone() + &grant(to)), "t.yaml", "cluster.local");
        assert_eq!(got.is_ok(), ok, "grant to {to}: {:?}", got.err());
    }
}
