//! The waypoint's part of Istio `AuthorizationPolicy`: only policies with `targetRef(s)`
//! (kind `Gateway` for the waypoint, or `Service`) bind to a waypoint; selector-based ones
//! are the node agent's. The spec is read by `mesh::istio::authorization`, the one reader
//! the node agent's sources use too; this file only decides what the waypoint can enforce.
//!
//! Refused, not skipped, because dropping a matcher from an ALLOW rule would let through
//! what it was meant to keep out: CUSTOM, `source` fields other than principals and
//! namespaces, and `when` keys the waypoint does not evaluate. (From the API server such a
//! policy becomes deny-all on its targets; see `objects.rs`.)

use mesh::istio::authorization::{self, HttpRule, TargetRef};
use mesh::istio::{SpecError, decode};
use mesh::model::{Action, MeshSettings};

use super::Problem;
use super::document::Object;
use crate::authz::{ConditionKey, L7Condition, L7Operation, L7Policy, L7Rule, L7Source, PolicyTarget};

/// The waypoint's targets among `refs`: Gateways (waypoints) and core Services.
fn policy_targets(refs: &[TargetRef]) -> Vec<PolicyTarget> {
    refs.iter()
        .filter_map(|t| match t.kind.as_str() {
            "Gateway" => Some(PolicyTarget::Waypoint(t.name.clone())),
            "Service" if t.group.as_deref().unwrap_or("").is_empty() => Some(PolicyTarget::Service(t.name.clone())),
            _ => None,
        })
        .collect()
}

/// What a policy binds to in a waypoint, read on its own so that a policy whose rules are
/// bad can still be enforced as deny-all where it applies. `None`: `targetRef(s)` is there
/// but cannot be read.
pub(super) fn targets(spec: &serde_json::Value) -> Option<Vec<PolicyTarget>> {
    authorization::raw_target_refs(spec).map(|refs| policy_targets(&refs))
}

/// `None` when the policy does not bind to a waypoint or Service.
pub(super) fn policy(o: &Object<'_>, trust_domain: &str) -> Result<Option<L7Policy>, Problem> {
    // Selector policies are the node agent's, whatever else they hold.
    if targets(o.spec).ok_or_else(|| o.problem("targetRef/targetRefs: each needs `kind` and `name`"))?.is_empty() {
        return Ok(None);
    }
    let fail = |e: SpecError| o.problem(e.message());
    let spec = decode::<authorization::AuthorizationPolicySpec>(o.spec).map_err(fail)?;
    // The mesh's trust domain: Istio reads `cluster.local/…` principals as this mesh's, and
    // peers' principals arrive in it (a DENY compiled for the wrong one would never match).
    let mesh = MeshSettings { trust_domain: trust_domain.to_owned(), ..MeshSettings::default() };
    let compiled = authorization::compile(&mesh, o.namespace, o.name, o.annotations, spec.as_ref()).map_err(fail)?;
    let action = match compiled.policy.action {
        a @ (Action::Allow | Action::Deny) => a,
        // CUSTOM delegates the decision to an external authorizer the waypoint does not
        // have: skipping it would let through what it was written to judge. Refused, which
        // from the API server means deny-all on its targets (`objects.rs`).
        Action::Custom => {
            return Err(o.problem(
                "action CUSTOM (an external authorizer) is not supported by the waypoint: the policy is refused; use ALLOW/DENY rules",
            ));
        }
        // AUDIT never changes a decision in Istio (it only marks requests for an audit
        // sink), so not enforcing it opens nothing; it is reported at every load.
        Action::Audit => {
            tracing::warn!(policy = %format!("{}/{}", o.namespace, o.name), "AUDIT AuthorizationPolicy is not supported by the waypoint: no audit records are written");
            return Ok(None);
        }
    };
    let rules = compiled
        .http_rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r).map_err(|m| o.problem(format!("rules[{i}]: {m}"))))
        .collect::<Result<_, _>>()?;
    Ok(Some(L7Policy {
        name: o.name.to_owned(),
        namespace: o.namespace.to_owned(),
        action,
        targets: policy_targets(&compiled.target_refs),
        rules,
        dry_run: compiled.policy.dry_run,
    }))
}

/// The rule as the waypoint enforces it, or why it cannot.
fn rule(r: &HttpRule) -> Result<L7Rule, String> {
    let mut from = Vec::with_capacity(r.from.len());
    for s in &r.from {
        if let Some(field) = s.other_fields.first() {
            return Err(format!(
                "source.{field} is not evaluated by the waypoint (it sees the caller's identity, not its address or JWT): use principals or namespaces here, or a selector policy enforced by the node agent"
            ));
        }
        from.push(L7Source { principals: s.principals.clone(), namespaces: s.namespaces.clone() });
    }
    let to =
        r.to.iter()
            .map(|op| L7Operation {
                hosts: op.hosts.clone(),
                ports: op.ports.clone(),
                methods: op.methods.clone(),
                paths: op.paths.clone(),
            })
            .collect();
    let mut when = Vec::with_capacity(r.when.len());
    for c in &r.when {
        let key = match c.key.as_str() {
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.namespace" => ConditionKey::SourceNamespace,
            "request.method" => ConditionKey::RequestMethod,
            "request.url_path" => ConditionKey::RequestPath,
            k => match k.strip_prefix("request.headers[").and_then(|h| h.strip_suffix(']')) {
                Some(h) => ConditionKey::Header(
                    http::HeaderName::try_from(h).map_err(|_| format!("{h:?} is not a header name"))?,
                ),
                None => {
                    return Err(format!(
                        "condition key {k:?} is not evaluated by the waypoint: use request.headers[<name>], request.method, request.url_path, source.principal or source.namespace"
                    ));
                }
            },
        };
        when.push(L7Condition { key, values: c.values.clone() });
    }
    Ok(L7Rule { from, to, when })
}
