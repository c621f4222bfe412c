//! Table-driven tests of L4 authorization semantics.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::model::{MeshSettings, Model, ModelBuilder, Workload};
use crate::parse::SpiffeId;

const ROOT: &str = "istio-system";
const DST_IP: &str = "10.0.0.10";

fn dst_workload() -> Workload {
    let mut w = Workload::new("cluster.local", "shop", "cart-0", "cart").unwrap();
    w.labels.insert("app".into(), "cart".into());
    w.ips.push(DST_IP.parse().unwrap());
    w
}

fn model(policies: Vec<AuthorizationPolicy>) -> Model {
    let mut b = ModelBuilder::new(MeshSettings::default());
    b.workload(dst_workload());
    for p in policies {
        b.authorization_policy(p);
    }
    b.build(1).unwrap()
}

fn pol(ns: &str, name: &str, action: Action, selector: &[(&str, &str)], rules: Vec<Rule>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.into(),
        namespace: ns.into(),
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        action,
        rules,
        targets_waypoint: false,
        dry_run: false,
    }
}

fn principals(v: &[&str], not: &[&str]) -> Matcher<StringMatch> {
    let p = |s: &[&str]| s.iter().map(|s| StringMatch::principal(s).unwrap()).collect();
    Matcher::new(p(v), p(not))
}

fn namespaces(v: &[&str], not: &[&str]) -> Matcher<StringMatch> {
    let p = |s: &[&str]| s.iter().map(|s| StringMatch::namespace(s).unwrap()).collect();
    Matcher::new(p(v), p(not))
}

fn blocks(v: &[&str], not: &[&str]) -> Matcher<IpNet> {
    let p = |s: &[&str]| s.iter().map(|s| s.parse().unwrap()).collect();
    Matcher::new(p(v), p(not))
}

fn from(s: Source) -> Rule {
    Rule { from: vec![s], ..Rule::default() }
}

fn ports(v: &[u16], not: &[u16]) -> Rule {
    Rule { to: vec![Operation { ports: Matcher::new(v.to_vec(), not.to_vec()) }], ..Rule::default() }
}

fn l7(mut r: Rule, field: &str) -> Rule {
    r.l7_fields.push(field.into());
    r
}

/// A connection from `principal` (None: plaintext) at `src_ip` to the cart workload.
struct Conn(Option<&'static str>, &'static str, u16);

const FRONT: Option<&str> = Some("spiffe://cluster.local/ns/web/sa/frontend");
const ADMIN: Option<&str> = Some("spiffe://cluster.local/ns/ops/sa/admin");
const OTHER_TD: Option<&str> = Some("spiffe://other.example/ns/web/sa/frontend");

fn check(m: &Model, c: &Conn) -> Verdict {
    let id = c.0.map(|s| SpiffeId::parse(s).unwrap());
    let w = m.workload("shop", "cart-0").unwrap();
    let dst = SocketAddr::new(DST_IP.parse().unwrap(), c.2);
    m.authorize(&ConnInfo { src_identity: id.as_ref(), src_ip: c.1.parse::<IpAddr>().unwrap(), dst_workload: w, dst })
}

use Action::{Allow, Deny};

/// (name, policies, connection, allowed, deciding policy)
type Case = (&'static str, Vec<AuthorizationPolicy>, Conn, bool, Option<&'static str>);

