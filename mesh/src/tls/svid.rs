//! X.509-SVID rules applied to every peer leaf (and to every certificate we are issued):
//! exactly one URI SAN holding an Istio-form SPIFFE ID, and not a CA. Chain and validity are
//! checked by webpki in [`super::verify`] with the injected clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::parse::{Identity, SpiffeIdError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not parseable DER X.509: the peer sent garbage")]
    Der,
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one (check the issuing CA)")]
    UriSanCount(usize),
    #[error("certificate's URI SAN is not an Istio SPIFFE ID: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    #[error("certificate is a CA but is used as a workload leaf: issue a leaf with CA=false")]
    LeafIsCa,
    #[error("certificate identity {got} is not the expected {expected}: wrong workload or stale endpoint")]
    WrongIdentity { expected: String, got: String },
    #[error(
        "peer identity {got} is in a trust domain this workload does not accept (accepted: {accepted}); \
         add it to the allowed trust domains if that mesh is federated on purpose"
    )]
    ForeignTrustDomain { got: String, accepted: String },
}

/// Facts read from a leaf that Pillion uses after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub identity: Identity,
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Applies the SVID rules and returns the leaf's identity.
pub fn identity_of(leaf_der: &[u8]) -> Result<Identity, SvidError> {
    leaf_info(leaf_der).map(|l| l.identity)
}

/// Applies the SVID rules and returns what Pillion needs from the leaf.
pub fn leaf_info(leaf_der: &[u8]) -> Result<LeafInfo, SvidError> {
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|_| SvidError::Der)?;
    if cert.basic_constraints().map_err(|_| SvidError::Der)?.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let uris: Vec<&str> = match cert.subject_alternative_name().map_err(|_| SvidError::Der)? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriSanCount(uris.len()));
    };
    let validity = cert.validity();
    Ok(LeafInfo {
        identity: Identity::parse(uri)?,
        serial: cert.raw_serial().to_vec(),
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}
