//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) and the Istio workload form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsed from certificate URI SANs and CA requests, i.e. from untrusted input, so this file
//! depends only on `std` and `thiserror` and is fuzzed on its own.

use std::fmt;

/// The SPIFFE specification's limit on the whole ID.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID must start with `spiffe://` (lower case)")]
    Scheme,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE trust domain is empty or has characters other than a-z 0-9 . - _")]
    TrustDomain,
    #[error("SPIFFE path segment {0:?} is empty, `.`/`..`, or has characters other than A-Z a-z 0-9 . - _")]
    Segment(String),
    #[error("SPIFFE ID {0:?} is not an Istio workload identity: expected `spiffe://<td>/ns/<ns>/sa/<sa>`")]
    NotIstioForm(String),
}

/// A syntactically valid SPIFFE ID, stored in its canonical string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    raw: String,
    /// Byte offset where the path starts (equals `raw.len()` when there is no path).
    path_at: usize,
}

impl SpiffeId {
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = input.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() || !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
            return Err(SpiffeIdError::TrustDomain);
        }
        if !path.is_empty() {
            // `path` starts with '/', so the first split element is the empty prefix.
            for seg in path.split('/').skip(1) {
                let ok = !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    return Err(SpiffeIdError::Segment(seg.chars().take(64).collect()));
                }
            }
        }
        Ok(Self { raw: input.to_owned(), path_at: SCHEME.len() + td.len() })
    }

    pub fn trust_domain(&self) -> &str {
        &self.raw[SCHEME.len()..self.path_at]
    }

    /// The path including its leading `/`, or `""`.
    pub fn path(&self) -> &str {
        &self.raw[self.path_at..]
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A workload identity in Istio's form. Every certificate Pillion issues or accepts has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    id: SpiffeId,
}

impl Identity {
    /// Builds `spiffe://<td>/ns/<ns>/sa/<sa>`, validating every part.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId::parse(input)?;
        let mut segs = id.path().split('/').skip(1);
        let shape = (segs.next(), segs.next(), segs.next(), segs.next(), segs.next());
        match shape {
            (Some("ns"), Some(_), Some("sa"), Some(_), None) => Ok(Self { id }),
            _ => Err(SpiffeIdError::NotIstioForm(input.chars().take(128).collect())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        self.id.trust_domain()
    }

    pub fn namespace(&self) -> &str {
        self.id.path().split('/').nth(2).unwrap_or_default()
    }

    pub fn service_account(&self) -> &str {
        self.id.path().split('/').nth(4).unwrap_or_default()
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn as_str(&self) -> &str {
        self.id.as_str()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Identity {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identity() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/bookinfo-ratings").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-ratings");
        assert_eq!(Identity::new("cluster.local", "default", "bookinfo-ratings").unwrap(), id);
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "spiffe://",
            "SPIFFE://td/ns/a/sa/b",
            "https://td/ns/a/sa/b",
            "spiffe://TD/ns/a/sa/b",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/../sa/b",
            "spiffe://td:80/ns/a/sa/b",
            "spiffe://u@td/ns/a/sa/b",
            "spiffe://td/ns/a/sa/b?x",
            "spiffe://td/ns/a/sa/b#f",
            "spiffe://td/ns/a%20/sa/b",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn generic_spiffe_ids_are_not_istio_identities() {
        assert!(SpiffeId::parse("spiffe://td/agent/node1").is_ok());
        assert!(matches!(Identity::parse("spiffe://td/agent/node1"), Err(SpiffeIdError::NotIstioForm(_))));
        assert!(Identity::parse("spiffe://td/ns/a/sa/b/extra").is_err());
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path(), "");
    }
}