#[test]
fn authorization_table() {
    let web = || from(Source { namespaces: namespaces(&["web"], &[]), ..Source::default() });
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("no policy → allow", vec![], Conn(None, "192.0.2.1", 80), true, None),
        ("ALLOW by namespace matches", vec![pol("shop", "a", Allow, &[], vec![web()])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("ALLOW by namespace, other namespace denied", vec![pol("shop", "a", Allow, &[], vec![web()])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        ("ALLOW by namespace, plaintext denied", vec![pol("shop", "a", Allow, &[], vec![web()])], Conn(None, "10.1.0.1", 80), false, None),
        ("ALLOW in another namespace does not apply", vec![pol("other", "a", Allow, &[], vec![web()])], Conn(ADMIN, "10.1.0.1", 80), true, None),
        ("ALLOW spec {} denies all", vec![pol("shop", "nothing", Allow, &[], vec![])], Conn(FRONT, "10.1.0.1", 80), false, None),
        ("ALLOW empty rule allows all", vec![pol("shop", "all", Allow, &[], vec![Rule::default()])], Conn(None, "10.1.0.1", 80), true, Some("shop/all")),
        ("DENY empty rule denies all", vec![pol("shop", "d", Deny, &[], vec![Rule::default()])], Conn(FRONT, "10.1.0.1", 80), false, Some("shop/d")),
        ("DENY without rules denies nothing", vec![pol("shop", "d", Deny, &[], vec![])], Conn(FRONT, "10.1.0.1", 80), true, None),
        ("DENY wins over ALLOW", vec![pol("shop", "a", Allow, &[], vec![web()]), pol("shop", "d", Deny, &[], vec![web()])], Conn(FRONT, "10.1.0.1", 80), false, Some("shop/d")),
        ("mesh-wide DENY applies", vec![pol(ROOT, "d", Deny, &[], vec![web()])], Conn(FRONT, "10.1.0.1", 80), false, Some("istio-system/d")),
        ("mesh-wide ALLOW applies", vec![pol(ROOT, "a", Allow, &[], vec![web()])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        ("selector matches", vec![pol("shop", "d", Deny, &[("app", "cart")], vec![Rule::default()])], Conn(FRONT, "10.1.0.1", 80), false, Some("shop/d")),
        ("selector does not match", vec![pol("shop", "d", Deny, &[("app", "web")], vec![Rule::default()])], Conn(FRONT, "10.1.0.1", 80), true, None),
        ("root selector spans namespaces", vec![pol(ROOT, "d", Deny, &[("app", "cart")], vec![Rule::default()])], Conn(FRONT, "10.1.0.1", 80), false, Some("istio-system/d")),
        ("AUDIT ignored", vec![pol("shop", "x", Action::Audit, &[], vec![Rule::default()])], Conn(FRONT, "10.1.0.1", 80), true, None),
        ("CUSTOM ignored", vec![pol("shop", "x", Action::Custom, &[], vec![])], Conn(FRONT, "10.1.0.1", 80), true, None),
        // Principals and wildcards.
        ("exact principal", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["cluster.local/ns/web/sa/frontend"], &[]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("exact principal, other trust domain", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["cluster.local/ns/web/sa/frontend"], &[]), ..Source::default() })])], Conn(OTHER_TD, "10.1.0.1", 80), false, None),
        ("suffix wildcard principal", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["*/ns/web/sa/frontend"], &[]), ..Source::default() })])], Conn(OTHER_TD, "10.1.0.1", 80), true, Some("shop/a")),
        ("prefix wildcard principal", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["cluster.local/ns/web/*"], &[]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("prefix wildcard principal miss", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["cluster.local/ns/web/*"], &[]), ..Source::default() })])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        ("* principal needs an identity", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["*"], &[]), ..Source::default() })])], Conn(None, "10.1.0.1", 80), false, None),
        ("* principal any identity", vec![pol("shop", "a", Allow, &[], vec![from(Source { principals: principals(&["*"], &[]), ..Source::default() })])], Conn(ADMIN, "10.1.0.1", 80), true, Some("shop/a")),
        ("notPrincipals excludes", vec![pol("shop", "d", Deny, &[], vec![from(Source { principals: principals(&[], &["cluster.local/ns/web/sa/frontend"]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, None),
        ("notPrincipals matches others", vec![pol("shop", "d", Deny, &[], vec![from(Source { principals: principals(&[], &["cluster.local/ns/web/sa/frontend"]), ..Source::default() })])], Conn(ADMIN, "10.1.0.1", 80), false, Some("shop/d")),
        ("notPrincipals * denies plaintext", vec![pol("shop", "d", Deny, &[], vec![from(Source { principals: principals(&[], &["*"]), ..Source::default() })])], Conn(None, "10.1.0.1", 80), false, Some("shop/d")),
        ("notPrincipals * lets mTLS through", vec![pol("shop", "d", Deny, &[], vec![from(Source { principals: principals(&[], &["*"]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, None),
        // Namespaces.
        ("namespace prefix wildcard", vec![pol("shop", "a", Allow, &[], vec![from(Source { namespaces: namespaces(&["we*"], &[]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("notNamespaces", vec![pol("shop", "a", Allow, &[], vec![from(Source { namespaces: namespaces(&[], &["ops"]), ..Source::default() })])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        ("notNamespaces lets others in", vec![pol("shop", "a", Allow, &[], vec![from(Source { namespaces: namespaces(&[], &["ops"]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("namespaces and notNamespaces together", vec![pol("shop", "a", Allow, &[], vec![from(Source { namespaces: namespaces(&["*"], &["web"]), ..Source::default() })])], Conn(FRONT, "10.1.0.1", 80), false, None),
        // Service accounts.
        ("serviceAccounts", vec![pol("shop", "a", Allow, &[], vec![from(Source { service_accounts: Matcher::new(vec![ServiceAccountMatch::parse("web/frontend", "shop").unwrap()], vec![]), ..Source::default() })])], Conn(OTHER_TD, "10.1.0.1", 80), true, Some("shop/a")),
        ("serviceAccounts plaintext", vec![pol("shop", "a", Allow, &[], vec![from(Source { service_accounts: Matcher::new(vec![ServiceAccountMatch::parse("web/frontend", "shop").unwrap()], vec![]), ..Source::default() })])], Conn(None, "10.1.0.1", 80), false, None),
        // IP blocks.
        ("ipBlocks v4 CIDR", vec![pol("shop", "a", Allow, &[], vec![from(Source { ip_blocks: blocks(&["10.1.0.0/16"], &[]), ..Source::default() })])], Conn(None, "10.1.200.3", 80), true, Some("shop/a")),
        ("ipBlocks v4 miss", vec![pol("shop", "a", Allow, &[], vec![from(Source { ip_blocks: blocks(&["10.1.0.0/16"], &[]), ..Source::default() })])], Conn(None, "10.2.0.1", 80), false, None),
        ("ipBlocks single address", vec![pol("shop", "a", Allow, &[], vec![from(Source { ip_blocks: blocks(&["10.2.0.1"], &[]), ..Source::default() })])], Conn(None, "10.2.0.1", 80), true, Some("shop/a")),
        ("ipBlocks v6", vec![pol("shop", "a", Allow, &[], vec![from(Source { ip_blocks: blocks(&["fd00:1::/64"], &[]), ..Source::default() })])], Conn(None, "fd00:1::7", 80), true, Some("shop/a")),
        ("ipBlocks v4-mapped source", vec![pol("shop", "a", Allow, &[], vec![from(Source { ip_blocks: blocks(&["10.1.0.0/16"], &[]), ..Source::default() })])], Conn(None, "::ffff:10.1.0.9", 80), true, Some("shop/a")),
        ("notIpBlocks", vec![pol("shop", "d", Deny, &[], vec![from(Source { ip_blocks: blocks(&[], &["10.0.0.0/8"]), ..Source::default() })])], Conn(None, "192.0.2.1", 80), false, Some("shop/d")),
        ("notIpBlocks inside", vec![pol("shop", "d", Deny, &[], vec![from(Source { ip_blocks: blocks(&[], &["10.0.0.0/8"]), ..Source::default() })])], Conn(None, "10.9.9.9", 80), true, None),
        ("fields in one source are ANDed", vec![pol("shop", "a", Allow, &[], vec![from(Source { namespaces: namespaces(&["web"], &[]), ip_blocks: blocks(&["10.1.0.0/16"], &[]), ..Source::default() })])], Conn(FRONT, "10.2.0.1", 80), false, None),
        ("sources in one rule are ORed", vec![pol("shop", "a", Allow, &[], vec![Rule { from: vec![Source { namespaces: namespaces(&["ops"], &[]), ..Source::default() }, Source { ip_blocks: blocks(&["10.2.0.0/16"], &[]), ..Source::default() }], ..Rule::default() }])], Conn(FRONT, "10.2.0.1", 80), true, Some("shop/a")),
        // Ports.
        ("ports match", vec![pol("shop", "a", Allow, &[], vec![ports(&[80, 443], &[])])], Conn(None, "10.1.0.1", 443), true, Some("shop/a")),
        ("ports miss", vec![pol("shop", "a", Allow, &[], vec![ports(&[80], &[])])], Conn(None, "10.1.0.1", 8080), false, None),
        ("notPorts", vec![pol("shop", "d", Deny, &[], vec![ports(&[], &[80])])], Conn(None, "10.1.0.1", 22), false, Some("shop/d")),
        ("notPorts excluded port", vec![pol("shop", "d", Deny, &[], vec![ports(&[], &[80])])], Conn(None, "10.1.0.1", 80), true, None),
        ("from AND to", vec![pol("shop", "a", Allow, &[], vec![Rule { to: ports(&[80], &[]).to, ..web() }])], Conn(FRONT, "10.1.0.1", 8080), false, None),
        // When conditions.
        ("when source.ip", vec![pol("shop", "a", Allow, &[], vec![Rule { when: vec![Condition::SourceIp(blocks(&["10.1.0.0/16"], &[]))], ..Rule::default() }])], Conn(None, "10.1.0.1", 80), true, Some("shop/a")),
        ("when destination.ip notValues", vec![pol("shop", "d", Deny, &[], vec![Rule { when: vec![Condition::DestinationIp(blocks(&[], &[DST_IP]))], ..Rule::default() }])], Conn(None, "10.1.0.1", 80), true, None),
        ("when destination.port", vec![pol("shop", "d", Deny, &[], vec![Rule { when: vec![Condition::DestinationPort(Matcher::new(vec![9090], vec![]))], ..Rule::default() }])], Conn(None, "10.1.0.1", 9090), false, Some("shop/d")),
        ("when source.namespace", vec![pol("shop", "a", Allow, &[], vec![Rule { when: vec![Condition::SourceNamespace(namespaces(&["ops"], &[]))], ..Rule::default() }])], Conn(ADMIN, "10.1.0.1", 80), true, Some("shop/a")),
        ("when source.principal notValues", vec![pol("shop", "a", Allow, &[], vec![Rule { when: vec![Condition::SourcePrincipal(principals(&[], &["cluster.local/ns/ops/sa/admin"]))], ..Rule::default() }])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        ("every when must hold", vec![pol("shop", "a", Allow, &[], vec![Rule { when: vec![Condition::SourceNamespace(namespaces(&["ops"], &[])), Condition::DestinationPort(Matcher::new(vec![22], vec![]))], ..Rule::default() }])], Conn(ADMIN, "10.1.0.1", 80), false, None),
        // L7-only fields.
        ("L7 rule in ALLOW never matches", vec![pol("shop", "a", Allow, &[], vec![l7(Rule::default(), "to.operation.methods")])], Conn(FRONT, "10.1.0.1", 80), false, None),
        ("L7 rule in ALLOW, L4 rule beside it still matches", vec![pol("shop", "a", Allow, &[], vec![l7(web(), "to.operation.paths"), ports(&[80], &[])])], Conn(FRONT, "10.1.0.1", 80), true, Some("shop/a")),
        ("L7 parts ignored in DENY (matches more)", vec![pol("shop", "d", Deny, &[], vec![l7(Rule::default(), "to.operation.methods")])], Conn(FRONT, "10.1.0.1", 80), false, Some("shop/d")),
        ("L7 in DENY keeps the L4 parts", vec![pol("shop", "d", Deny, &[], vec![l7(web(), "when request.headers[x]")])], Conn(ADMIN, "10.1.0.1", 80), true, None),
        ("dry-run policies are not enforced", vec![AuthorizationPolicy { dry_run: true, ..pol("shop", "d", Deny, &[], vec![Rule::default()]) }], Conn(FRONT, "10.1.0.1", 80), true, None),
        ("targetRef policies are for waypoints", vec![AuthorizationPolicy { targets_waypoint: true, ..pol("shop", "d", Deny, &[], vec![Rule::default()]) }], Conn(FRONT, "10.1.0.1", 80), true, None),
    ];
    for (name, policies, conn, allowed, policy) in cases {
        let v = check(&model(policies), &conn);
        assert_eq!(v.allowed, allowed, "{name}: {v:?}");
        assert_eq!(v.policy.as_deref(), policy, "{name}: {v:?}");
    }
}

#[test]
fn reasons() {
    let m = model(vec![]);
    assert_eq!(check(&m, &Conn(None, "10.1.0.1", 80)).reason, Reason::NoAllowPolicies);
    let m = model(vec![pol("shop", "a", Allow, &[], vec![ports(&[80], &[])])]);
    assert_eq!(check(&m, &Conn(None, "10.1.0.1", 80)).reason, Reason::Allowed);
    assert_eq!(check(&m, &Conn(None, "10.1.0.1", 81)).reason, Reason::NoAllowMatch);
    let m = model(vec![pol("shop", "d", Deny, &[], vec![Rule::default()])]);
    assert_eq!(check(&m, &Conn(None, "10.1.0.1", 80)).reason, Reason::Denied);
}
