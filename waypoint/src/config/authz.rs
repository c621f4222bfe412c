//! The L7 reading of Istio `AuthorizationPolicy`: only policies with `targetRef(s)` (kind
//! `Gateway` for the waypoint, or `Service`) bind to a waypoint; selector-based ones are the
//! node agent's. The L4 fields were already checked by the model's loader.
//!
//! Unknown fields are refused, not skipped: a matcher the waypoint does not know, dropped
//! from an ALLOW rule, would let through what it was meant to keep out. (From the API
//! server such a policy becomes deny-all on its targets; see `objects.rs`.)

use serde::Deserialize;

use super::Problem;
use super::document::Object;
use super::traffic::TargetRef;
use crate::authz::{ConditionKey, L7Condition, L7Operation, L7Policy, L7Rule, L7Source, PolicyTarget, wildcard};
use mesh::model::Action;
use mesh::model::authz::{Matcher, StringMatch};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    // Read elsewhere (`targets`) or by others (the node agent, an external authorizer).
    #[serde(default, rename = "targetRef")]
    _target_ref: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "targetRefs")]
    _target_refs: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "selector")]
    _selector: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "provider")]
    _provider: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    from: Vec<FromSpec>,
    #[serde(default)]
    to: Vec<ToSpec>,
    #[serde(default)]
    when: Vec<WhenSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FromSpec {
    #[serde(default)]
    source: Option<SourceSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SourceSpec {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    /// Every other field, read only to refuse it: the ones the model knows but the
    /// waypoint cannot evaluate (it sees the caller's identity, not its address or JWT)
    /// with a message saying so. (`flatten` and `deny_unknown_fields` do not combine.)
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `source` fields the model knows and the waypoint does not evaluate.
const UNEVALUATED_SOURCE_FIELDS: &[&str] = &[
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "requestPrincipals",
    "notRequestPrincipals",
    "serviceAccounts",
    "notServiceAccounts",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ToSpec {
    #[serde(default)]
    operation: Option<OperationSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperationSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<serde_json::Value>,
    #[serde(default)]
    not_ports: Vec<serde_json::Value>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WhenSpec {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

fn strings(v: &[String], not: &[String]) -> Matcher<StringMatch> {
    Matcher::new(v.iter().map(|s| wildcard(s)).collect(), not.iter().map(|s| wildcard(s)).collect())
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

fn port(v: &serde_json::Value) -> Result<u16, String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.parse().map_err(|_| format!("{s:?} is not a port number"))
}

/// What a policy binds to in a waypoint, read on its own so that a policy whose rules are
/// bad can still be enforced as deny-all where it applies. `None`: `targetRef(s)` is there
/// but cannot be read.
pub(super) fn targets(spec: &serde_json::Value) -> Option<Vec<PolicyTarget>> {
    let mut refs: Vec<TargetRef> = Vec::new();
    if let Some(one) = spec.get("targetRef") {
        refs.push(serde_json::from_value(one.clone()).ok()?);
    }
    if let Some(many) = spec.get("targetRefs") {
        refs.extend(serde_json::from_value::<Vec<TargetRef>>(many.clone()).ok()?);
    }
    Some(
        refs.iter()
            .filter_map(|t| match t.kind.as_str() {
                "Gateway" => Some(PolicyTarget::Waypoint(t.name.clone())),
                "Service" if t.group.as_deref().unwrap_or("").is_empty() => Some(PolicyTarget::Service(t.name.clone())),
                _ => None,
            })
            .collect(),
    )
}

/// `None` when the policy does not bind to a waypoint or Service.
pub(super) fn policy(o: &Object<'_>) -> Result<Option<L7Policy>, Problem> {
    let targets = targets(o.spec).ok_or_else(|| o.problem("targetRef/targetRefs: each needs `kind` and `name`"))?;
    let spec: Spec = if o.spec.is_null() { Spec::default() } else { o.spec()? };
    if targets.is_empty() {
        return Ok(None);
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        // CUSTOM delegates the decision to an external authorizer the waypoint does not
        // have: skipping it would let through what it was written to judge. Refused, which
        // from the API server means deny-all on its targets (`objects.rs`).
        "CUSTOM" => {
            return Err(o.problem(
                "action CUSTOM (an external authorizer) is not supported by the waypoint: the policy is refused; use ALLOW/DENY rules",
            ));
        }
        // AUDIT never changes a decision in Istio (it only marks requests for an audit
        // sink), so not enforcing it opens nothing; it is reported at every load.
        "AUDIT" => {
            tracing::warn!(policy = %format!("{}/{}", o.namespace, o.name), "AUDIT AuthorizationPolicy is not supported by the waypoint: no audit records are written");
            return Ok(None);
        }
        other => return Err(o.problem(format!("unknown action {other:?}: use ALLOW, DENY, AUDIT or CUSTOM"))),
    };
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = |m: String| o.problem(format!("rules[{i}]: {m}"));
        // Istio refuses parts that are present but say nothing: in an ALLOW they would match
        // every caller (`from: [{}]`, `source: {}`, `operation: {}`, a `when` without values).
        let mut from = Vec::new();
        for (j, f) in r.from.iter().enumerate() {
            let Some(s) = &f.source else {
                return Err(at(format!("from[{j}] has no `source`: give it principals or namespaces, or remove it")));
            };
            if s.principals.is_empty()
                && s.not_principals.is_empty()
                && s.namespaces.is_empty()
                && s.not_namespaces.is_empty()
                && s.other.is_empty()
            {
                return Err(at(format!("from[{j}].source is empty: it would match every caller")));
            }
            if let Some(field) = UNEVALUATED_SOURCE_FIELDS.iter().find(|f| s.other.contains_key(**f)) {
                return Err(at(format!(
                    "source.{field} is not evaluated by the waypoint (it sees the caller's identity, not its address or JWT): use principals or namespaces here, or a selector policy enforced by the node agent"
                )));
            }
            if let Some(field) = s.other.keys().next() {
                return Err(at(format!(
                    "unknown field `source.{field}`: expected principals, notPrincipals, namespaces or notNamespaces"
                )));
            }
            // Istio principals omit the scheme; identities are compared the same way.
            from.push(L7Source {
                principals: strings(&s.principals, &s.not_principals),
                namespaces: strings(&s.namespaces, &s.not_namespaces),
            });
        }
        let mut to = Vec::new();
        for (j, t) in r.to.iter().enumerate() {
            let Some(op) = &t.operation else {
                return Err(at(format!(
                    "to[{j}] has no `operation`: give it hosts, ports, methods or paths, or remove it"
                )));
            };
            let fields = [&op.hosts, &op.not_hosts, &op.methods, &op.not_methods, &op.paths, &op.not_paths];
            if fields.iter().all(|f| f.is_empty()) && op.ports.is_empty() && op.not_ports.is_empty() {
                return Err(at(format!("to[{j}].operation is empty: it would match every request")));
            }
            let ports = op.ports.iter().map(port).collect::<Result<_, _>>().map_err(&at)?;
            let not_ports = op.not_ports.iter().map(port).collect::<Result<_, _>>().map_err(&at)?;
            to.push(L7Operation {
                // Requests' hosts are compared lower-case and without a port (`normalize`).
                hosts: strings(&lower(&op.hosts), &lower(&op.not_hosts)),
                ports: Matcher::new(ports, not_ports),
                methods: strings(&op.methods, &op.not_methods),
                paths: strings(&op.paths, &op.not_paths),
            });
        }
        let mut when = Vec::new();
        for w in &r.when {
            if w.values.is_empty() && w.not_values.is_empty() {
                return Err(at(format!("condition {:?} has neither values nor notValues", w.key)));
            }
            let key = match w.key.as_str() {
                "source.principal" => ConditionKey::SourcePrincipal,
                "source.namespace" => ConditionKey::SourceNamespace,
                "request.method" => ConditionKey::RequestMethod,
                "request.url_path" => ConditionKey::RequestPath,
                k => match k.strip_prefix("request.headers[").and_then(|h| h.strip_suffix(']')) {
                    Some(h) => ConditionKey::Header(
                        http::HeaderName::try_from(h).map_err(|_| at(format!("{h:?} is not a header name")))?,
                    ),
                    None => {
                        return Err(at(format!(
                            "condition key {k:?} is not evaluated by the waypoint: use request.headers[<name>], request.method, request.url_path, source.principal or source.namespace"
                        )));
                    }
                },
            };
            when.push(L7Condition { key, values: strings(&w.values, &w.not_values) });
        }
        rules.push(L7Rule { from, to, when });
    }
    Ok(Some(L7Policy {
        name: o.name.to_owned(),
        namespace: o.namespace.to_owned(),
        action,
        targets,
        rules,
        dry_run: o.annotations.get("istio.io/dry-run").is_some_and(|v| v == "true"),
    }))
}
