//! Istio's `security.istio.io/v1` AuthorizationPolicy and PeerAuthentication as our own
//! serde types (Istio publishes no Rust crate), compiled into the model's L4 form.
//!
//! The shapes mirror `mesh::config`'s YAML reader so a policy means the same whether it
//! comes from the file or the cluster. Two differences come from the API server: ports
//! arrive as strings (the CRD's schema) and unknown fields are tolerated, because a newer
//! Istio may add fields and one new field must not blank out every policy in the cluster.

use std::collections::BTreeMap;

use kube::CustomResource;
use mesh::model::authz::{
    Condition, L4_CONDITION_KEYS, Matcher, Operation, Rule, ServiceAccountMatch, Source, StringMatch, parse_port,
};
use mesh::model::{
    Action, AuthorizationPolicy as ModelPolicy, IpNet, MeshSettings, MtlsMode, PeerAuthentication as ModelPeerAuth,
};
use serde::{Deserialize, Serialize};

/// Istio's annotation for a policy that is evaluated but not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(group = "security.istio.io", version = "v1", kind = "AuthorizationPolicy", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    #[serde(default)]
    pub from: Vec<FromSpec>,
    #[serde(default)]
    pub to: Vec<ToSpec>,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FromSpec {
    #[serde(default)]
    pub source: Option<SourceSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToSpec {
    #[serde(default)]
    pub operation: Option<OperationSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    #[serde(default)]
    pub ports: Vec<PortString>,
    #[serde(default)]
    pub not_ports: Vec<PortString>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A port as the API server stores it (a string), also read from a number because
/// hand-written objects often use one and older CRD versions allowed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortString {
    Text(String),
    Number(i64),
}

impl PortString {
    fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(group = "security.istio.io", version = "v1", kind = "PeerAuthentication", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
    /// Keys are port numbers; JSON object keys are strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MtlsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MtlsSpec {
    #[serde(default)]
    pub mode: Option<String>,
}

/// Istio `when` keys that need HTTP or JWT data: accepted and treated as L7, as the file
/// source does.
const L7_CONDITION_PREFIXES: &[&str] =
    &["request.headers[", "request.auth.", "request.experimental.", "remote.ip", "connection.sni", "experimental."];

/// Compiles a policy. The error text says what to fix; the caller names the object.
pub fn authorization_policy(
    mesh: &MeshSettings,
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
    annotations: &BTreeMap<String, String>,
) -> Result<ModelPolicy, String> {
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => Action::Custom,
        Some(other) => return Err(format!("unknown action {other:?}: use ALLOW, DENY, AUDIT or CUSTOM")),
    };
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        rules.push(rule(r, namespace, &mesh.trust_domain).map_err(|e| format!("rules[{i}]: {e}"))?);
    }
    Ok(ModelPolicy {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector: spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default(),
        action,
        rules,
        targets_waypoint: spec.target_ref.is_some() || !spec.target_refs.is_empty(),
        dry_run: annotations.get(DRY_RUN_ANNOTATION).is_some_and(|v| v == "true"),
    })
}

