//! AuthorizationPolicy: one translation of the spec into [`Authorization`], which holds the
//! node agent's L4 reading (`model::AuthorizationPolicy`, L7-only fields recorded by name)
//! and, rule for rule, the HTTP reading a waypoint enforces (hosts, methods, paths, header
//! conditions), with the policy's selector and `targetRef(s)`.
//!
//! Refused for every consumer, as Istio refuses them, because in an ALLOW they would
//! match every caller: a `from` entry without `source`, an empty `source`, a `to` entry
//! without `operation`, an empty `operation`, a `when` condition with neither `values` nor
//! `notValues`. Also refused: unknown fields and `when` keys, `spiffe://` in principals,
//! malformed values. Errors name the field path and say how to fix it.

mod spec;

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

pub use self::spec::{AuthorizationPolicySpec, ConditionSpec, OperationSpec, RuleSpec, SourceSpec, TargetRef};
use super::{DRY_RUN_ANNOTATION, PortValue, SpecError, match_labels};
use crate::model::authz::{
    Condition, L4_CONDITION_KEYS, Matcher, Operation, Rule, ServiceAccountMatch, Source, StringMatch, parse_port,
};
use crate::model::{Action, AuthorizationPolicy, IpNet, MeshSettings};

/// `when` keys that need HTTP or JWT data: accepted, evaluated only by a waypoint (the ones
/// it knows), recorded as L7 fields for the node agent.
const L7_CONDITION_PREFIXES: &[&str] =
    &["request.headers[", "request.auth.", "request.experimental.", "remote.ip", "connection.sni", "experimental."];
/// Pillion's waypoint also takes these two (the same as `to.operation.methods/paths`).
const L7_CONDITION_KEYS: &[&str] = &["request.method", "request.url_path"];

/// A policy as every consumer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The L4 reading the node agent enforces; `targets_waypoint` and `dry_run` included.
    pub policy: AuthorizationPolicy,
    /// `targetRef` then `targetRefs`.
    pub target_refs: Vec<TargetRef>,
    /// The HTTP reading of each rule, index for index with `policy.rules`.
    pub http_rules: Vec<HttpRule>,
}

/// A rule as a waypoint sees it: the same entries as the L4 rule, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRule {
    pub from: Vec<HttpSource>,
    pub to: Vec<HttpOperation>,
    pub when: Vec<HttpCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpSource {
    pub principals: Matcher<StringMatch>,
    pub namespaces: Matcher<StringMatch>,
    /// The other `source` fields set (`ipBlocks`, `serviceAccounts`, `requestPrincipals`…),
    /// by name: a waypoint that cannot evaluate them refuses the rule.
    pub other_fields: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpOperation {
    /// Lower-case: hosts are compared without regard to case.
    pub hosts: Matcher<StringMatch>,
    pub ports: Matcher<u16>,
    pub methods: Matcher<StringMatch>,
    pub paths: Matcher<StringMatch>,
}

/// A `when` condition on any accepted key, its values read as Istio's string matches
/// (principals and namespaces checked and resolved as in the L4 reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCondition {
    pub key: String,
    pub values: Matcher<StringMatch>,
}

/// Compiles a policy. `spec` absent or `{}` is an ALLOW policy without rules: deny all,
/// as in Istio.
pub fn compile(
    mesh: &MeshSettings,
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    spec: Option<&AuthorizationPolicySpec>,
) -> Result<Authorization, SpecError> {
    let empty = AuthorizationPolicySpec::default();
    let spec = spec.unwrap_or(&empty);
    let action = match spec.action.as_ref() {
        None => Action::Allow,
        Some(a) => match a.value.as_str() {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            other => {
                return Err(SpecError::at(a, format!("unknown action {other:?}: use ALLOW, DENY, AUDIT or CUSTOM")));
            }
        },
    };
    let target_refs: Vec<TargetRef> =
        spec.target_ref.iter().chain(&spec.target_refs).map(|t| t.value.clone()).collect();
    let mut rules = Vec::with_capacity(spec.rules.len());
    let mut http_rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        let (l4, http) =
            rule(&r.value, &format!("rules[{i}]"), namespace, &mesh.trust_domain).map_err(|e| e.or_at(r))?;
        rules.push(l4);
        http_rules.push(http);
    }
    Ok(Authorization {
        policy: AuthorizationPolicy {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            selector: match_labels(spec.selector.as_ref()),
            action,
            rules,
            targets_waypoint: !target_refs.is_empty(),
            dry_run: annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v == "true"),
        },
        target_refs,
        http_rules,
    })
}

/// `targetRef(s)` read on their own from a raw spec, so that a policy whose rules are bad
/// can still be enforced as deny-all where it applies. `None`: present but unreadable.
pub fn raw_target_refs(spec: &serde_json::Value) -> Option<Vec<TargetRef>> {
    let mut refs = Vec::new();
    if let Some(one) = spec.get("targetRef") {
        refs.push(serde_json::from_value(one.clone()).ok()?);
    }
    if let Some(many) = spec.get("targetRefs") {
        refs.extend(serde_json::from_value::<Vec<TargetRef>>(many.clone()).ok()?);
    }
    Some(refs)
}

