//! The rules every consumer of Istio's security kinds now shares, as tables. Each spec
//! is read twice, from YAML (the file source) and from JSON (the Kubernetes API and the
//! waypoint), and must mean the same both ways.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::authorization::{self, Authorization};
use super::peer_authentication;
use super::{SpecError, decode};
use crate::model::authz::StringMatch;
use crate::model::{Action, MeshSettings, MtlsMode};

fn read(spec: &Value, annotations: &[(&str, &str)]) -> Result<Authorization, SpecError> {
    let mesh = MeshSettings { trust_domain: "example.org".into(), ..MeshSettings::default() };
    let annotations: BTreeMap<String, String> =
        annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let compile = |s: Option<&authorization::AuthorizationPolicySpec>| {
        authorization::compile(&mesh, "shop", "p", &annotations, s)
    };
    let from_json = decode(spec).and_then(|s| compile(s.as_ref()));
    // The same spec as YAML text, read by the file source's deserializer.
    let yaml = serde_json::to_string(spec).unwrap();
    let from_yaml = serde_saphyr::from_str::<Option<authorization::AuthorizationPolicySpec>>(&yaml)
        .map_err(|e| SpecError::new(format!("spec: {e}")))
        .and_then(|s| compile(s.as_ref()));
    match (&from_json, &from_yaml) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{spec}: JSON and YAML read differently"),
        (Err(_), Err(_)) => {}
        _ => panic!("{spec}: JSON gave {from_json:?}, YAML gave {from_yaml:?}"),
    }
    from_json
}

