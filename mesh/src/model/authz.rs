//! L4 authorization in the shape of Istio's `security.istio.io/v1` AuthorizationPolicy, as
//! ztunnel enforces it: only what a TCP connection and a peer certificate can tell.
//!
//! The types here are the *compiled* form: strings already parsed into matchers, L7-only
//! fields recorded by name instead of kept. `config` builds them from YAML and a Kubernetes
//! source would build them from the API objects. Evaluation lives in [`eval`].

pub mod eval;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

pub use self::eval::{ConnInfo, Reason, Verdict};
use super::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Accepted so Istio YAML loads; never enforced by the agent (audit is an L7 feature).
    Audit,
    /// Accepted so Istio YAML loads; never enforced (needs an external authorizer).
    Custom,
}

/// One AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`; empty means the whole namespace (or the whole mesh when
    /// the policy lives in the root namespace).
    pub selector: BTreeMap<String, String>,
    pub action: Action,
    /// An ALLOW policy with no rules allows nothing; a DENY policy with no rules denies nothing.
    pub rules: Vec<Rule>,
    /// The policy names `targetRef(s)`: it binds to a waypoint or gateway, so the node
    /// agent leaves it alone, as ztunnel does.
    pub targets_waypoint: bool,
    /// Annotated `istio.io/dry-run: "true"`: evaluated by nobody at L4, as in ztunnel
    /// (whose dry-run only logs).
    pub dry_run: bool,
}

impl AuthorizationPolicy {
    /// `namespace/name`, the key used in verdicts, logs and metrics.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A rule matches when all of its present parts do: any `from` entry, any `to` entry and
/// every `when` condition. A rule with no parts (`- {}`) matches every connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
    /// L7-only fields the rule used (e.g. `to.operation.methods`), dropped from the matchers
    /// above. Non-empty makes the rule never match in an ALLOW policy, and act as if those
    /// fields matched in a DENY policy (both fail closed).
    pub l7_fields: Vec<String>,
}

/// `from.source`: all present fields must match; a field matches if any value does, and
/// its `not…` twin if none does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Matcher<StringMatch>,
    pub namespaces: Matcher<StringMatch>,
    pub service_accounts: Matcher<ServiceAccountMatch>,
    pub ip_blocks: Matcher<IpNet>,
}

/// `to.operation`, restricted to what L4 sees: the destination port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub ports: Matcher<u16>,
}

/// A `when` condition on one of the keys ztunnel evaluates at L4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "key")]
pub enum Condition {
    #[serde(rename = "source.ip")]
    SourceIp(Matcher<IpNet>),
    #[serde(rename = "source.namespace")]
    SourceNamespace(Matcher<StringMatch>),
    #[serde(rename = "source.principal")]
    SourcePrincipal(Matcher<StringMatch>),
    #[serde(rename = "destination.ip")]
    DestinationIp(Matcher<IpNet>),
    #[serde(rename = "destination.port")]
    DestinationPort(Matcher<u16>),
}

/// Keys of `when` conditions the agent evaluates.
pub const L4_CONDITION_KEYS: &[&str] =
    &["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// Positive and negative values of one attribute. Both empty: no constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matcher<T> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<T>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<T>,
}

// Manual impl: the derive would demand `T: Default`.
impl<T> Default for Matcher<T> {
    fn default() -> Self {
        Self { values: Vec::new(), not_values: Vec::new() }
    }
}

impl<T> Matcher<T> {
    pub fn new(values: Vec<T>, not_values: Vec<T>) -> Self {
        Self { values, not_values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// `hit` tells whether one value matches the connection's attribute.
    pub(crate) fn matches(&self, mut hit: impl FnMut(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&mut hit)) && !self.not_values.iter().any(hit)
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

/// A `serviceAccounts` entry: `ns/sa`, or `sa` meaning the policy's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error(
        "principal {0:?} starts with `spiffe://`: Istio principals omit the scheme, write `cluster.local/ns/<ns>/sa/<sa>`"
    )]
    PrincipalScheme(String),
    #[error(
        "principal {0:?} is not `<trust-domain>/ns/<namespace>/sa/<service-account>` (a `*` is allowed only at the start or end)"
    )]
    Principal(String),
    #[error(
        "namespace {0:?} is not a namespace name (lower-case letters, digits, `-`; a `*` only at the start or end)"
    )]
    Namespace(String),
    #[error("service account {0:?} is not `<namespace>/<name>` or `<name>`")]
    ServiceAccount(String),
    #[error("{0:?} is not a port number (0-65535)")]
    Port(String),
    #[error("value {0:?} is empty or has a `*` in the middle; a `*` is allowed only at the start or end")]
    Wildcard(String),
}

impl StringMatch {
    /// Parses Istio's wildcard syntax without judging the literal part.
    fn wildcard(s: &str) -> Result<Self, MatchError> {
        let bad = || MatchError::Wildcard(s.chars().take(128).collect());
        let m = Self::value(s);
        match &m {
            Self::Present => Ok(m),
            Self::Exact(l) | Self::Prefix(l) | Self::Suffix(l) if !l.is_empty() && !l.contains('*') => Ok(m),
            _ => Err(bad()),
        }
    }