fn rule(r: &RuleSpec, path: &str, namespace: &str, td: &str) -> Result<(Rule, HttpRule), SpecError> {
    let mut out = Rule::default();
    let mut http = HttpRule::default();
    for (j, f) in r.from.iter().enumerate() {
        let here = format!("{path}.from[{j}]");
        let Some(s) = f.value.source.as_ref() else {
            return Err(SpecError::at(
                f,
                format!("{here} has no `source`: write `- source: {{principals: [...]}}` or remove the entry"),
            ));
        };
        let (l4, h) = source(s, &here, namespace, td, &mut out.l7_fields).map_err(|e| e.or_at(f))?;
        out.from.push(l4);
        http.from.push(h);
    }
    for (j, t) in r.to.iter().enumerate() {
        let here = format!("{path}.to[{j}]");
        let Some(o) = t.value.operation.as_ref() else {
            return Err(SpecError::at(
                t,
                format!("{here} has no `operation`: write `- operation: {{ports: [...]}}` or remove the entry"),
            ));
        };
        let (l4, h) = operation(o, &here, &mut out.l7_fields).map_err(|e| e.or_at(t))?;
        out.to.push(l4);
        http.to.push(h);
    }
    for (j, c) in r.when.iter().enumerate() {
        let here = format!("{path}.when[{j}]");
        let (l4, h) = condition(&c.value, &here, td, &mut out.l7_fields).map_err(|e| e.or_at(c))?;
        out.when.extend(l4);
        http.when.push(h);
    }
    Ok((out, http))
}

fn source(
    s: &SourceSpec,
    path: &str,
    namespace: &str,
    td: &str,
    l7: &mut Vec<String>,
) -> Result<(Source, HttpSource), SpecError> {
    let mut other_fields = Vec::new();
    let l4_only = [
        ("serviceAccounts", s.service_accounts.len()),
        ("notServiceAccounts", s.not_service_accounts.len()),
        ("ipBlocks", s.ip_blocks.len()),
        ("notIpBlocks", s.not_ip_blocks.len()),
    ];
    other_fields.extend(l4_only.iter().filter(|(_, n)| *n > 0).map(|(f, _)| *f));
    let l7_lists = [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    for (field, v) in l7_lists {
        if !v.is_empty() {
            other_fields.push(field);
            l7.push(format!("from.source.{field}"));
        }
    }
    let field = |f: &str| format!("{path}.source.{f}");
    let principal = |f: &'static str| move |s: &Spanned<String>| principal(s, td, &field(f));
    let ns = |f: &'static str| move |s: &Spanned<String>| lift(s, &field(f), StringMatch::namespace(&s.value));
    let sa = |f: &'static str| {
        move |s: &Spanned<String>| lift(s, &field(f), ServiceAccountMatch::parse(&s.value, namespace))
    };
    let ip = |f: &'static str| move |s: &Spanned<String>| lift(s, &field(f), s.value.parse::<IpNet>());
    let l4 = Source {
        principals: Matcher::new(
            all(&s.principals, principal("principals"))?,
            all(&s.not_principals, principal("notPrincipals"))?,
        ),
        namespaces: Matcher::new(all(&s.namespaces, ns("namespaces"))?, all(&s.not_namespaces, ns("notNamespaces"))?),
        service_accounts: Matcher::new(
            all(&s.service_accounts, sa("serviceAccounts"))?,
            all(&s.not_service_accounts, sa("notServiceAccounts"))?,
        ),
        ip_blocks: Matcher::new(all(&s.ip_blocks, ip("ipBlocks"))?, all(&s.not_ip_blocks, ip("notIpBlocks"))?),
    };
    if other_fields.is_empty() && l4.principals.is_empty() && l4.namespaces.is_empty() {
        return Err(SpecError::new(format!(
            "{path}: `from.source` is empty, so it would match every caller: set principals, namespaces, ipBlocks or another field"
        )));
    }
    let http = HttpSource { principals: l4.principals.clone(), namespaces: l4.namespaces.clone(), other_fields };
    Ok((l4, http))
}

