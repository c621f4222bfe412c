//! What `/config_dump` shows: whatever the application's [`ConfigDump`] returns, plus a
//! key-free [`CertSummary`] for each certificate it wants to list.
//!
//! The admin server also refuses to serve a dump whose text contains a PEM private-key marker,
//! so a future field that accidentally serializes a key fails loudly instead of leaking it.

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TelemetryError;
use crate::tls::WorkloadCert;

/// The application's live state as JSON. Implemented for plain closures.
pub trait ConfigDump: Send + Sync + 'static {
    fn dump(&self) -> serde_json::Value;
}

impl<F> ConfigDump for F
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    fn dump(&self) -> serde_json::Value {
        self()
    }
}

/// A certificate as an operator needs to see it. Holds only public facts; there is
/// deliberately no constructor that takes a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// The first URI SAN (the SPIFFE ID of an X.509-SVID); `None` for a CA certificate.
    pub spiffe_id: Option<String>,
    /// Subject distinguished name (often empty for SVIDs).
    pub subject: String,
    pub issuer: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    /// RFC 3339, UTC.
    pub not_after: String,
}

impl CertSummary {
    /// Summarizes one DER certificate (a leaf, an intermediate or a root).
    pub fn from_der(der: &[u8]) -> Result<Self, TelemetryError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TelemetryError::Certificate(e.to_string()))?;
        let spiffe_id = cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        });
        let validity = cert.validity();
        Ok(Self {
            spiffe_id,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: crate::tls::workload_cert::hex(cert.raw_serial()),
            not_before: rfc3339(validity.not_before.timestamp()),
            not_after: rfc3339(validity.not_after.timestamp()),
        })
    }

    /// Summarizes a workload certificate's chain, leaf first (never its key).
    pub fn chain_of(cert: &WorkloadCert) -> Vec<Self> {
        // Every certificate in a WorkloadCert was parsed when it was built; one that somehow
        // fails here is skipped rather than failing the whole dump.
        cert.chain().iter().filter_map(|c| Self::from_der(c).ok()).collect()
    }
}

/// True if `text` carries PEM private-key material of any kind (PKCS#8, SEC1, RSA, encrypted).
pub(crate) fn contains_key_material(text: &str) -> bool {
    text.contains("PRIVATE KEY")
}

/// Formats Unix seconds as RFC 3339 UTC without pulling in `time`'s formatting feature.
fn rfc3339(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{EmbeddedCa, generate_csr};
    use crate::clock::SystemClock;
    use crate::parse::Identity;
    use crate::tls::TrustBundle;

    pub(crate) fn issued() -> (WorkloadCert, crate::ca::embedded::CaPem) {
        let (ca, pem) = EmbeddedCa::generate("cluster.local", SystemClock::shared()).unwrap();
        let id = Identity::new("cluster.local", "default", "sleep").unwrap();
        let csr = generate_csr(&id).unwrap();
        let chain = ca.sign_csr(&id, &csr.csr_pem, Duration::from_secs(3600)).unwrap();
        let cert = WorkloadCert::new(chain.chain, csr.key, TrustBundle::new(chain.roots).unwrap()).unwrap();
        (cert, pem)
    }

    #[test]
    fn summary_has_identity_and_dates_and_no_key() {
        let (cert, _) = issued();
        let chain = CertSummary::chain_of(&cert);
        assert_eq!(chain.len(), 2, "leaf and intermediate: {chain:?}");
        let leaf = &chain[0];
        assert_eq!(leaf.spiffe_id.as_deref(), Some("spiffe://cluster.local/ns/default/sa/sleep"));
        assert_eq!(leaf.serial, crate::tls::workload_cert::hex(cert.serial()));
        assert!(leaf.not_before < leaf.not_after, "{leaf:?}");
        assert!(leaf.not_after.ends_with('Z') && leaf.not_after.len() == 20, "{leaf:?}");
        assert_eq!(chain[1].spiffe_id, None);
        let json = serde_json::to_string(&chain).unwrap();
        assert!(!contains_key_material(&json), "{json}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(CertSummary::from_der(b"not a cert"), Err(TelemetryError::Certificate(_))));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
