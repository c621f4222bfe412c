//! Reading the L7 objects from the shared file, and errors that point at the line.

use std::time::Duration;

use super::*;

fn err(text: &str) -> L7ConfigError {
    parse(text, "mesh.yaml", "cluster.local").expect_err("expected an error")
}

const MODEL: &str =
    "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: cluster.local}\n";

#[test]
fn the_same_file_loads_as_model_and_as_l7_config() {
    let text = format!(
        "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: shop}}\nspec:\n  host: svc.shop.svc.cluster.local\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 7}}, http: {{http1MaxPendingRequests: 3, http2MaxRequests: 9}}}}\n    outlierDetection: {{consecutive5xxErrors: 4, baseEjectionTime: 1m, maxEjectionPercent: 40}}\n    loadBalancer: {{simple: ROUND_ROBIN}}\n---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {{name: b, namespace: shop}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: svc}}]\n  retryConstraint: {{budget: {{percent: 30, interval: 5s}}, minRetryRate: {{count: 3, interval: 2s}}}}\n"
    );
    mesh::config::parse(&text, "mesh.yaml", 1).expect("the model skips the waypoint's kinds");
    let c = parse(&text, "mesh.yaml", "cluster.local").unwrap();
    let svc = ServiceKey::new("shop", "svc");
    assert!(c.routes.has_routes(&svc, 80, None));
    let p = c.backend_policy(&svc, None);
    assert_eq!((p.limits.max_connections, p.limits.max_pending, p.limits.max_requests), (7, 3, 9));
    assert_eq!(p.outlier.consecutive_5xx, Some(4));
    assert_eq!(p.outlier.base_ejection, Duration::from_secs(60));
    assert_eq!(p.outlier.max_ejection_percent, 40.0);
    assert_eq!(p.budget.percent, 30.0);
    assert_eq!((p.budget.min_count, p.budget.min_interval), (3, Duration::from_secs(2)));
    // Unconfigured services get the built-in defaults.
    assert_eq!(c.backend_policy(&ServiceKey::new("shop", "other"), None), crate::resilience::BackendPolicy::default());
}

#[test]
fn errors_name_the_line_of_the_object() {
    let text = format!(
        "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  rules:\n  - filters: [{{type: Bogus}}]\n"
    );
    let e = err(&text);
    assert_eq!(e.line(), Some(10), "{e}");
    assert!(e.to_string().contains("filter type \"Bogus\" is not supported"), "{e}");

    let text = format!(
        "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  ruls: []\n"
    );
    let e = err(&text);
    assert_eq!(e.line(), Some(10), "{e}");
    assert!(e.to_string().contains("unknown field `ruls`"), "{e}");
}

#[test]
fn bad_values_are_explained() {
    let route = |rule: &str| {
        format!(
            "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  rules: [{rule}]\n"
        )
    };
    let e = err(&route("{matches: [{path: {type: RegularExpression, value: \"(\"}}]}"));
    assert!(e.to_string().contains("invalid regular expression"), "{e}");
    let e = err(&route("{timeouts: {request: 5 seconds}}"));
    assert!(e.to_string().contains("is not a duration"), "{e}");
    let e = err(&route(
        "{filters: [{type: ExtensionRef, extensionRef: {group: pillion.dev, kind: FaultInjection, name: nope}}]}",
    ));
    assert!(e.to_string().contains("FaultInjection shop/nope, which is not defined"), "{e}");
    let e = err(&route("{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}"));
    assert!(e.to_string().contains("3xx"), "{e}");
    let e = err(&format!(
        "{MODEL}---\napiVersion: pillion.dev/v1alpha1\nkind: FaultInjection\nmetadata: {{name: f}}\nspec: {{}}\n"
    ));
    assert!(e.to_string().contains("needs `delay`, `abort` or both"), "{e}");
}

#[test]
fn routes_on_gateways_and_kinds_of_others_are_ignored() {
    let text = format!(
        "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: ingress}}]\n  rules: [{{}}]\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n"
    );
    let c = parse(&text, "mesh.yaml", "cluster.local").unwrap();
    assert!(c.routes.is_empty());
}

#[test]
fn the_example_file_loads_in_both_readers() {
    let text = include_str!("../../examples/waypoint.yaml");
    let model = mesh::config::parse(text, "waypoint.yaml", 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(model.service("shop", "reviews").and_then(|s| s.waypoint.as_ref()).is_some());
    let c = parse(text, "waypoint.yaml", "cluster.local").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.routes.has_routes(&ServiceKey::new("shop", "reviews"), 80, None));
    assert_eq!(c.authz.len(), 1);
    assert_eq!(c.backend_policy(&ServiceKey::new("shop", "reviews-v2"), None).budget.percent, 50.0);
}

