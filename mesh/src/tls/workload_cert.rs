//! A workload's certificate as the TLS layer uses it: identity, chain, key and trust bundle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::svid::{self, LeafInfo};
use super::{TlsError, TrustBundle, provider};
use crate::parse::Identity;

/// An issued X.509-SVID with its private key. Cheap to clone (shared internals).
#[derive(Clone)]
pub struct WorkloadCert {
    info: Arc<LeafInfo>,
    key: Arc<CertifiedKey>,
    bundle: TrustBundle,
}

impl WorkloadCert {
    /// Builds from a chain (leaf first, then intermediates, no root), its key and the roots.
    /// Checks the SVID rules and that the key matches the leaf, so a bad issuance is caught
    /// here rather than as an opaque handshake failure later.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let info = svid::leaf_info(leaf)?;
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)?;
        Ok(Self { info: Arc::new(info), key: Arc::new(key), bundle })
    }

    pub fn identity(&self) -> &Identity {
        &self.info.identity
    }

    /// DER serial number of the leaf (to tell rotations apart).
    pub fn serial(&self) -> &[u8] {
        &self.info.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.info.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    /// Half-way through the validity period: when rotation should start.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self.not_after().duration_since(self.not_before()).unwrap_or(Duration::ZERO);
        self.not_before() + life / 2
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after()
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }

    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }
}

impl fmt::Debug for WorkloadCert {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.info.identity.as_str())
            .field("serial", &hex(&self.info.serial))
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