#[test]
fn authorization_policy_table() {
    let svc = json!([{"kind": "Service", "name": "a"}]);
    #[rustfmt::skip]
    let refused: &[(&str, Value, &str)] = &[
        ("from entry without source", json!({"rules": [{"from": [{}]}]}), "rules[0].from[0] has no `source`"),
        ("empty source", json!({"rules": [{"from": [{"source": {}}]}]}), "`from.source` is empty"),
        ("to entry without operation", json!({"rules": [{"to": [{}]}]}), "rules[0].to[0] has no `operation`"),
        ("empty operation", json!({"rules": [{"to": [{"operation": {}}]}]}), "`to.operation` is empty"),
        ("when without values", json!({"rules": [{"when": [{"key": "request.headers[x]"}]}]}), "needs `values` or `notValues`"),
        ("L4 when without values", json!({"rules": [{"when": [{"key": "source.ip"}]}]}), "needs `values`"),
        ("unknown when key", json!({"rules": [{"when": [{"key": "source.ipp", "values": ["1.2.3.4"]}]}]}), "unknown condition key \"source.ipp\""),
        ("unknown operation field", json!({"targetRefs": svc, "rules": [{"to": [{"operation": {"pathTemplates": ["/x"]}}]}]}), "unknown field `pathTemplates`"),
        ("unknown source field", json!({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}), "unknown field `principal`"),
        ("unknown top-level field", json!({"actions": "DENY"}), "unknown field `actions`"),
        ("spiffe:// principal", json!({"rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}]}), "rules[0].from[0].source.principals: principal"),
        ("spiffe:// principal in when", json!({"rules": [{"when": [{"key": "source.principal", "values": ["spiffe://td/ns/a/sa/b"]}]}]}), "omit the scheme"),
        ("bad port", json!({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}), "rules[0].to[0].operation.ports: \"http\" is not a port number"),
        ("wildcard in the middle", json!({"rules": [{"from": [{"source": {"namespaces": ["a*b"]}}]}]}), "namespaces"),
        ("unknown action", json!({"action": "MAYBE"}), "unknown action \"MAYBE\""),
        ("targetRef without kind", json!({"targetRef": {"name": "x"}}), "kind"),
    ];
    for (name, spec, needle) in refused {
        let e = read(spec, &[]).expect_err(name);
        assert!(e.message().contains(needle), "{name}: {:?} lacks {needle:?}", e.message());
    }

    // Accepted, and what each consumer gets.
    let a = read(&json!({"rules": [{"to": [{"operation": {"ports": ["80", 8080], "notPorts": [22]}}]}]}), &[]).unwrap();
    assert_eq!(a.policy.rules[0].to[0].ports.values, [80, 8080], "ports as strings or integers");
    assert_eq!(a.http_rules[0].to[0].ports.not_values, [22]);

    let a = read(&json!({"rules": [{"from": [{"source": {"principals": ["*", "cluster.local/ns/web/*"], "notNamespaces": ["*-dev"]}}]}]}), &[]).unwrap();
    let want = [StringMatch::Present, StringMatch::Prefix("example.org/ns/web/".into())];
    assert_eq!(a.policy.rules[0].from[0].principals.values, want, "wildcards; cluster.local is this mesh");
    assert_eq!(a.http_rules[0].from[0].principals.values, want, "the waypoint reads principals the same way");
    assert_eq!(a.http_rules[0].from[0].namespaces.not_values, [StringMatch::Suffix("-dev".into())]);

    let a = read(&json!({"action": "DENY", "rules": [{"to": [{"operation": {"hosts": ["Shop.Example"], "methods": ["GET"], "paths": ["/admin*"]}}],
        "when": [{"key": "request.headers[x-user]", "values": ["bob"]}, {"key": "request.method", "notValues": ["GET"]}]}]}), &[]).unwrap();
    let rule = &a.policy.rules[0];
    assert_eq!(
        rule.l7_fields,
        [
            "to.operation.hosts",
            "to.operation.methods",
            "to.operation.paths",
            "when request.headers[x-user]",
            "when request.method"
        ]
    );
    let http = &a.http_rules[0];
    assert_eq!(http.to[0].hosts.values, [StringMatch::Exact("shop.example".into())], "hosts lower-cased");
    assert_eq!(http.to[0].paths.values, [StringMatch::Prefix("/admin".into())]);
    assert_eq!((http.when[0].key.as_str(), http.when[1].key.as_str()), ("request.headers[x-user]", "request.method"));

    let a = read(
        &json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "requestPrincipals": ["*"]}}]}]}),
        &[],
    )
    .unwrap();
    assert_eq!(
        a.http_rules[0].from[0].other_fields,
        ["ipBlocks", "requestPrincipals"],
        "fields a waypoint cannot judge, by name"
    );

    // Scope: selector is the node agent's, targetRef(s) a waypoint's.
    let a = read(&json!({"selector": {"matchLabels": {"app": "a"}}}), &[]).unwrap();
    assert!(!a.policy.targets_waypoint && a.target_refs.is_empty());
    assert_eq!(a.policy.selector.get("app").map(String::as_str), Some("a"));
    let a = read(&json!({"targetRef": {"kind": "Gateway", "name": "wp"}, "targetRefs": svc}), &[]).unwrap();
    assert!(a.policy.targets_waypoint);
    assert_eq!(a.target_refs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["wp", "a"]);

    // Actions: all four read; what AUDIT and CUSTOM mean is each enforcer's to say.
    for (action, want) in
        [("ALLOW", Action::Allow), ("DENY", Action::Deny), ("AUDIT", Action::Audit), ("CUSTOM", Action::Custom)]
    {
        let a = read(&json!({"action": action, "provider": {"name": "opa"}, "rules": [{}]}), &[]).unwrap();
        assert_eq!(a.policy.action, want, "{action}");
    }

    // No spec: ALLOW with no rules (deny all). Dry-run comes from the annotation.
    let a = read(&Value::Null, &[("istio.io/dry-run", "true")]).unwrap();
    assert_eq!((a.policy.action, a.policy.rules.len(), a.policy.dry_run), (Action::Allow, 0, true));
    assert!(!read(&json!({}), &[("istio.io/dry-run", "false")]).unwrap().policy.dry_run);
}

#[test]
fn peer_authentication_table() {
    let read = |spec: Value| decode(&spec).and_then(|s| peer_authentication::compile("shop", "p", s.as_ref()));
    let ok = read(json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}})).unwrap();
    assert_eq!((ok.mode, ok.port_level.get(&8080)), (MtlsMode::Strict, Some(&MtlsMode::Permissive)));
    assert_eq!(read(Value::Null).unwrap().mode, MtlsMode::Unset);
    #[rustfmt::skip]
    let refused: &[(Value, &str)] = &[
        (json!({"mtls": {"mode": "STRICTER"}}), "mtls.mode: unknown mTLS mode \"STRICTER\""),
        (json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}), "needs a selector"),
        (json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"0": {"mode": "DISABLE"}}}), "not a port number"),
        (json!({"mtls": {"mode": "STRICT", "strict": true}}), "unknown field `strict`"),
    ];
    for (spec, needle) in refused {
        let e = read(spec.clone()).expect_err(needle);
        assert!(e.message().contains(needle), "{spec}: {:?} lacks {needle:?}", e.message());
    }
}
