//! Istio's `security.istio.io/v1` AuthorizationPolicy and PeerAuthentication, read once for
//! every consumer: the file source (`config`), the Kubernetes source (`pillion-k8s`) and the
//! waypoint. Each kind has one set of serde types in Istio's exact YAML shape and one
//! translation into a compiled form, so a rule means the same thing wherever it is loaded
//! and a fix lands in one place. What a consumer can *enforce* (the node agent only L4,
//! the waypoint only what an HTTP request and a peer certificate tell) is decided by the
//! consumer, from the compiled form.
//!
//! The types carry [`Spanned`] values so that errors point at their line when the text is
//! YAML; decoded from JSON (the API server) the positions are unknown and left out.

pub mod authorization;
pub mod peer_authentication;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Visitor};
use serde_saphyr::Spanned;

/// Istio's annotation for a policy that is evaluated but not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Why a spec was refused: the field path and how to fix it, and the position in the YAML
/// text when known (line, column; 1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct SpecError {
    at: Option<(u64, u64)>,
    msg: String,
}

impl SpecError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self { at: None, msg: msg.into() }
    }

    /// At `s`'s position, if it has one (values decoded from JSON do not).
    pub(crate) fn at<T>(s: &Spanned<T>, msg: impl Into<String>) -> Self {
        Self { at: position(s), msg: msg.into() }
    }

    /// Points an unlocated error at `s`.
    pub(crate) fn or_at<T>(mut self, s: &Spanned<T>) -> Self {
        self.at = self.at.or(position(s));
        self
    }

    /// The (line, column) the problem is at, when the spec was read from YAML text.
    pub fn location(&self) -> Option<(u64, u64)> {
        self.at
    }

    pub fn message(&self) -> &str {
        &self.msg
    }
}

fn position<T>(s: &Spanned<T>) -> Option<(u64, u64)> {
    let line = s.referenced.line();
    (line > 0).then(|| (line, s.referenced.column()))
}

/// `spec.selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

fn match_labels(s: Option<&Selector>) -> BTreeMap<String, String> {
    s.map(|s| s.match_labels.clone()).unwrap_or_default()
}

/// Decodes a `spec` that arrived as JSON (an API object, or a document the waypoint read
/// leniently). `null` or absent is `None`: for an AuthorizationPolicy that means deny-all.
pub fn decode<S: DeserializeOwned>(spec: &serde_json::Value) -> Result<Option<S>, SpecError> {
    if spec.is_null() {
        return Ok(None);
    }
    serde_json::from_value(spec.clone()).map(Some).map_err(|e| SpecError::new(format!("spec: {e}")))
}

/// A port written as an integer or a decimal string (Istio's schema uses strings,
/// Kubernetes uses integers; people write both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortValue(pub String);

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}
