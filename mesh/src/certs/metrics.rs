//! Certificate metrics, registered into the caller's prometheus-client registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    /// Failed issuances or renewals (each attempt counts once).
    pub renewal_failures: Counter,
    /// Successful issuances, first ones included.
    pub issued: Counter,
    /// Identities currently tracked.
    pub workloads: Gauge,
}

impl CertMetrics {
    /// Registers under the `pillion_certificate_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("pillion_certificate");
        sub.register(
            "renewal_failures",
            "Certificate issuance or renewal attempts that failed",
            m.renewal_failures.clone(),
        );
        sub.register("issued", "Certificates issued", m.issued.clone());
        sub.register("workloads", "Workload identities holding a certificate", m.workloads.clone());
        m
    }
}
