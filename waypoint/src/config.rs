//! The waypoint's L7 configuration, read from the same multi-document YAML file as the mesh
//! model (`mesh::config`): Gateway API `HTTPRoute` and `XBackendTrafficPolicy`, Istio
//! `DestinationRule` (connection pool and outlier detection) and `AuthorizationPolicy` (its
//! L7 fields), and Pillion's `FaultInjection`. Other kinds are the model's and are skipped
//! here; the model skips these (see `mesh::config::WAYPOINT_KINDS`).
//!
//! Schema: `docs/config.md`, section "Waypoint (L7) objects". Errors name the file and line.

mod authz;
mod document;
mod duration;
mod gateway;
mod grant;
mod grpc;
mod istio;
mod objects;
#[cfg(test)]
mod tests;
mod traffic;

use std::collections::HashMap;

pub use duration::parse_duration;
pub use objects::from_objects;

use crate::authz::L7Policy;
use crate::fault::FaultInjection;
use crate::resilience::BackendPolicy;
use crate::route::{RouteTable, ServiceKey};

/// Why the L7 configuration was rejected (the mesh loader's error: same file,
/// same line numbers); the last good one stays in force.
pub type L7ConfigError = mesh::config::ConfigError;

/// A problem with its position (line, column) when known.
#[derive(Debug)]
pub(crate) struct Problem {
    at: Option<(u64, u64)>,
    msg: String,
}

impl Problem {
    pub(crate) fn at(at: (u64, u64), msg: impl Into<String>) -> Self {
        Self { at: Some(at), msg: msg.into() }
    }

    fn into_error(self, file: &str) -> L7ConfigError {
        match self.at {
            Some((line, column)) => L7ConfigError::Invalid { file: file.into(), line, column, problem: self.msg },
            None => L7ConfigError::Unlocated { file: file.into(), problem: self.msg },
        }
    }
}

/// Everything the waypoint reads beyond the model.
#[derive(Debug, Clone, Default)]
pub struct L7Config {
    pub routes: RouteTable,
    /// Per backend Service, merged from DestinationRule and XBackendTrafficPolicy of the
    /// Service's own namespace: for every client.
    pub backend_policies: HashMap<ServiceKey, BackendPolicy>,
    /// Per (client namespace, backend Service): a DestinationRule written in another
    /// namespace than its Service's, which Istio applies to that namespace's clients only.
    pub consumer_policies: HashMap<(String, ServiceKey), BackendPolicy>,
    pub authz: Vec<L7Policy>,
    pub faults: HashMap<ServiceKey, FaultInjection>,
}

impl L7Config {
    /// The policy for a backend as a client of namespace `client` gets it: its namespace's
    /// own DestinationRule first, then the Service's; built-in defaults for the rest.
    pub fn backend_policy(&self, service: &ServiceKey, client: Option<&str>) -> BackendPolicy {
        self.scoped_backend_policy(service, client).0
    }

    /// The policy, and the client namespace it is scoped to (`None`: shared by all clients),
    /// so that breaker and ejection state is kept per scope.
    pub fn scoped_backend_policy(&self, service: &ServiceKey, client: Option<&str>) -> (BackendPolicy, Option<String>) {
        if let Some(c) = client.filter(|c| *c != service.namespace)
            && let Some(p) = self.consumer_policies.get(&(c.to_owned(), service.clone()))
        {
            return (p.clone(), Some(c.to_owned()));
        }
        (self.backend_policies.get(service).cloned().unwrap_or_default(), None)
    }
}

/// Parses the L7 objects of `text` (the contents of `file`, named in errors), for a mesh
/// whose trust domain is `trust_domain` (principals written `cluster.local/…` mean it).
pub fn parse(text: &str, file: &str, trust_domain: &str) -> Result<L7Config, L7ConfigError> {
    document::parse(text, trust_domain).map_err(|p| p.into_error(file))
}
