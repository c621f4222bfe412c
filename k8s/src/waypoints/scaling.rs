//! How many waypoint replicas run and how many may be disrupted: a HorizontalPodAutoscaler
//! and a PodDisruptionBudget per waypoint, made when the Gateway's
//! `spec.infrastructure.parametersRef` names a ConfigMap of its namespace with the keys
//! `horizontalPodAutoscaler` and/or `podDisruptionBudget` (YAML holding a `spec`), the
//! shape Istio reads for its waypoints. Without a key, no such object (one made earlier is
//! deleted).
//!
//! What a tenant may set is limited to the fields below; the target (the waypoint's own
//! Deployment, its pods' label) is always the controller's, so a Gateway cannot make the
//! controller scale or shield anything else.

use serde_json::{Map, Value, json};

/// The ConfigMap keys read.
pub const HPA_KEY: &str = "horizontalPodAutoscaler";
pub const PDB_KEY: &str = "podDisruptionBudget";
/// CPU each waypoint container requests when autoscaled (utilization is measured against it).
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// Average CPU utilization the autoscaler aims at unless `metrics` are given.
const DEFAULT_CPU_PERCENT: i64 = 80;

const HPA_FIELDS: [&str; 4] = ["minReplicas", "maxReplicas", "metrics", "behavior"];
const PDB_FIELDS: [&str; 3] = ["minAvailable", "maxUnavailable", "unhealthyPodEvictionPolicy"];

/// Why a Gateway's parameters cannot be used (reported in its `Accepted` condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("spec.infrastructure.parametersRef must name a ConfigMap (group \"\", kind ConfigMap), not {group}/{kind}")]
    Kind { group: String, kind: String },
    #[error("ConfigMap {0} (spec.infrastructure.parametersRef) does not exist in the Gateway's namespace")]
    Missing(String),
    #[error("ConfigMap key {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

/// The replica and disruption objects wanted for one waypoint (`spec` bodies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scaling {
    pub hpa: Option<Value>,
    pub pdb: Option<Value>,
}

impl Scaling {
    /// Reads the ConfigMap's `data`.
    pub fn from_data(data: &std::collections::BTreeMap<String, String>) -> Result<Self, ParamsError> {
        let hpa = data.get(HPA_KEY).map(|t| hpa_spec(t)).transpose()?;
        let pdb = data.get(PDB_KEY).map(|t| pdb_spec(t)).transpose()?;
        Ok(Self { hpa, pdb })
    }
}

/// The `spec` of a key's YAML, limited to `allowed` fields.
fn spec_of(key: &'static str, text: &str, allowed: &[&str]) -> Result<Map<String, Value>, ParamsError> {
    let invalid = |why: String| ParamsError::Invalid { key, why };
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| invalid(format!("not YAML: {e}")))?;
    let Some(top) = doc.as_object() else { return Err(invalid("expected a mapping with `spec`".into())) };
    if let Some(other) = top.keys().find(|k| *k != "spec") {
        return Err(invalid(format!("only `spec` is read, found `{other}`")));
    }
    let spec = match top.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("`spec` must be a mapping".into())),
    };
    if let Some(other) = spec.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(format!("spec.{other} cannot be set here (allowed: {})", allowed.join(", "))));
    }
    Ok(spec)
}

fn replicas(spec: &Map<String, Value>, field: &str, key: &'static str) -> Result<Option<i64>, ParamsError> {
    match spec.get(field) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=1000).contains(&n) => Ok(Some(n)),
            _ => Err(ParamsError::Invalid { key, why: format!("spec.{field} must be a whole number from 1 to 1000") }),
        },
    }
}

fn hpa_spec(text: &str) -> Result<Value, ParamsError> {
    let mut spec = spec_of(HPA_KEY, text, &HPA_FIELDS)?;
    let min = replicas(&spec, "minReplicas", HPA_KEY)?.unwrap_or(1);
    let Some(max) = replicas(&spec, "maxReplicas", HPA_KEY)? else {
        return Err(ParamsError::Invalid { key: HPA_KEY, why: "spec.maxReplicas is required".into() });
    };
    if min > max {
        return Err(ParamsError::Invalid {
            key: HPA_KEY,
            why: format!("spec.minReplicas {min} > spec.maxReplicas {max}"),
        });
    }
    spec.insert("minReplicas".into(), json!(min));
    spec.entry("metrics").or_insert_with(|| {
        json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_PERCENT}}}])
    });
    Ok(Value::Object(spec))
}

