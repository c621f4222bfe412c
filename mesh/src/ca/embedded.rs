//! An in-process CA: a root and an intermediate, for development, tests and [`super::CaServer`].
//!
//! The root's key is dropped once the intermediate is signed (generated case) or never loaded
//! (file case): only the intermediate signs workloads, so a leaked node never holds a root key.

use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::csr::uri_san;
use super::{CaError, CertificateSource, IssuedChain, SignRequest};
use crate::clock::SharedClock;
use crate::parse::Identity;
use crate::tls::trust::parse_pem_certs;

/// Default longest lifetime the CA grants: Istio's 24 h workload default.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start a little in the past so a peer whose clock lags slightly accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

pub struct EmbeddedCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    intermediate: CertificateDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    max_lifetime: Duration,
    clock: SharedClock,
}

impl std::fmt::Debug for EmbeddedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCa")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// PEM form of a generated CA, to persist with [`EmbeddedCa::to_pem`].
#[derive(Clone)]
pub struct CaPem {
    pub root_cert: String,
    pub intermediate_cert: String,
    pub intermediate_key: String,
}

impl EmbeddedCa {
    /// Generates a fresh root and intermediate (ECDSA P-256), valid from the clock's now.
    pub fn generate(trust_domain: &str, clock: SharedClock) -> Result<(Self, CaPem), CaError> {
        let now = clock.now();
        let root_key = new_key()?;
        let root_params = ca_params(&format!("Pillion root CA ({trust_domain})"), now, None)?;
        let root = root_params.self_signed(&root_key).map_err(material)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = new_key()?;
        let int_params = ca_params(&format!("Pillion intermediate CA ({trust_domain})"), now, Some(0))?;
        let intermediate = int_params.signed_by(&int_key, &root_issuer).map_err(material)?;
        let pem = CaPem {
            root_cert: root.pem(),
            intermediate_cert: intermediate.pem(),
            intermediate_key: int_key.serialize_pem(),
        };
        let ca = Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(int_params, int_key),
            intermediate: intermediate.der().clone(),
            roots: vec![root.der().clone()],
            max_lifetime: DEFAULT_MAX_LIFETIME,
            clock,
        };
        Ok((ca, pem))
    }

    /// Loads from PEM text: the root certificate(s), the intermediate certificate and its
    /// PKCS#8 key. Several roots may be given while a CA rotation is in progress.
    pub fn from_pem(trust_domain: &str, pem: &CaPem, clock: SharedClock) -> Result<Self, CaError> {
        let roots = parse_pem_certs(&pem.root_cert).map_err(material)?;
        let intermediate = parse_pem_certs(&pem.intermediate_cert).map_err(material)?.remove(0);
        let key = KeyPair::from_pem(&pem.intermediate_key).map_err(material)?;
        let issuer = Issuer::from_ca_cert_der(&intermediate, key).map_err(material)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            intermediate,
            roots,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            clock,
        })
    }

    /// Loads `root-cert.pem`, `ca-cert.pem` and `ca-key.pem` (Istio's plug-in CA file names).
    pub fn from_dir(trust_domain: &str, dir: &Path, clock: SharedClock) -> Result<Self, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io { path: path.display().to_string(), source })
        };
        let pem = CaPem {
            root_cert: read("root-cert.pem")?,
            intermediate_cert: read("ca-cert.pem")?,
            intermediate_key: read("ca-key.pem")?,
        };
        Self::from_pem(trust_domain, &pem, clock)
    }

    /// Caps the lifetime of issued leaves.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Adds roots peers may chain to (e.g. the next root during a rotation).
    pub fn with_extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        for r in roots {
            if !self.roots.contains(&r) {
                self.roots.push(r);
            }
        }
        self
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs a PEM CSR for `identity`. The CSR's signature is checked (proof the requester
    /// holds the key) but its subject and SANs are ignored: the identity is decided by the
    /// caller's authorization, never by the requester.
    pub fn sign_csr(&self, identity: &Identity, csr_pem: &str, lifetime: Duration) -> Result<IssuedChain, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::PermissionDenied(format!("{identity} is outside trust domain {}", self.trust_domain)));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let now = self.clock.now();
        let lifetime = lifetime.min(self.max_lifetime).max(Duration::from_secs(1));
        let mut params = CertificateParams::default();
        params.not_before = odt(now - BACKDATE);
        params.not_after = odt(now + lifetime);
        params.serial_number = Some(random_serial()?);
        params.subject_alt_names = vec![uri_san(identity)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(IssuedChain { chain: vec![leaf.der().clone(), self.intermediate.clone()], roots: self.roots.clone() })
    }
}

impl EmbeddedCa {
    /// A TLS serving certificate for the CA server itself (DNS names such as
    /// `pillion-ca.pillion-system.svc`), chained to this CA's roots.
    pub fn serving_cert(
        &self,
        dns_names: &[&str],
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = new_key()?;
        let names: Vec<String> = dns_names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(material)?;
        let now = self.clock.now();
        params.not_before = odt(now - BACKDATE);
        params.not_after = odt(now + lifetime);
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(material)?;
        Ok((
            vec![cert.der().clone(), self.intermediate.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }

    /// The roots as PEM (for [`super::CaClientTls::roots_pem`] or a ConfigMap).
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| super::server::pem_cert(r)).collect()
    }
}

#[async_trait]
impl CertificateSource for EmbeddedCa {
    async fn sign(&self, request: SignRequest) -> Result<IssuedChain, CaError> {
        self.sign_csr(&request.identity, &request.csr_pem, request.lifetime)
    }
}

fn ca_params(cn: &str, now: SystemTime, path_len: Option<u8>) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "Pillion");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = odt(now - BACKDATE);
    params.not_after = odt(now + CA_LIFETIME);
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(material)
}

fn material(e: impl std::fmt::Display) -> CaError {
    CaError::CaMaterial(e.to_string())
}

/// 128 random bits, top bit cleared so the DER integer stays positive.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing("no randomness for a serial number".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}
