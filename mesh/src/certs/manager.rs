//! The certificate manager: one background task per identity.
//!
//! Each task issues a certificate, publishes it on a watch channel, sleeps (on the injected
//! clock) until half-life, renews, and repeats. A failed renewal keeps the current
//! certificate while it is still valid, counts a metric, logs, and retries with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{CertError, CertMetrics};
use crate::ca::{CertificateSource, SignRequest, generate_csr};
use crate::clock::{SharedClock, SystemClock};
use crate::parse::Identity;
use crate::tls::{TrustBundle, WorkloadCert, workload_cert::hex};

#[derive(Debug, Clone)]
pub struct CertManagerConfig {
    /// Requested certificate lifetime (Istio default: 24 h).
    pub lifetime: Duration,
    /// First retry delay after a failed issuance; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub clock: SharedClock,
    /// Roots trusted in addition to those the source returns (CA rotation, extra meshes).
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl Default for CertManagerConfig {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            clock: SystemClock::shared(),
            extra_roots: Vec::new(),
        }
    }
}

/// What a tracked identity has right now.
#[derive(Debug, Clone)]
pub enum CertState {
    /// First issuance in flight.
    Pending,
    Ready(WorkloadCert),
    /// No valid certificate; the task is retrying.
    Failed(CertError),
}

struct Entry {
    rx: watch::Receiver<CertState>,
    task: JoinHandle<()>,
}

/// Shared handle; clone freely.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn CertificateSource>,
    config: CertManagerConfig,
    metrics: CertMetrics,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, e) in entries.drain() {
            e.task.abort();
        }
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl CertManager {
    pub fn new(source: Arc<dyn CertificateSource>, config: CertManagerConfig, metrics: CertMetrics) -> Self {
        Self { inner: Arc::new(Inner { source, config, metrics, entries: Mutex::default() }) }
    }

    pub fn clock(&self) -> &SharedClock {
        &self.inner.config.clock
    }

    /// The certificate for `identity`, issuing it on first use (concurrent callers share one
    /// issuance). Must be called inside a tokio runtime.
    pub async fn fetch(&self, identity: &Identity) -> Result<WorkloadCert, CertError> {
        let mut rx = self.subscribe(identity);
        let state = rx.wait_for(|s| !matches!(s, CertState::Pending)).await.map_err(|_| CertError::Forgotten)?.clone();
        match state {
            CertState::Ready(cert) => Ok(cert),
            CertState::Failed(e) => Err(e),
            CertState::Pending => unreachable!("waited for a non-pending state"),
        }
    }

    /// The current certificate without waiting, if one is ready.
    pub fn current(&self, identity: &Identity) -> Option<WorkloadCert> {
        let entries = self.lock();
        match &*entries.get(identity)?.rx.borrow() {
            CertState::Ready(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Watches an identity's state (starting issuance if it is not tracked yet).
    pub fn subscribe(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut entries = self.lock();
        if let Some(e) = entries.get(identity) {
            return e.rx.clone();
        }
        let (tx, rx) = watch::channel(CertState::Pending);
        let task = tokio::spawn(run(Arc::downgrade(&self.inner), identity.clone(), tx));
        entries.insert(identity.clone(), Entry { rx: rx.clone(), task });
        self.inner.metrics.workloads.set(entries.len() as i64);
        rx
    }

    /// Stops tracking `identity` (its last workload left): the renewal task ends and the
    /// certificate and key are dropped once no connection holds them.
    pub fn forget(&self, identity: &Identity) {
        let mut entries = self.lock();
        if let Some(e) = entries.remove(identity) {
            e.task.abort();
        }
        self.inner.metrics.workloads.set(entries.len() as i64);
    }

    /// Identities currently tracked.
    pub fn identities(&self) -> Vec<Identity> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The per-identity loop. Holds only a weak reference so dropping the manager ends it.
async fn run(inner: std::sync::Weak<Inner>, identity: Identity, tx: watch::Sender<CertState>) {
    let mut backoff = None::<Duration>;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let clock = strong.config.clock.clone();
        let result = issue(&strong, &identity).await;
        let wake_at = match result {
            Ok(cert) => {
                backoff = None;
                strong.metrics.issued.inc();
                tracing::info!(
                    %identity,
                    serial = %hex(cert.serial()),
                    not_after = ?cert.not_after(),
                    "workload certificate issued"
                );
                let at = cert.refresh_at();
                tx.send_replace(CertState::Ready(cert));
                at
            }
            Err(e) => {
                strong.metrics.renewal_failures.inc();
                let cfg = &strong.config;
                let delay = backoff.map_or(cfg.initial_backoff, |b| (b * 2).min(cfg.max_backoff));
                backoff = Some(delay);
                let now = clock.now();
                let keep = matches!(&*tx.borrow(), CertState::Ready(c) if !c.is_expired_at(now));
                if keep {
                    tracing::warn!(%identity, error = %e, retry_in = ?delay,
                        "certificate renewal failed; keeping the current certificate");
                } else {
                    tracing::error!(%identity, error = %e, retry_in = ?delay,
                        "certificate issuance failed; the workload has no valid certificate");
                    tx.send_replace(CertState::Failed(e));
                }
                now + delay
            }
        };
        drop(strong);
        clock.sleep_until(wake_at).await;
    }
}

async fn issue(inner: &Inner, identity: &Identity) -> Result<WorkloadCert, CertError> {
    let csr = generate_csr(identity).map_err(|e| CertError::Source(Arc::new(e)))?;
    let issued = inner
        .source
        .sign(SignRequest { identity: identity.clone(), csr_pem: csr.csr_pem, lifetime: inner.config.lifetime })
        .await
        .map_err(|e| CertError::Source(Arc::new(e)))?;
    let mut roots = issued.roots;
    for r in &inner.config.extra_roots {
        if !roots.contains(r) {
            roots.push(r.clone());
        }
    }
    let unusable = |e| CertError::Unusable(Arc::new(e));
    let bundle = TrustBundle::new(roots).map_err(unusable)?;
    let cert = WorkloadCert::new(issued.chain, csr.key, bundle).map_err(unusable)?;
    if cert.identity() != identity {
        return Err(CertError::WrongIdentity { expected: identity.to_string(), got: cert.identity().to_string() });
    }
    Ok(cert)
}