fn pdb_spec(text: &str) -> Result<Value, ParamsError> {
    let mut spec = spec_of(PDB_KEY, text, &PDB_FIELDS)?;
    let budget = |v: &Value| v.as_u64().is_some() || v.as_str().is_some_and(is_percent);
    match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
        (Some(_), Some(_)) => {
            return Err(ParamsError::Invalid {
                key: PDB_KEY,
                why: "set minAvailable or maxUnavailable, not both".into(),
            });
        }
        (Some(v), None) | (None, Some(v)) if !budget(v) => {
            return Err(ParamsError::Invalid {
                key: PDB_KEY,
                why: format!("{v} is neither a whole number nor a percentage like \"50%\""),
            });
        }
        (None, None) => {
            // Keep one waypoint up through voluntary disruptions (node drains).
            spec.insert("minAvailable".into(), json!(1));
        }
        _ => {}
    }
    Ok(Value::Object(spec))
}

fn is_percent(s: &str) -> bool {
    s.strip_suffix('%').and_then(|n| n.parse::<u8>().ok()).is_some_and(|n| n <= 100)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_hpa_gets_a_cpu_target_and_a_minimum_unless_given() {
        let s = Scaling::from_data(&data(&[(HPA_KEY, "spec:\n  maxReplicas: 5\n")])).unwrap();
        let hpa = s.hpa.unwrap();
        assert_eq!(hpa["minReplicas"], 1);
        assert_eq!(hpa["maxReplicas"], 5);
        assert_eq!(hpa["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        assert!(s.pdb.is_none());
        let given = "spec:\n  minReplicas: 2\n  maxReplicas: 4\n  metrics: [{type: Resource, resource: {name: memory, target: {type: Utilization, averageUtilization: 70}}}]\n";
        let hpa = Scaling::from_data(&data(&[(HPA_KEY, given)])).unwrap().hpa.unwrap();
        assert_eq!(hpa["minReplicas"], 2);
        assert_eq!(hpa["metrics"][0]["resource"]["name"], "memory");
    }

    #[test]
    fn a_pdb_keeps_one_replica_unless_told_otherwise() {
        let s = Scaling::from_data(&data(&[(PDB_KEY, "spec: {}\n")])).unwrap();
        assert_eq!(s.pdb.unwrap(), json!({"minAvailable": 1}));
        let s = Scaling::from_data(&data(&[(PDB_KEY, "spec: {maxUnavailable: \"25%\"}\n")])).unwrap();
        assert_eq!(s.pdb.unwrap(), json!({"maxUnavailable": "25%"}));
    }

    #[test]
    fn targets_and_bad_values_are_refused_with_the_reason() {
        let refused = |key: &str, text: &str| Scaling::from_data(&data(&[(key, text)])).unwrap_err().to_string();
        // The target is the controller's: a Gateway cannot point it at another Deployment.
        let e = refused(HPA_KEY, "spec:\n  maxReplicas: 3\n  scaleTargetRef: {kind: Deployment, name: payments}\n");
        assert!(e.contains("spec.scaleTargetRef cannot be set"), "{e}");
        let e = refused(PDB_KEY, "spec:\n  selector: {matchLabels: {app: payments}}\n");
        assert!(e.contains("spec.selector cannot be set"), "{e}");
        assert!(refused(HPA_KEY, "spec: {minReplicas: 2}").contains("maxReplicas is required"));
        assert!(refused(HPA_KEY, "spec: {minReplicas: 4, maxReplicas: 2}").contains("4 > spec.maxReplicas 2"));
        assert!(refused(HPA_KEY, "spec: {maxReplicas: 0}").contains("from 1 to 1000"));
        assert!(refused(HPA_KEY, "metadata: {name: x}").contains("only `spec` is read"));
        assert!(refused(HPA_KEY, "spec: [").contains("not YAML"));
        assert!(refused(PDB_KEY, "spec: {minAvailable: 1, maxUnavailable: 1}").contains("not both"));
        assert!(refused(PDB_KEY, "spec: {minAvailable: \"half\"}").contains("percentage"));
    }
}
