//! Config parsing: the happy path, every documented error with its line, and Istio YAML
//! semantics end to end.

use std::net::SocketAddr;

use super::{ConfigError, parse};
use crate::model::{Model, MtlsMode, Protocol, WaypointRef, authz::ConnInfo};
use crate::parse::SpiffeId;

pub(crate) const EXAMPLE: &str = r#"
apiVersion: pillion.dev/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  trustDomain: cluster.local
  rootNamespace: istio-system
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/use-waypoint: shop-waypoint
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata:
  name: cart-0
  namespace: shop
  labels: {app: cart}
spec:
  serviceAccount: cart
  ips: [10.0.1.10, "fd00::1:10"]
  node: node-a
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata:
  name: cart-1
  namespace: shop
  labels: {app: cart, istio.io/use-waypoint: none}
spec:
  serviceAccount: cart
  ips: [10.0.2.10]
  node: node-b
---
apiVersion: pillion.dev/v1alpha1
kind: Workload
metadata:
  name: legacy
  namespace: default
spec:
  ips: [10.0.2.99]
  node: node-b
  protocol: NONE
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata:
  name: cart
  namespace: shop
spec:
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, port: 80, targetPort: 8080}
  selector: {app: cart}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata:
  name: shop-waypoint
  namespace: shop
  labels: {istio.io/use-waypoint: none}
spec:
  clusterIPs: [10.96.0.20]
  ports: [{name: mesh, port: 15008}]
  endpoints: [cart-0]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: cart-from-web
  namespace: shop
