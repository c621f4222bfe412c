//! Istio's `security.istio.io/v1` AuthorizationPolicy and PeerAuthentication, in exactly
//! Istio's YAML shape, compiled into the model's L4 form.
//!
//! L7-only fields are accepted (so Istio YAML pastes in unchanged) and recorded by name on
//! the rule; the model decides what they mean at L4 (see `model::authz`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::Problem;
use super::document::PortValue;
use crate::model::authz::{
    Condition, L4_CONDITION_KEYS, Matcher, Operation, Rule, ServiceAccountMatch, Source, StringMatch, parse_port,
};
use crate::model::{Action, AuthorizationPolicy, IpNet, MeshSettings, MtlsMode, PeerAuthentication};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub target_ref: Option<IgnoredAny>,
    #[serde(default)]
    pub target_refs: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub action: Option<Spanned<ActionSpec>>,
    /// CUSTOM's external authorizer; accepted, not used.
    #[serde(default, rename = "provider")]
    _provider: Option<IgnoredAny>,
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSpec>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ActionSpec {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    #[serde(default)]
    pub from: Vec<Spanned<FromSpec>>,
    #[serde(default)]
    pub to: Vec<Spanned<ToSpec>>,
    #[serde(default)]
    pub when: Vec<Spanned<ConditionSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FromSpec {
    #[serde(default)]
    pub source: Option<SourceSpec>,
}

type Strings = Vec<Spanned<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SourceSpec {
    #[serde(default)]
    principals: Strings,
    #[serde(default)]
    not_principals: Strings,
    #[serde(default)]
    namespaces: Strings,
    #[serde(default)]
    not_namespaces: Strings,
    #[serde(default)]
    service_accounts: Strings,
    #[serde(default)]
    not_service_accounts: Strings,
    #[serde(default)]
    ip_blocks: Strings,
    #[serde(default)]
    not_ip_blocks: Strings,
    // L7 (or "needs a proxy that sees HTTP") fields.
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToSpec {
    #[serde(default)]
    pub operation: Option<OperationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct OperationSpec {
    #[serde(default)]
    ports: Vec<Spanned<PortValue>>,
    #[serde(default)]
    not_ports: Vec<Spanned<PortValue>>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ConditionSpec {
    key: Spanned<String>,
    #[serde(default)]
    values: Strings,
    #[serde(default)]
    not_values: Strings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MtlsSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtlsSpec {
    #[serde(default)]
    mode: Option<ModeSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ModeSpec {
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// Istio `when` keys that need HTTP or JWT data, accepted and treated as L7.
const L7_CONDITION_PREFIXES: &[&str] =
    &["request.headers[", "request.auth.", "request.experimental.", "remote.ip", "connection.sni", "experimental."];

pub(crate) fn authorization_policy(
    mesh: &MeshSettings,
    namespace: &str,
    name: &str,
    spec: Option<&AuthorizationPolicySpec>,
) -> Result<AuthorizationPolicy, Problem> {
    let mut p = AuthorizationPolicy {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector: BTreeMap::new(),
        action: Action::Allow,
        rules: Vec::new(),
        targets_waypoint: false,
        dry_run: false,
    };
    // `spec` absent or `{}`: an ALLOW policy without rules, i.e. deny all (as in Istio).
    let Some(spec) = spec else { return Ok(p) };
    p.selector = spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default();
    p.targets_waypoint = spec.target_ref.is_some() || spec.target_refs.as_ref().is_some_and(|t| !t.is_empty());
    p.action = match spec.action.as_ref().map(|a| a.value) {
        None | Some(ActionSpec::Allow) => Action::Allow,
        Some(ActionSpec::Deny) => Action::Deny,
        Some(ActionSpec::Audit) => Action::Audit,
        Some(ActionSpec::Custom) => Action::Custom,
    };
    for r in &spec.rules {
        p.rules.push(rule(&r.value, namespace, &mesh.trust_domain)?);
    }
    Ok(p)
}

fn rule(r: &RuleSpec, namespace: &str, td: &str) -> Result<Rule, Problem> {
    let mut out = Rule::default();
    for f in &r.from {
        let Some(s) = f.value.source.as_ref() else {
            return Err(Problem::at(f, "`from` entry has no `source`: write `- source: {...}`".into()));
        };
        out.from.push(source(s, namespace, td, &mut out.l7_fields).map_err(|e| e.or_at(f))?);
    }
    for t in &r.to {
        let Some(o) = t.value.operation.as_ref() else {
            return Err(Problem::at(t, "`to` entry has no `operation`: write `- operation: {...}`".into()));
        };
        let l7 = [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ];
        let mut any = !o.ports.is_empty() || !o.not_ports.is_empty();
        for (field, v) in l7 {
            if !v.is_empty() {
                any = true;
                out.l7_fields.push(format!("to.operation.{field}"));
            }
        }
        if !any {
            return Err(Problem::at(t, "`to.operation` is empty: set ports, notPorts or another field".into()));
        }
        out.to.push(Operation { ports: Matcher::new(ports(&o.ports)?, ports(&o.not_ports)?) });
    }
    for c in &r.when {
        let c = &c.value;
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(Problem::at(&c.key, format!("condition {:?} needs `values` or `notValues`", c.key.value)));
        }
        let key = c.key.value.as_str();
        let cond = match key {
            "source.ip" => Condition::SourceIp(values(c, ip_block)?),
            "destination.ip" => Condition::DestinationIp(values(c, ip_block)?),
            "source.namespace" => Condition::SourceNamespace(values(c, |s| lift(s, StringMatch::namespace(&s.value)))?),
            "source.principal" => Condition::SourcePrincipal(values(c, |s| principal(s, td))?),
            "destination.port" => Condition::DestinationPort(values(c, |s| lift(s, parse_port(&s.value)))?),
            k if L7_CONDITION_PREFIXES.iter().any(|p| k.starts_with(p)) => {
                out.l7_fields.push(format!("when {k}"));
                continue;
            }
            k => {
                return Err(Problem::at(
                    &c.key,
                    format!(
                        "unknown condition key {k:?}: L4 keys are {}; L7 keys (request.headers[…], request.auth.…) are accepted but not evaluated",
                        L4_CONDITION_KEYS.join(", ")
                    ),
                ));
            }
        };
        debug_assert!(L4_CONDITION_KEYS.contains(&key));
        out.when.push(cond);
    }
    Ok(out)
}

fn source(s: &SourceSpec, namespace: &str, td: &str, l7: &mut Vec<String>) -> Result<Source, Problem> {
    let l7_lists = [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    let mut any = false;
    for (field, v) in l7_lists {
        if !v.is_empty() {
            any = true;
            l7.push(format!("from.source.{field}"));
        }
    }
    let principal = |s: &Spanned<String>| principal(s, td);
    let ns = |s: &Spanned<String>| lift(s, StringMatch::namespace(&s.value));
    let sa = |s: &Spanned<String>| lift(s, ServiceAccountMatch::parse(&s.value, namespace));
    let out = Source {
        principals: Matcher::new(all(&s.principals, principal)?, all(&s.not_principals, principal)?),
        namespaces: Matcher::new(all(&s.namespaces, ns)?, all(&s.not_namespaces, ns)?),
        service_accounts: Matcher::new(all(&s.service_accounts, sa)?, all(&s.not_service_accounts, sa)?),
        ip_blocks: Matcher::new(all(&s.ip_blocks, ip_block)?, all(&s.not_ip_blocks, ip_block)?),
    };
    let l4_any = !(out.principals.is_empty()
        && out.namespaces.is_empty()
        && out.service_accounts.is_empty()
        && out.ip_blocks.is_empty());
    if !any && !l4_any {
        // Istio rejects this too: an empty source would silently match everyone.
        return Err(Problem::unlocated(
            "`from.source` is empty: set principals, namespaces, ipBlocks or another field",
        ));
    }
    Ok(out)
}

fn values<T>(c: &ConditionSpec, f: impl Fn(&Spanned<String>) -> Result<T, Problem>) -> Result<Matcher<T>, Problem> {
    Ok(Matcher::new(all(&c.values, &f)?, all(&c.not_values, &f)?))
}

/// Istio reads the trust domain `cluster.local` in a principal as "this mesh's trust
/// domain", so policies written for the default keep working under another one.
fn principal(s: &Spanned<String>, td: &str) -> Result<StringMatch, Problem> {
    let m = lift(s, StringMatch::principal(&s.value))?;
    let local = |l: &str| l.strip_prefix("cluster.local/").map(|rest| format!("{td}/{rest}"));
    Ok(match m {
        StringMatch::Exact(l) => StringMatch::Exact(local(&l).unwrap_or(l)),
        StringMatch::Prefix(l) => StringMatch::Prefix(local(&l).unwrap_or(l)),
        other => other,
    })
}

fn all<T>(v: &[Spanned<String>], f: impl Fn(&Spanned<String>) -> Result<T, Problem>) -> Result<Vec<T>, Problem> {
    v.iter().map(f).collect()
}

fn lift<T, E: std::fmt::Display>(s: &Spanned<String>, r: Result<T, E>) -> Result<T, Problem> {
    r.map_err(|e| Problem::at(s, e.to_string()))
}

fn ip_block(s: &Spanned<String>) -> Result<IpNet, Problem> {
    lift(s, s.value.parse::<IpNet>())
}

fn ports(v: &[Spanned<PortValue>]) -> Result<Vec<u16>, Problem> {
    v.iter().map(|p| parse_port(&p.value.0).map_err(|e| Problem::at(p, e.to_string()))).collect()
}

pub(crate) fn peer_authentication(
    namespace: &str,
    name: &Spanned<String>,
    spec: Option<&PeerAuthenticationSpec>,
) -> Result<PeerAuthentication, Problem> {
    let mode = |m: Option<&MtlsSpec>| match m.and_then(|m| m.mode) {
        None | Some(ModeSpec::Unset) => MtlsMode::Unset,
        Some(ModeSpec::Disable) => MtlsMode::Disable,
        Some(ModeSpec::Permissive) => MtlsMode::Permissive,
        Some(ModeSpec::Strict) => MtlsMode::Strict,
    };
    let mut p = PeerAuthentication {
        name: name.value.clone(),
        namespace: namespace.to_owned(),
        selector: BTreeMap::new(),
        mode: MtlsMode::Unset,
        port_level: BTreeMap::new(),
        created: None,
    };
    let Some(spec) = spec else { return Ok(p) };
    p.selector = spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default();
    p.mode = mode(spec.mtls.as_ref());
    for (&port, m) in &spec.port_level_mtls {
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| Problem::at(name, format!("portLevelMtls port {port} is not a port number (1-65535)")))?;
        p.port_level.insert(port, mode(Some(m)));
    }
    Ok(p)
}