fn operation(o: &OperationSpec, path: &str, l7: &mut Vec<String>) -> Result<(Operation, HttpOperation), SpecError> {
    let l7_lists = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    let mut any = !o.ports.is_empty() || !o.not_ports.is_empty();
    for (field, v) in l7_lists {
        if !v.is_empty() {
            any = true;
            l7.push(format!("to.operation.{field}"));
        }
    }
    if !any {
        return Err(SpecError::new(format!(
            "{path}: `to.operation` is empty, so it would match every request: set ports, notPorts, hosts, methods or paths"
        )));
    }
    let ports = |v: &[Spanned<PortValue>], f: &str| -> Result<Vec<u16>, SpecError> {
        v.iter().map(|p| lift(p, &format!("{path}.operation.{f}"), parse_port(&p.value.0))).collect()
    };
    let ports = Matcher::new(ports(&o.ports, "ports")?, ports(&o.not_ports, "notPorts")?);
    let lower = |v: &[String]| v.iter().map(|s| StringMatch::value(&s.to_ascii_lowercase())).collect();
    let http = HttpOperation {
        hosts: Matcher::new(lower(&o.hosts), lower(&o.not_hosts)),
        ports: ports.clone(),
        methods: values(&o.methods, &o.not_methods),
        paths: values(&o.paths, &o.not_paths),
    };
    Ok((Operation { ports }, http))
}

fn condition(
    c: &ConditionSpec,
    path: &str,
    td: &str,
    l7: &mut Vec<String>,
) -> Result<(Option<Condition>, HttpCondition), SpecError> {
    let key = c.key.value.as_str();
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(SpecError::at(
            &c.key,
            format!("{path}: condition {key:?} needs `values` or `notValues`: without them it would match everything"),
        ));
    }
    let field = format!("{path}.values");
    let both = |f: &dyn Fn(&Spanned<String>) -> Result<StringMatch, SpecError>| -> Result<_, SpecError> {
        Ok(Matcher::new(all(&c.values, f)?, all(&c.not_values, f)?))
    };
    let plain = || {
        Matcher::new(
            c.values.iter().map(|v| StringMatch::value(&v.value)).collect(),
            c.not_values.iter().map(|v| StringMatch::value(&v.value)).collect(),
        )
    };
    let ip = |s: &Spanned<String>| lift(s, &field, s.value.parse::<IpNet>());
    let port = |s: &Spanned<String>| lift(s, &field, parse_port(&s.value));
    let l4_values = |f: &dyn Fn(&Spanned<String>) -> Result<IpNet, SpecError>| -> Result<_, SpecError> {
        Ok(Matcher::new(all(&c.values, f)?, all(&c.not_values, f)?))
    };
    let (l4, values) = match key {
        "source.ip" => (Some(Condition::SourceIp(l4_values(&ip)?)), plain()),
        "destination.ip" => (Some(Condition::DestinationIp(l4_values(&ip)?)), plain()),
        "destination.port" => {
            let m = Matcher::new(all(&c.values, port)?, all(&c.not_values, port)?);
            (Some(Condition::DestinationPort(m)), plain())
        }
        "source.namespace" => {
            let m = both(&|s| lift(s, &field, StringMatch::namespace(&s.value)))?;
            (Some(Condition::SourceNamespace(m.clone())), m)
        }
        "source.principal" => {
            let m = both(&|s| principal(s, td, &field))?;
            (Some(Condition::SourcePrincipal(m.clone())), m)
        }
        k if L7_CONDITION_KEYS.contains(&k) || L7_CONDITION_PREFIXES.iter().any(|p| k.starts_with(p)) => {
            l7.push(format!("when {k}"));
            (None, plain())
        }
        k => {
            return Err(SpecError::at(
                &c.key,
                format!(
                    "{path}: unknown condition key {k:?}: L4 keys are {}; L7 keys are request.headers[<name>], request.method, request.url_path, request.auth.…",
                    L4_CONDITION_KEYS.join(", ")
                ),
            ));
        }
    };
    Ok((l4, HttpCondition { key: key.to_owned(), values }))
}

fn values(v: &[String], not: &[String]) -> Matcher<StringMatch> {
    Matcher::new(v.iter().map(|s| StringMatch::value(s)).collect(), not.iter().map(|s| StringMatch::value(s)).collect())
}

/// Istio reads the trust domain `cluster.local` in a principal as "this mesh's trust
/// domain", so policies written for the default keep working under another one.
fn principal(s: &Spanned<String>, td: &str, field: &str) -> Result<StringMatch, SpecError> {
    let m = lift(s, field, StringMatch::principal(&s.value))?;
    let local = |l: &str| l.strip_prefix("cluster.local/").map(|rest| format!("{td}/{rest}"));
    Ok(match m {
        StringMatch::Exact(l) => StringMatch::Exact(local(&l).unwrap_or(l)),
        StringMatch::Prefix(l) => StringMatch::Prefix(local(&l).unwrap_or(l)),
        other => other,
    })
}

fn all<T>(v: &[Spanned<String>], f: impl Fn(&Spanned<String>) -> Result<T, SpecError>) -> Result<Vec<T>, SpecError> {
    v.iter().map(f).collect()
}

fn lift<S, T, E: std::fmt::Display>(s: &Spanned<S>, field: &str, r: Result<T, E>) -> Result<T, SpecError> {
    r.map_err(|e| SpecError::at(s, format!("{field}: {e}")))
}