    /// An HTTP value (host, method, path, header) with Istio's wildcards: `*`, `prefix*`,
    /// `*suffix`; any other `*` is part of the value.
    pub fn value(s: &str) -> Self {
        if s == "*" {
            Self::Present
        } else if let Some(rest) = s.strip_prefix('*') {
            Self::Suffix(rest.to_owned())
        } else if let Some(rest) = s.strip_suffix('*') {
            Self::Prefix(rest.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    fn literal(&self) -> &str {
        match self {
            Self::Exact(l) | Self::Prefix(l) | Self::Suffix(l) => l,
            Self::Present => "",
        }
    }

    /// A `principals` entry. An exact principal must be an Istio identity without its
    /// scheme, because nothing else can ever match a workload certificate; wildcard ones
    /// must use only SPIFFE characters so that typos surface at load time.
    pub fn principal(s: &str) -> Result<Self, MatchError> {
        if s.starts_with("spiffe://") {
            return Err(MatchError::PrincipalScheme(s.chars().take(128).collect()));
        }
        let bad = || MatchError::Principal(s.chars().take(128).collect());
        let m = Self::wildcard(s).map_err(|_| bad())?;
        let ok = match &m {
            Self::Exact(l) => crate::parse::Identity::parse(&format!("spiffe://{l}")).is_ok(),
            other => other.literal().bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b)),
        };
        if ok { Ok(m) } else { Err(bad()) }
    }

    /// A `namespaces` entry (a DNS label, with Istio's wildcards).
    pub fn namespace(s: &str) -> Result<Self, MatchError> {
        let bad = || MatchError::Namespace(s.chars().take(128).collect());
        let m = Self::wildcard(s).map_err(|_| bad())?;
        let ok = m.literal().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && m.literal().len() <= 63;
        if ok { Ok(m) } else { Err(bad()) }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(l) => value == l,
            Self::Prefix(l) => value.starts_with(l.as_str()),
            Self::Suffix(l) => value.ends_with(l.as_str()),
            Self::Present => !value.is_empty(),
        }
    }
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(l) => f.write_str(l),
            Self::Prefix(l) => write!(f, "{l}*"),
            Self::Suffix(l) => write!(f, "*{l}"),
            Self::Present => f.write_str("*"),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ServiceAccountMatch {
    /// `ns/sa` or `sa` (then in `policy_namespace`), as Istio's `serviceAccounts` field.
    pub fn parse(s: &str, policy_namespace: &str) -> Result<Self, MatchError> {
        let (ns, sa) = s.split_once('/').unwrap_or((policy_namespace, s));
        crate::parse::Identity::new("td", ns, sa)
            .map_err(|_| MatchError::ServiceAccount(s.chars().take(128).collect()))?;
        Ok(Self { namespace: ns.to_owned(), service_account: sa.to_owned() })
    }
}

/// A port as Istio writes it in `ports`, `notPorts` and `destination.port` values: a decimal
/// string (plain YAML integers are accepted too by the config loader).
pub fn parse_port(s: &str) -> Result<u16, MatchError> {
    let bad = || MatchError::Port(s.chars().take(32).collect());
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn string_match_parsing() {
        let ok: &[(&str, StringMatch)] = &[
            ("cluster.local/ns/a/sa/b", StringMatch::Exact("cluster.local/ns/a/sa/b".into())),
            ("*", StringMatch::Present),
            ("*/ns/a/sa/b", StringMatch::Suffix("/ns/a/sa/b".into())),
            ("cluster.local/ns/a/*", StringMatch::Prefix("cluster.local/ns/a/".into())),
        ];
        for (s, want) in ok {
            assert_eq!(&StringMatch::principal(s).unwrap(), want, "{s}");
        }
        for bad in [
            "spiffe://cluster.local/ns/a/sa/b",
            "cluster.local/ns/a",
            "a*b",
            "**",
            "",
            "cluster.local/ns/a b/*",
            "c/*/x",
        ] {
            assert!(StringMatch::principal(bad).is_err(), "principal {bad:?} must be refused");
        }
        for bad in ["Web", "a_b", "", "a*b*"] {
            assert!(StringMatch::namespace(bad).is_err(), "namespace {bad:?} must be refused");
        }
        assert!(StringMatch::namespace("web-*").is_ok());
        assert_eq!(parse_port("8080"), Ok(8080));
        for bad in ["", "65536", "-1", "80a", "+80", "123456"] {
            assert!(parse_port(bad).is_err(), "port {bad:?}");
        }
        assert_eq!(ServiceAccountMatch::parse("sa", "shop").unwrap().namespace, "shop");
        assert!(ServiceAccountMatch::parse("a/b/c", "shop").is_err());
    }
}