/// Objects as the Kubernetes source hands them over.
mod from_the_api {
    use serde_json::{Value, json};

    use super::*;

    fn obj(api: &str, kind: &str, name: &str, spec: Value) -> Value {
        json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "shop", "annotations": {}}, "spec": spec})
    }

    fn route(name: &str, service: &str, filters: Value) -> Value {
        obj(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            name,
            json!({"parentRefs": [{"kind": "Service", "name": service}],
                   "rules": [{"backendRefs": [{"name": service, "port": 80}], "filters": filters,
                              "retry": {"attempts": 2, "codes": [503]}}]}),
        )
    }

    fn fault(name: &str, spec: Value) -> Value {
        obj("pillion.dev/v1alpha1", "FaultInjection", name, spec)
    }

    fn fault_ref(name: &str) -> Value {
        json!([{"type": "ExtensionRef", "extensionRef": {"group": "pillion.dev", "kind": "FaultInjection", "name": name}}])
    }

    fn deny(name: &str, rules: Value) -> Value {
        obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            name,
            json!({"targetRefs": [{"kind": "Service", "name": "a"}], "action": "DENY", "rules": rules}),
        )
    }

    #[test]
    fn good_objects_apply_and_bad_ones_are_left_out_and_named() {
        let objects = vec![
            route("a", "a", json!([])),
            // Refers to a fault that is defined (after it in the list: order does not matter).
            route("b", "b", fault_ref("slow")),
            fault("slow", json!({"delay": {"fixedDelay": "10ms", "percentage": 100}})),
            // Refers to a fault that is not valid, so is not defined.
            route("c", "c", fault_ref("bad")),
            fault("bad", json!({})),
            route("d", "d", json!([{"type": "Bogus"}])),
            deny("no-admin", json!([{"to": [{"operation": {"paths": ["/admin"]}}]}])),
        ];
        let (c, skipped) = from_objects(&objects, "cluster.local").unwrap();
        assert!(c.routes.has_routes(&ServiceKey::new("shop", "a"), 80, None));
        assert!(c.routes.has_routes(&ServiceKey::new("shop", "b"), 80, None));
        assert!(!c.routes.has_routes(&ServiceKey::new("shop", "c"), 80, None));
        assert!(!c.routes.has_routes(&ServiceKey::new("shop", "d"), 80, None));
        assert_eq!(c.faults.len(), 1);
        assert_eq!(c.authz.len(), 1);
        assert_eq!(skipped.len(), 3, "{skipped:#?}");
        assert!(
            skipped[0].starts_with("FaultInjection shop/bad left out") && skipped[0].contains("delay"),
            "{skipped:#?}"
        );
        assert!(
            skipped[1].starts_with("HTTPRoute shop/c left out") && skipped[1].contains("not defined"),
            "{skipped:#?}"
        );
        assert!(skipped[2].starts_with("HTTPRoute shop/d left out") && skipped[2].contains("Bogus"), "{skipped:#?}");
    }

    #[test]
    fn a_bad_authorization_policy_becomes_deny_all_on_its_targets() {
        let allow_ips = obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "by-ip",
            json!({"targetRefs": [{"kind": "Service", "name": "b"}], "action": "ALLOW",
                   "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}),
        );
        let objects = vec![
            route("a", "a", json!([])),
            // A type error, an unknown action, a field the waypoint cannot evaluate.
            deny("typo", json!([{"to": [{"operation": {"paths": "/admin"}}]}])),
            obj(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "maybe",
                json!({"targetRefs": [{"kind": "Gateway", "name": "wp"}], "action": "DENYY"}),
            ),
            allow_ips,
            // A matcher the waypoint does not know: dropping it would widen the ALLOW.
            obj(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "newer",
                json!({"targetRefs": [{"kind": "Service", "name": "a"}], "action": "ALLOW",
                       "rules": [{"to": [{"operation": {"paths": ["/public"], "pathTemplates": ["/x/{*}"]}}]}]}),
            ),
            // Not the waypoint's (a selector policy): left to the node agent.
            obj(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "l4",
                json!({"selector": {"matchLabels": {"app": "a"}}, "action": "DENYY"}),
            ),
        ];
        let (c, notes) = from_objects(&objects, "cluster.local").unwrap();
        assert!(c.routes.has_routes(&ServiceKey::new("shop", "a"), 80, None), "the rest applies");
        let stand_ins: Vec<_> = c.authz.iter().map(|p| (p.name.as_str(), p.action, p.rules.len())).collect();
        assert_eq!(
            stand_ins,
            [
                ("typo", mesh::model::Action::Deny, 1),
                ("maybe", mesh::model::Action::Deny, 1),
                ("by-ip", mesh::model::Action::Deny, 1),
                ("newer", mesh::model::Action::Deny, 1)
            ]
        );
        assert!(matches!(&c.authz[1].targets[..], [crate::authz::PolicyTarget::Waypoint(w)] if w == "wp"));
        assert!(
            notes.iter().any(|n| n.starts_with("AuthorizationPolicy shop/typo:") && n.contains("deny-all")),
            "{notes:#?}"
        );
        assert!(notes.iter().any(|n| n.contains("shop/maybe") && n.contains("unknown action \"DENYY\"")), "{notes:#?}");
        assert!(
            notes.iter().any(|n| n.contains("shop/by-ip") && n.contains("source.ipBlocks is not evaluated")),
            "{notes:#?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("shop/newer") && n.contains("unknown field `pathTemplates`")),
            "{notes:#?}"
        );
        assert_eq!(notes.len(), 4, "the selector policy is not the waypoint's: {notes:#?}");
    }

    #[test]
    fn a_policy_whose_targets_cannot_be_read_is_deny_all_on_its_namespace_only() {
        let in_ns = |ns: &str, mut o: Value| {
            o["metadata"]["namespace"] = json!(ns);
            o
        };
        let objects = vec![
            route("a", "a", json!([])),
            // Another tenant's broken policies (the API server accepts them: open schema).
            in_ns(
                "other",
                obj(
                    "security.istio.io/v1",
                    "AuthorizationPolicy",
                    "p1",
                    json!({"targetRefs": "everything", "action": "DENY"}),
                ),
            ),
            in_ns(
                "other",
                obj(
                    "security.istio.io/v1",
                    "AuthorizationPolicy",
                    "p2",
                    json!({"targetRef": {"name": "x"}, "action": "DENY"}),
                ),
            ),
        ];
        let (c, notes) =
            from_objects(&objects, "cluster.local").expect("one tenant's bad object never freezes the others");
        assert!(c.routes.has_routes(&ServiceKey::new("shop", "a"), 80, None), "the rest applies");
        assert_eq!(notes.len(), 2, "{notes:#?}");
        assert!(
            notes.iter().all(|n| n.contains("deny-all on every waypoint and Service of its namespace")),
            "{notes:#?}"
        );
        let headers = http::HeaderMap::new();
        let attrs = crate::authz::RequestAttrs {
            principal: Some("cluster.local/ns/web/sa/client"),
            source_namespace: Some("web"),
            method: "GET",
            path: "/",
            host: "a",
            port: 80,
            headers: &headers,
        };
        use crate::authz::{Decision, authorize};
        let shop_wp = ServiceKey::new("shop", "waypoint");
        let other_wp = ServiceKey::new("other", "waypoint");
        assert_eq!(authorize(&c.authz, &shop_wp, &ServiceKey::new("shop", "a"), &attrs), Decision::Allow);
        assert!(matches!(authorize(&c.authz, &other_wp, &ServiceKey::new("other", "b"), &attrs), Decision::Denied(_)));
        assert!(
            matches!(authorize(&c.authz, &shop_wp, &ServiceKey::new("other", "b"), &attrs), Decision::Denied(_)),
            "a Service of that namespace, through any waypoint"
        );
    }

    #[test]
    fn custom_policies_are_refused_and_enforced_as_deny_all() {
        let custom = obj(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "ext",
            json!({"targetRefs": [{"kind": "Service", "name": "a"}], "action": "CUSTOM",
                   "provider": {"name": "opa"}, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
        );
        let (c, notes) = from_objects(&[custom], "cluster.local").unwrap();
        assert_eq!(c.authz.len(), 1);
        assert_eq!((c.authz[0].action, c.authz[0].rules.len()), (mesh::model::Action::Deny, 1));
        assert!(notes[0].contains("action CUSTOM") && notes[0].contains("deny-all"), "{notes:#?}");
    }

    #[test]
    fn allow_rules_that_would_match_everyone_are_refused() {
        for rules in [
            json!([{"from": [{}]}]),
            json!([{"from": [{"source": {}}]}]),
            json!([{"to": [{}]}]),
            json!([{"to": [{"operation": {}}]}]),
            json!([{"when": [{"key": "request.headers[x-user]"}]}]),
            json!([{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/a"]}}], "to": [{"operation": {}}]}]),
        ] {
            let allow = obj(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "open",
                json!({"targetRefs": [{"kind": "Service", "name": "a"}], "action": "ALLOW", "rules": rules}),
            );
            let (c, notes) = from_objects(&[allow], "cluster.local").unwrap();
            assert_eq!(c.authz.len(), 1, "{rules}");
            assert_eq!(c.authz[0].action, mesh::model::Action::Deny, "{rules}: deny-all instead of allow-all");
            assert!(
                notes[0].contains("would match every") || notes[0].contains("has no") || notes[0].contains("neither"),
                "{notes:#?}"
            );
        }
    }

    /// The waypoint reads principals as the node agent does (`mesh::istio`): a `spiffe://`
    /// principal never matches a peer, so in this DENY it would have denied nobody.
    #[test]
    fn a_spiffe_principal_is_refused_as_the_node_agent_refuses_it() {
        let p =
            deny("by-scheme", json!([{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/web/sa/a"]}}]}]));
        let (c, notes) = from_objects(&[p], "cluster.local").unwrap();
        assert_eq!(
            (c.authz[0].action, c.authz[0].rules[0].from.len()),
            (mesh::model::Action::Deny, 0),
            "deny-all stand-in"
        );
        assert!(notes[0].contains("omit the scheme") && notes[0].contains("deny-all"), "{notes:#?}");
    }

    #[test]
    fn thousands_of_objects_are_read() {
        // More documents than one YAML text may hold (serde-saphyr's budget is 1,024).
        let objects: Vec<Value> = (0..3000).map(|i| route(&format!("r{i}"), &format!("s{i}"), json!([]))).collect();
        let (c, notes) = from_objects(&objects, "cluster.local").unwrap();
        assert!(notes.is_empty());
        assert!(c.routes.has_routes(&ServiceKey::new("shop", "s2999"), 80, None));
    }

    #[test]
    fn no_objects_is_an_empty_configuration() {
        let (c, skipped) = from_objects::<Value>(&[], "cluster.local").unwrap();
        assert!(c.routes.is_empty() && c.authz.is_empty() && skipped.is_empty());
    }
}

#[test]
fn a_destination_rule_outside_the_services_namespace_binds_only_its_own_clients() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: choke, namespace: evil}
spec:
  host: payments.bank
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}
"#;
    let c = parse(text, "t.yaml", "cluster.local").unwrap();
    let payments = ServiceKey::new("bank", "payments");
    let default = crate::resilience::BackendPolicy::default();
    assert_eq!(c.backend_policy(&payments, None), default, "not for everyone");
    assert_eq!(c.backend_policy(&payments, Some("bank")), default);
    assert_eq!(c.backend_policy(&payments, Some("web")), default);
    assert_eq!(c.backend_policy(&payments, Some("evil")).limits.max_connections, 1, "for evil's own clients");
    let (_, scope) = c.scoped_backend_policy(&payments, Some("evil"));
    assert_eq!(scope.as_deref(), Some("evil"), "with breaker state of its own");
}

#[test]
fn grpc_routes_are_read_and_their_mistakes_explained() {
    let route = |annotations: &str, rules: &str| {
        format!(
            "{MODEL}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n  parentRefs: [{{kind: Service, name: svc}}]\n  rules: [{rules}]\n"
        )
    };
    let ok = route(
        "retry.pillion.dev/grpc: \"unavailable, deadline-exceeded\", retry.pillion.dev/limit: \"4\"",
        "{matches: [{method: {service: pkg.Echo, method: Say}}], backendRefs: [{name: svc, port: 80}]}",
    );
    mesh::config::parse(&ok, "mesh.yaml", 1).expect("the model skips GRPCRoutes");
    let c = parse(&ok, "mesh.yaml", "cluster.local").unwrap();
    assert!(c.routes.has_routes(&ServiceKey::new("shop", "svc"), 80, None));
    let e = err(&route("", "{filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]}"));
    assert!(e.to_string().contains("not allowed on a GRPCRoute"), "{e}");
    let e = err(&route("", "{matches: [{method: {type: Exact}}]}"));
    assert!(e.to_string().contains("needs `service`, `method` or both"), "{e}");
    let e = err(&route("", "{matches: [{method: {service: \"a/b\"}}]}"));
    assert!(e.to_string().contains("without '/'"), "{e}");
    let e = err(&route("retry.pillion.dev/grpc: teapot", "{backendRefs: [{name: svc, port: 80}]}"));
    assert!(e.to_string().contains("\"teapot\" is not a gRPC status name"), "{e}");
    let e = err(&route("retry.pillion.dev/limit: many", "{backendRefs: [{name: svc, port: 80}]}"));
    assert!(e.to_string().contains("is not a number of retries"), "{e}");
    // A cross-namespace backend needs a ReferenceGrant from GRPCRoutes; one for HTTPRoutes does not do.
    let grant = |kind: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: other}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: shop}}]\n  to: [{{group: \"\", kind: Service}}]\n"
        )
    };
    let cross = route("", "{backendRefs: [{name: svc, namespace: other, port: 80}]}");
    let e = err(&format!("{cross}{}", grant("HTTPRoute")));
    assert!(e.to_string().contains("allows GRPCRoutes of namespace shop"), "{e}");
    parse(&format!("{cross}{}", grant("GRPCRoute")), "mesh.yaml", "cluster.local").expect("granted");
}
