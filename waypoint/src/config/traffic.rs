//! Gateway API's experimental `XBackendTrafficPolicy` (its retry constraint: the retry
//! budget) and Pillion's `FaultInjection`, the resource an HTTPRoute `ExtensionRef` names.

use http::StatusCode;
use serde::Deserialize;

use super::Problem;
use super::document::Object;
use super::duration::parse_duration;
use crate::fault::{Abort, Delay, FaultInjection};
use crate::resilience::BudgetConfig;
use crate::route::ServiceKey;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackendTrafficPolicySpec {
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    retry_constraint: Option<RetryConstraintSpec>,
    #[serde(default)]
    session_persistence: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetryConstraintSpec {
    #[serde(default)]
    budget: Option<BudgetSpec>,
    #[serde(default)]
    min_retry_rate: Option<RateSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSpec {
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSpec {
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    interval: Option<String>,
}

/// The Services an `XBackendTrafficPolicy` targets and the retry budget it sets for them.
pub(super) fn backend_traffic_policy(o: &Object<'_>) -> Result<(Vec<ServiceKey>, BudgetConfig), Problem> {
    let spec: BackendTrafficPolicySpec = o.spec()?;
    let _ = &spec.session_persistence;
    let mut budget = BudgetConfig::default();
    let duration = |s: &Option<String>| s.as_deref().map(parse_duration).transpose().map_err(|e| o.problem(e));
    if let Some(rc) = &spec.retry_constraint {
        if let Some(b) = &rc.budget {
            if let Some(p) = b.percent {
                if !(0.0..=100.0).contains(&p) {
                    return Err(o.problem("retryConstraint.budget.percent must be within 0..100"));
                }
                budget.percent = p;
            }
            budget.interval = duration(&b.interval)?.unwrap_or(budget.interval);
        }
        if let Some(r) = &rc.min_retry_rate {
            budget.min_count = r.count.unwrap_or(budget.min_count);
            budget.min_interval = duration(&r.interval)?.unwrap_or(budget.min_interval);
        }
    }
    let targets = spec
        .target_refs
        .iter()
        .filter(|t| t.kind == "Service" && t.group.as_deref().unwrap_or("").is_empty())
        .map(|t| ServiceKey::new(o.namespace, &t.name))
        .collect();
    Ok((targets, budget))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FaultSpec {
    #[serde(default)]
    delay: Option<DelaySpec>,
    #[serde(default)]
    abort: Option<AbortSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DelaySpec {
    fixed_delay: String,
    #[serde(default)]
    percentage: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AbortSpec {
    http_status: u16,
    #[serde(default)]
    percentage: Option<f64>,
}

pub(super) fn fault_injection(o: &Object<'_>) -> Result<FaultInjection, Problem> {
    let spec: FaultSpec = o.spec()?;
    let pct = |p: Option<f64>| {
        let p = p.unwrap_or(100.0);
        if (0.0..=100.0).contains(&p) { Ok(p) } else { Err(o.problem("percentage must be within 0..100")) }
    };
    let delay = match &spec.delay {
        Some(d) => Some(Delay {
            fixed: parse_duration(&d.fixed_delay).map_err(|e| o.problem(e))?,
            percentage: pct(d.percentage)?,
        }),
        None => None,
    };
    let abort = match &spec.abort {
        Some(a) => Some(Abort {
            status: StatusCode::from_u16(a.http_status)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| o.problem("abort.httpStatus must be an HTTP status code (200-599)"))?,
            percentage: pct(a.percentage)?,
        }),
        None => None,
    };
    if delay.is_none() && abort.is_none() {
        return Err(o.problem("a FaultInjection needs `delay`, `abort` or both"));
    }
    Ok(FaultInjection { name: format!("{}/{}", o.namespace, o.name), delay, abort })
}
