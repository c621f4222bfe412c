//! Reads the documents of the file leniently (the model's loader checks what it owns) and
//! hands the L7 kinds to their converters, with the line of each object for errors.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::grant::Grants;
use super::{L7Config, Problem, authz, gateway, grant, grpc, istio, traffic};
use crate::resilience::BackendPolicy;
use crate::route::ServiceKey;

#[derive(Debug, Deserialize)]
struct RawDoc {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default)]
    spec: Option<Spanned<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One L7 object: its identity, where it is, and its `spec`.
#[derive(Clone, Copy)]
pub(crate) struct Object<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    pub at: (u64, u64),
    pub spec: &'a serde_json::Value,
}

impl Object<'_> {
    /// Reads `spec` as `T`, reporting type errors at the spec's line.
    pub fn spec<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_value(self.spec.clone()).map_err(|e| self.problem(format!("spec: {e}")))
    }

    pub fn problem(&self, msg: impl std::fmt::Display) -> Problem {
        Problem::at(self.at, format!("{} {}/{}: {msg}", self.kind, self.namespace, self.name))
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace, self.name)
    }
}

const NULL: serde_json::Value = serde_json::Value::Null;

pub(super) fn parse(text: &str, trust_domain: &str) -> Result<L7Config, Problem> {
    let options = serde_saphyr::options! { with_snippet: false };
    let docs: Vec<RawDoc> = serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        Problem { at, msg: e.without_snippet().to_string() }
    })?;
    let objects: Vec<Object<'_>> = docs
        .iter()
        .filter_map(|d| {
            let kind = d.kind.as_ref()?;
            let api = d.api_version.as_deref().unwrap_or("");
            let ours = is_l7_kind(api, &kind.value);
            let meta = d.metadata.as_ref()?;
            ours.then(|| Object {
                kind: &kind.value,
                namespace: meta.namespace.as_deref().unwrap_or("default"),
                name: &meta.name,
                annotations: &meta.annotations,
                at: d.spec.as_ref().map_or((kind.referenced.line(), kind.referenced.column()), |s| {
                    (s.referenced.line(), s.referenced.column())
                }),
                spec: d.spec.as_ref().map_or(&NULL, |s| &s.value),
            })
        })
        .collect();

    build(&objects, trust_domain)
}

/// Whether a document of this `apiVersion` and `kind` is one the waypoint reads.
pub(super) fn is_l7_kind(api: &str, kind: &str) -> bool {
    mesh::config::is_waypoint_kind(api, kind)
        || (kind == "AuthorizationPolicy" && api.starts_with("security.istio.io/"))
}

/// The configuration of a set of objects (from a file or the API server).
pub(super) fn build(objects: &[Object<'_>], trust_domain: &str) -> Result<L7Config, Problem> {
    let mut config = L7Config::default();
    let mut grants = Grants::default();
    for o in objects {
        match o.kind {
            "FaultInjection" => {
                config.faults.insert(o.key(), traffic::fault_injection(o)?);
            }
            "ReferenceGrant" => grants.add(grant::reference_grant(o)?),
            _ => {}
        }
    }
    let mut limits = HashMap::new();
    let mut consumer_limits = HashMap::new();
    let mut budgets = HashMap::new();
    for o in objects {
        match o.kind {
            "HTTPRoute" => {
                for (rule, parents) in gateway::http_route(o, &config.faults, &grants)? {
                    config.routes.add(rule, o.namespace, &parents);
                }
            }
            "GRPCRoute" => {
                for (rule, parents) in grpc::grpc_route(o, &config.faults, &grants)? {
                    config.routes.add(rule, o.namespace, &parents);
                }
            }
            "XBackendTrafficPolicy" => {
                let (targets, budget) = traffic::backend_traffic_policy(o)?;
                for t in targets {
                    budgets.insert(t, budget);
                }
            }
            "DestinationRule" => {
                let (service, policy) = istio::destination_rule(o)?;
                if service.namespace == o.namespace {
                    limits.insert(service, policy);
                } else {
                    // Istio's `exportTo` default: a rule outside the Service's namespace is
                    // for its own namespace's clients only.
                    consumer_limits.insert((o.namespace.to_owned(), service), policy);
                }
            }
            "AuthorizationPolicy" => {
                if let Some(p) = authz::policy(o, trust_domain)? {
                    config.authz.push(p);
                }
            }
            _ => {}
        }
    }
    config.routes.finish();
    for service in limits.keys().chain(budgets.keys()) {
        let mut p = limits.get(service).cloned().unwrap_or_default();
        if let Some(b) = budgets.get(service) {
            p.budget = *b;
        }
        config.backend_policies.insert(service.clone(), p);
    }
    for ((client, service), rule) in consumer_limits {
        // The rule's own fields over the Service's budget.
        let budget = config.backend_policy(&service, None).budget;
        config.consumer_policies.insert((client, service), BackendPolicy { budget, ..rule });
    }
    Ok(config)
}