fn rule(r: &RuleSpec, namespace: &str, td: &str) -> Result<Rule, String> {
    let mut out = Rule::default();
    for f in &r.from {
        let s = f.source.as_ref().ok_or("a `from` entry has no `source`")?;
        out.from.push(source(s, namespace, td, &mut out.l7_fields)?);
    }
    for t in &r.to {
        let o = t.operation.as_ref().ok_or("a `to` entry has no `operation`")?;
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
            return Err("`to.operation` is empty: set ports, notPorts or another field".into());
        }
        out.to.push(Operation { ports: Matcher::new(ports(&o.ports)?, ports(&o.not_ports)?) });
    }
    for c in &r.when {
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(format!("condition {:?} needs `values` or `notValues`", c.key));
        }
        let cond = match c.key.as_str() {
            "source.ip" => Condition::SourceIp(values(c, ip_block)?),
            "destination.ip" => Condition::DestinationIp(values(c, ip_block)?),
            "source.namespace" => Condition::SourceNamespace(values(c, |s| lift(StringMatch::namespace(s)))?),
            "source.principal" => Condition::SourcePrincipal(values(c, |s| principal(s, td))?),
            "destination.port" => Condition::DestinationPort(values(c, |s| lift(parse_port(s)))?),
            k if L7_CONDITION_PREFIXES.iter().any(|p| k.starts_with(p)) => {
                out.l7_fields.push(format!("when {k}"));
                continue;
            }
            k => {
                return Err(format!("unknown condition key {k:?}: L4 keys are {}", L4_CONDITION_KEYS.join(", ")));
            }
        };
        out.when.push(cond);
    }
    Ok(out)
}

fn source(s: &SourceSpec, namespace: &str, td: &str, l7: &mut Vec<String>) -> Result<Source, String> {
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
    let principal = |s: &str| principal(s, td);
    let ns = |s: &str| lift(StringMatch::namespace(s));
    let sa = |s: &str| lift(ServiceAccountMatch::parse(s, namespace));
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
        // An empty source would silently match everyone; Istio refuses it too.
        return Err("`from.source` is empty: set principals, namespaces, ipBlocks or another field".into());
    }
    Ok(out)
}

fn values<T>(c: &ConditionSpec, f: impl Fn(&str) -> Result<T, String>) -> Result<Matcher<T>, String> {
    Ok(Matcher::new(all(&c.values, &f)?, all(&c.not_values, &f)?))
}

/// `cluster.local` in a principal means "this mesh's trust domain", as in Istio and the
/// file source.
fn principal(s: &str, td: &str) -> Result<StringMatch, String> {
    let m = lift(StringMatch::principal(s))?;
    let local = |l: &str| l.strip_prefix("cluster.local/").map(|rest| format!("{td}/{rest}"));
    Ok(match m {
        StringMatch::Exact(l) => StringMatch::Exact(local(&l).unwrap_or(l)),
        StringMatch::Prefix(l) => StringMatch::Prefix(local(&l).unwrap_or(l)),
        other => other,
    })
}

fn all<T>(v: &[String], f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    v.iter().map(|s| f(s)).collect()
}

fn lift<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn ip_block(s: &str) -> Result<IpNet, String> {
    lift(s.parse::<IpNet>())
}

fn ports(v: &[PortString]) -> Result<Vec<u16>, String> {
    v.iter().map(|p| lift(parse_port(&p.text()))).collect()
}

pub fn peer_authentication(
    namespace: &str,
    name: &str,
    spec: &PeerAuthenticationSpec,
) -> Result<ModelPeerAuth, String> {
    let mode = |m: Option<&MtlsSpec>| match m.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(MtlsMode::Unset),
        Some("DISABLE") => Ok(MtlsMode::Disable),
        Some("PERMISSIVE") => Ok(MtlsMode::Permissive),
        Some("STRICT") => Ok(MtlsMode::Strict),
        Some(other) => Err(format!("unknown mTLS mode {other:?}: use UNSET, DISABLE, PERMISSIVE or STRICT")),
    };
    let mut port_level = BTreeMap::new();
    for (port, m) in &spec.port_level_mtls {
        let p = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("portLevelMtls key {port:?} is not a port number (1-65535)"))?;
        port_level.insert(p, mode(Some(m))?);
    }
    let selector = spec.selector.as_ref().map(|s| s.match_labels.clone()).unwrap_or_default();
    if selector.is_empty() && !port_level.is_empty() {
        return Err("portLevelMtls needs a selector: Istio only allows port-level modes on workload policies".into());
    }
    Ok(ModelPeerAuth {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector,
        mode: mode(spec.mtls.as_ref())?,
        port_level,
        created: None,
    })
}
