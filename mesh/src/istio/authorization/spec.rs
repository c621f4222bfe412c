//! `AuthorizationPolicy.spec` in Istio's exact shape. Unknown fields are refused, not
//! skipped: a matcher dropped from an ALLOW rule would let through what it was meant to
//! keep out (from the API server such a policy is enforced as deny-all instead).

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use super::super::{PortValue, Selector};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub target_ref: Option<Spanned<TargetRef>>,
    #[serde(default)]
    pub target_refs: Vec<Spanned<TargetRef>>,
    /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`; checked when compiled so the error
    /// names the field and the choices.
    #[serde(default)]
    pub action: Option<Spanned<String>>,
    /// CUSTOM's external authorizer; accepted, used by nobody.
    #[serde(default, rename = "provider")]
    pub(super) _provider: Option<IgnoredAny>,
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSpec>>,
}

/// Istio's `PolicyTargetReference`: a Gateway (a waypoint) or a Service, usually.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub from: Vec<Spanned<FromSpec>>,
    #[serde(default)]
    pub to: Vec<Spanned<ToSpec>>,
    #[serde(default)]
    pub when: Vec<Spanned<ConditionSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    #[serde(default)]
    pub source: Option<SourceSpec>,
}

pub(super) type Strings = Vec<Spanned<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Strings,
    #[serde(default)]
    pub not_principals: Strings,
    #[serde(default)]
    pub namespaces: Strings,
    #[serde(default)]
    pub not_namespaces: Strings,
    #[serde(default)]
    pub service_accounts: Strings,
    #[serde(default)]
    pub not_service_accounts: Strings,
    #[serde(default)]
    pub ip_blocks: Strings,
    #[serde(default)]
    pub not_ip_blocks: Strings,
    // Need a proxy that sees HTTP (JWT) or the original client address.
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    #[serde(default)]
    pub operation: Option<OperationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    #[serde(default)]
    pub ports: Vec<Spanned<PortValue>>,
    #[serde(default)]
    pub not_ports: Vec<Spanned<PortValue>>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    pub key: Spanned<String>,
    #[serde(default)]
    pub values: Strings,
    #[serde(default)]
    pub not_values: Strings,
}
