//! The trust bundle: the roots peers must chain to. Several roots may be present at once so a
//! CA can be rotated without a flag day.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::TlsError;

#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Arc<Vec<CertificateDer<'static>>>,
    store: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(|e| TlsError::BadRoot(e.to_string()))?;
        }
        Ok(Self { roots: Arc::new(roots), store: Arc::new(store) })
    }

    /// Reads every `CERTIFICATE` block of a PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        Self::new(parse_pem_certs(pem)?)
    }

    /// A bundle holding the roots of both, without duplicates (CA rotation overlap).
    pub fn merged(&self, other: &TrustBundle) -> Result<Self, TlsError> {
        let mut roots = self.roots.as_ref().clone();
        for r in other.roots.iter() {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
        Self::new(roots)
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.store.clone()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots
    }
}

/// Parses every certificate in a PEM document, refusing one that has none.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}
