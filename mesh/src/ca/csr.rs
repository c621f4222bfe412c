//! Workload key pairs and CSRs. Keys are generated where the certificate will be used and
//! never leave the process; only the CSR travels to the CA.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::CaError;
use crate::parse::Identity;

/// A fresh ECDSA P-256 key and a CSR for `identity` signed by it.
pub struct CsrAndKey {
    pub csr_pem: String,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CsrAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrAndKey").finish_non_exhaustive()
    }
}

pub fn generate_csr(identity: &Identity) -> Result<CsrAndKey, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Signing(format!("generating a P-256 key: {e}")))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri_san(identity)?];
    let csr = params.serialize_request(&key).map_err(|e| CaError::Signing(format!("building the CSR: {e}")))?;
    let csr_pem = csr.pem().map_err(|e| CaError::Signing(format!("encoding the CSR: {e}")))?;
    Ok(CsrAndKey { csr_pem, key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())) })
}

pub(crate) fn uri_san(identity: &Identity) -> Result<SanType, CaError> {
    let uri =
        identity.as_str().to_owned().try_into().map_err(|e| CaError::Signing(format!("identity is not IA5: {e}")))?;
    Ok(SanType::URI(uri))
}
