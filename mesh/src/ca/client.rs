//! Client of Istio's CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`).
//!
//! A node agent authenticates with its own service-account token and asks for each local
//! workload's certificate by naming it in `ImpersonatedIdentity` metadata, as ztunnel does.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use prost_types::{Struct, Value, value::Kind};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::proto::{IstioCertificateRequest, IstioCertificateServiceClient};
use super::{CaError, CertificateSource, IMPERSONATED_IDENTITY, IssuedChain, SignRequest};
use crate::tls::trust::parse_pem_certs;

/// Where the bearer token comes from. Projected tokens rotate, so a file is re-read per call.
#[derive(Debug, Clone)]
pub enum TokenSource {
    None,
    Static(String),
    File(PathBuf),
}

impl TokenSource {
    async fn token(&self) -> Result<Option<String>, CaError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| CaError::Token(format!("{}: {e}", path.display()))),
        }
    }
}

/// How to verify the CA's serving certificate on an `https://` endpoint.
#[derive(Debug, Clone)]
pub struct CaClientTls {
    /// PEM roots the CA's certificate must chain to (Istio: the `istio-ca-root-cert`
    /// ConfigMap's `root-cert.pem`).
    pub roots_pem: String,
    /// DNS name the CA's certificate must carry, e.g. `istiod.istio-system.svc`.
    pub domain: String,
}

#[derive(Debug, Clone)]
pub struct IstioCaConfig {
    /// `https://istiod.istio-system.svc:15012` (with `tls`), or `http://…` on loopback.
    pub endpoint: String,
    /// Required for `https://` endpoints.
    pub tls: Option<CaClientTls>,
    pub token: TokenSource,
    /// Send `ImpersonatedIdentity` (node-agent mode). Off: the CA issues the caller's own.
    pub impersonate: bool,
    /// Sent as the `ClusterID` header, which istiod uses to pick the token reviewer.
    pub cluster_id: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl IstioCaConfig {
    pub fn new(endpoint: impl Into<String>, token: TokenSource) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            token,
            impersonate: true,
            cluster_id: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IstioCaClient {
    config: IstioCaConfig,
    client: IstioCertificateServiceClient<Channel>,
}

impl IstioCaClient {
    /// Builds a lazily-connecting client: construction never blocks on the CA being up.
    /// `https://` endpoints need [`IstioCaConfig::tls`]; a bearer token is sent over
    /// plaintext only to a loopback address.
    pub fn new(config: IstioCaConfig) -> Result<Self, CaError> {
        let transport = |message: String| CaError::Transport { endpoint: config.endpoint.clone(), message };
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| transport(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        let https = config.endpoint.starts_with("https://");
        match (&config.tls, https) {
            (Some(tls), true) => {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.roots_pem))
                    .domain_name(tls.domain.clone());
                endpoint = endpoint.tls_config(tls).map_err(|e| transport(e.to_string()))?;
            }
            (None, true) => {
                return Err(transport("https endpoint without CA roots: set IstioCaConfig::tls".into()));
            }
            (Some(_), false) => {
                return Err(transport("TLS is configured but the endpoint is not https://".into()));
            }
            (None, false) => {
                if !is_loopback(endpoint.uri()) && !matches!(config.token, TokenSource::None) {
                    return Err(transport(
                        "refusing to send a bearer token in plaintext to a non-loopback CA: \
                         use https:// and IstioCaConfig::tls"
                            .into(),
                    ));
                }
            }
        }
        let client = IstioCertificateServiceClient::new(endpoint.connect_lazy());
        Ok(Self { config, client })
    }

    fn request(
        &self,
        req: &SignRequest,
        token: Option<String>,
    ) -> Result<tonic::Request<IstioCertificateRequest>, CaError> {
        let metadata = self.config.impersonate.then(|| Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                Value { kind: Some(Kind::StringValue(req.identity.to_string())) },
            )]
            .into(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: req.csr_pem.clone(),
            validity_duration: i64::try_from(req.lifetime.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        if let Some(token) = token {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| CaError::Token("token has characters not allowed in a header".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(cluster) = &self.config.cluster_id {
            let value = cluster.parse().map_err(|_| CaError::Token("cluster id is not a valid header value".into()))?;
            request.metadata_mut().insert("clusterid", value);
        }
        Ok(request)
    }
}

#[async_trait]
impl CertificateSource for IstioCaClient {
    async fn sign(&self, req: SignRequest) -> Result<IssuedChain, CaError> {
        let token = self.config.token.token().await?;
        let request = self.request(&req, token)?;
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| status_to_error(&self.config.endpoint, status))?
            .into_inner();
        let mut certs = Vec::new();
        for pem in &response.cert_chain {
            certs.extend(parse_pem_certs(pem).map_err(|e| CaError::BadResponse(e.to_string()))?);
        }
        // Istio's convention: leaf first, root last.
        if certs.len() < 2 {
            return Err(CaError::BadResponse(format!(
                "{} certificate(s); need at least a leaf and a root",
                certs.len()
            )));
        }
        let root = certs.pop().expect("len checked above");
        Ok(IssuedChain { chain: certs, roots: vec![root] })
    }
}

fn is_loopback(uri: &http::Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn status_to_error(endpoint: &str, status: tonic::Status) -> CaError {
    match status.code() {
        tonic::Code::Unauthenticated => CaError::Unauthenticated(status.message().to_owned()),
        tonic::Code::PermissionDenied => CaError::PermissionDenied(status.message().to_owned()),
        tonic::Code::InvalidArgument => CaError::BadCsr(status.message().to_owned()),
        _ => CaError::Transport {
            endpoint: endpoint.to_owned(),
            message: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}