spec:
  selector:
    matchLabels: {app: cart}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/web/sa/*"]
    to:
    - operation:
        ports: ["8080"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"#;

fn ok(text: &str) -> Model {
    parse(text, "test.yaml", 1).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, "test.yaml", 1) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn example_builds_the_model() {
    let m = ok(EXAMPLE);
    assert_eq!(m.version(), 1);
    let cart0 = m.workload_by_ip("10.0.1.10".parse().unwrap()).unwrap();
    assert_eq!(cart0.identity().as_str(), "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(m.workload_by_ip("fd00::1:10".parse().unwrap()).unwrap().name(), "cart-0");
    assert_eq!(cart0.waypoint, Some(WaypointRef { namespace: "shop".into(), name: "shop-waypoint".into() }));
    assert_eq!(m.workload("shop", "cart-1").unwrap().waypoint, None);
    let legacy = m.workload("default", "legacy").unwrap();
    assert_eq!((legacy.protocol, legacy.service_account()), (Protocol::None, "default"));
    assert_eq!(m.workloads_on_node("node-b").count(), 2);

    let t = m.service_by_vip("10.96.0.10:80".parse().unwrap()).unwrap();
    assert_eq!(t.service.host(), "cart.shop.svc.cluster.local");
    assert_eq!(t.service.waypoint.as_ref().map(|w| w.name.as_str()), Some("shop-waypoint"));
    let mut eps: Vec<_> = t.endpoints.iter().map(|e| (e.workload.name(), e.port)).collect();
    eps.sort();
    assert_eq!(eps, [("cart-0", 8080), ("cart-1", 8080)]);
    assert!(m.service_by_vip("10.96.0.10:81".parse().unwrap()).is_none());
    assert_eq!(m.service_by_vip("10.96.0.20:15008".parse().unwrap()).unwrap().endpoints.len(), 1);

    let wp = cart0.waypoint.as_ref().unwrap();
    assert_eq!(m.waypoint_service(wp).unwrap().vips, ["10.96.0.20".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(m.waypoint_workloads(wp).map(|w| w.name()).collect::<Vec<_>>(), ["cart-0"]);
    assert!(m.is_waypoint_identity(wp, cart0.identity().spiffe_id()));
    assert!(!m.is_waypoint_identity(wp, legacy.identity().spiffe_id()));
    assert_eq!(m.peer_auth_mode(cart0, 8080), MtlsMode::Strict);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("spiffe://cluster.local/ns/shop/sa/cart"), "{json}");
}

#[test]
fn errors_name_file_line_and_problem() {
    let wl = |extra: &str| {
        format!("apiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: a\nspec:\n  node: n\n{extra}")
    };
    let pol = |rules: &str| {
        format!(
            "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: m}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n{rules}"
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, u64, &str)> = vec![
        ("bad IP", wl("  ips: [10.0.0.1, 10.0.0.300]\n"), 7, "10.0.0.300"),
        ("unknown field", wl("  ips: [10.0.0.1]\n  nodee: x\n"), 8, "nodee"),
        ("missing field", "apiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: a\nspec:\n  ips: [10.0.0.1]\n".into(), 6, "node"),
        ("bad protocol", wl("  ips: [10.0.0.1]\n  protocol: TCP\n"), 8, "TCP"),
        ("no IPs", wl(""), 4, "spec.ips"),
        ("unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n".into(), 2, "unknown kind \"Pod\""),
        ("wrong apiVersion", "apiVersion: v1\nkind: Workload\nmetadata: {name: a}\nspec: {node: n, ips: [10.0.0.1]}\n".into(), 1, "pillion.dev/v1alpha1"),
        ("spec before kind", "apiVersion: v1\nspec: {}\nkind: Namespace\nmetadata: {name: a}\n".into(), 2, "put `kind` first"),
        ("YAML syntax", wl("  ips: [10.0.0.1\n"), 7, ""),
        ("bad name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Shop}\n".into(), 3, "Shop"),
        ("duplicate object", format!("{}---\n{}", wl("  ips: [10.0.0.1]\n"), wl("  ips: [10.0.0.2]\n")), 12, "defined twice"),
        ("IP conflict", format!("{}---\n{}", wl("  ips: [10.0.0.1]\n"), wl("  ips: [10.0.0.1]\n").replace("name: a", "name: b")), 12, "10.0.0.1"),
        ("second MeshConfig", "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: a}\n---\napiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: b}\n".into(), 6, "second MeshConfig"),
        ("bad trust domain", "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: a}\nspec: {trustDomain: Bad_TD!}\n".into(), 4, "trustDomain"),
        ("malformed principal", pol("  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\"]\n"), 13, "omit the scheme"),
        ("principal not Istio form", pol("  - from:\n    - source:\n        principals: [\"cluster.local/foo\"]\n"), 13, "not `<trust-domain>"),
        ("bad CIDR", pol("  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\"]\n"), 13, "/33"),
        ("bad ip block", pol("  - from:\n    - source:\n        notIpBlocks: [\"10.0.0.x\"]\n"), 13, "10.0.0.x"),
        ("bad port", pol("  - to:\n    - operation:\n        ports: [\"http\"]\n"), 13, "port number"),
        ("empty source", pol("  - from:\n    - source: {}\n"), 12, "`from.source` is empty"),
        ("from without source", pol("  - from:\n    - {}\n"), 12, "no `source`"),
        ("unknown when key", pol("  - when:\n    - key: source.ipp\n      values: [\"1.2.3.4\"]\n"), 12, "unknown condition key"),
        ("when without values", pol("  - when:\n    - key: source.ip\n"), 12, "values"),
        ("bad action", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: REJECT\n".into(), 5, "REJECT"),
        ("bad peer auth mode", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICTER}\n".into(), 5, "STRICTER"),
        ("portLevelMtls without selector", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n".into(), 3, "selector"),
        ("VIP is a workload IP", format!("{}---\napiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  clusterIP: 10.0.0.1\n", wl("  ips: [10.0.0.1]\n")), 11, "10.0.0.1"),
        ("unknown endpoint", "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  endpoints: [nope]\n".into(), 3, "nope"),
        ("unknown waypoint", "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata:\n  name: s\n  labels: {istio.io/use-waypoint: wp}\nspec: {}\n".into(), 4, "waypoint default/wp"),
        ("named targetPort", "apiVersion: pillion.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, targetPort: http}]\n".into(), 5, "named target ports"),
    ];
    for (name, text, line, needle) in cases {
        let e = err(&text);
        let msg = e.to_string();
        assert_eq!(e.line(), Some(line), "{name}: wrong line in {msg}");
        assert!(msg.starts_with(&format!("test.yaml:{line}:")), "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
        assert!(!msg.contains(" at line "), "{name}: location repeated in {msg:?}");
    }
}

#[test]
fn empty_file_is_refused() {
    for text in ["", "\n# nothing\n", "---\n---\n"] {
        let e = err(text);
        assert!(e.to_string().contains("no objects"), "{e}");
    }
}

/// Authorizes a connection from `principal` to cart-0:`port` under `policies` (YAML).
fn allowed(policies: &str, principal: Option<&str>, port: u16) -> bool {
    let text = format!(
        "apiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {{name: cart-0, namespace: shop, labels: {{app: cart}}}}\nspec: {{ips: [10.0.1.10], node: a}}\n---\n{policies}"
    );
    let m = ok(&text);
    let id = principal.map(|p| SpiffeId::parse(p).unwrap());
    let w = m.workload("shop", "cart-0").unwrap();
    let dst = SocketAddr::new("10.0.1.10".parse().unwrap(), port);
    m.authorize(&ConnInfo { src_identity: id.as_ref(), src_ip: "10.9.0.1".parse().unwrap(), dst_workload: w, dst })
        .allowed
}

#[test]
fn istio_yaml_semantics() {
    let web = Some("spiffe://cluster.local/ns/web/sa/frontend");
    let head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n";
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Option<&str>, u16, bool)> = vec![
        ("spec {} denies all", format!("{head}spec: {{}}\n"), web, 80, false),
        ("no spec denies all", head.to_string(), web, 80, false),
        ("empty rule allows all", format!("{head}spec:\n  rules: [{{}}]\n"), None, 80, true),
        ("DENY with empty rule", format!("{head}spec:\n  action: DENY\n  rules: [{{}}]\n"), web, 80, false),
        ("L7 methods in ALLOW never match", format!("{head}spec:\n  rules:\n  - to:\n    - operation: {{methods: [GET]}}\n"), web, 80, false),
        ("L7 methods in DENY match more", format!("{head}spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{methods: [DELETE]}}\n"), web, 80, false),
        ("L7 paths + ports in DENY keeps the port", format!("{head}spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [/admin], ports: [\"9090\"]}}\n"), web, 80, true),
        ("requestPrincipals in ALLOW never match", format!("{head}spec:\n  rules:\n  - from:\n    - source: {{requestPrincipals: [\"*\"]}}\n"), web, 80, false),
        ("header condition in DENY is ignored (denies)", format!("{head}spec:\n  action: DENY\n  rules:\n  - when:\n    - key: request.headers[x-user]\n      values: [bob]\n"), web, 80, false),
        ("AUDIT accepted and ignored", format!("{head}spec:\n  action: AUDIT\n  rules: [{{}}]\n"), web, 80, true),
        ("CUSTOM accepted and ignored", format!("{head}spec:\n  action: CUSTOM\n  provider: {{name: ext}}\n  rules: [{{}}]\n"), web, 80, true),
        ("targetRefs are for waypoints", format!("{head}spec:\n  targetRefs: [{{kind: Service, group: \"\", name: cart}}]\n  action: DENY\n  rules: [{{}}]\n"), web, 80, true),
        ("integer ports accepted", format!("{head}spec:\n  rules:\n  - to:\n    - operation: {{ports: [80]}}\n"), web, 80, true),
        ("when destination.port notValues", format!("{head}spec:\n  action: DENY\n  rules:\n  - when:\n    - key: destination.port\n      notValues: [\"80\"]\n"), web, 22, false),
        ("selector not matching", format!("{head}spec:\n  selector: {{matchLabels: {{app: other}}}}\n  action: DENY\n  rules: [{{}}]\n"), web, 80, true),
        ("dry-run DENY not enforced", String::from("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  action: DENY\n  rules: [{}]\n"), web, 80, true),
        ("serviceAccounts", format!("{head}spec:\n  rules:\n  - from:\n    - source: {{serviceAccounts: [web/frontend]}}\n"), web, 80, true),
    ];
    for (name, policies, principal, port, want) in cases {
        assert_eq!(allowed(&policies, principal, port), want, "{name}");
    }
}

#[test]
fn kubectl_metadata_is_accepted() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  uid: 1234\n  resourceVersion: \"9\"\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  annotations: {a: b}\nspec:\n  finalizers: [kubernetes]\nstatus:\n  phase: Active\n";
    assert!(ok(text).namespace_labels("shop").is_some());
}

#[test]
fn docs_examples_parse() {
    // Keeps docs/config.md honest: every complete example in it must load.
    let doc = include_str!("../../../docs/config.md");
    let mut n = 0;
    for block in doc.split("```yaml").skip(1) {
        let yaml = block.split("```").next().unwrap();
        if yaml.contains("# fragment") {
            continue;
        }
        ok(yaml);
        n += 1;
    }
    assert!(n >= 1, "docs/config.md has no complete yaml example");
}

#[test]
fn cluster_local_principals_follow_the_trust_domain() {
    let text = "apiVersion: pillion.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec: {trustDomain: example.org}\n---\napiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {name: cart-0, namespace: shop}\nspec: {ips: [10.0.1.10], node: a}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/web/sa/frontend, \"cluster.local/ns/ops/*\"]}\n";
    let m = ok(text);
    let w = m.workload("shop", "cart-0").unwrap();
    assert_eq!(w.identity().trust_domain(), "example.org");
    let check = |id: &str| {
        let id = SpiffeId::parse(id).unwrap();
        let dst = SocketAddr::new("10.0.1.10".parse().unwrap(), 80);
        m.authorize(&ConnInfo { src_identity: Some(&id), src_ip: "10.9.0.1".parse().unwrap(), dst_workload: w, dst })
            .allowed
    };
    assert!(check("spiffe://example.org/ns/web/sa/frontend"));
    assert!(check("spiffe://example.org/ns/ops/sa/admin"));
    assert!(!check("spiffe://cluster.local/ns/web/sa/frontend"));
}

#[test]
fn truncated_files_give_errors_not_panics() {
    // Every prefix of a real file (what a reader sees mid-save) must parse or be refused.
    for end in (0..EXAMPLE.len()).step_by(3) {
        let _ = parse(&EXAMPLE[..end], "test.yaml", 1);
    }
}

#[test]
fn load_file_names_the_path() {
    let path = std::env::temp_dir().join(format!("pillion-load-{}.yaml", std::process::id()));
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(super::load_file(&path, 7).unwrap().version(), 7);
    std::fs::write(&path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: BAD}\n").unwrap();
    let e = super::load_file(&path, 8).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:3:", path.display())), "{e}");
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(super::load_file(&path, 9), Err(ConfigError::Read { .. })));
}

#[test]
fn waypoint_kinds_are_left_to_the_waypoint() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: cart}]\n";
    let m = ok(&format!("{EXAMPLE}{route}"));
    assert_eq!(m.workloads().len(), 3);
    assert!(super::is_waypoint_kind("gateway.networking.k8s.io/v1", "HTTPRoute"));
    assert!(!super::is_waypoint_kind("v1", "HTTPRoute"));
}
