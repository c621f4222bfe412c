//! Where the waypoint's configuration comes from: the YAML file (polled, the last good one
//! kept) or the Kubernetes API (`pillion_k8s::KubeSource` with the L7 kinds watched).
//! Either way the proxy gets whole [`Snapshot`]s, model and L7 objects together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh::model::{MeshSettings, Model};
use pillion_k8s::objects::L7Object;
use pillion_k8s::{KubeSource, Options};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::L7Config;
use crate::proxy::{Proxy, Snapshot};

#[cfg(test)]
mod tests;

/// How often the config file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long a new waypoint pod waits to see itself (and its Service) in the cluster.
pub const SELF_WAIT: Duration = Duration::from_secs(120);

/// Reads both views of the file; either failing rejects the whole file.
pub fn load(path: &Path, version: u64) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text, &path.display().to_string(), version)
}

/// Both views of one text, so that a model and an L7 configuration always come from the
/// same version of the file (reading it twice could mix a file being written).
pub fn parse(text: &str, file: &str, version: u64) -> anyhow::Result<Snapshot> {
    let model = mesh::config::parse(text, file, version)?;
    let l7 = crate::config::parse(text, file, &model.mesh().trust_domain)?;
    Ok(Snapshot { model: Arc::new(model), l7: Arc::new(l7) })
}

/// What the waypoint follows after start.
pub enum Follow {
    File(PathBuf),
    Kube(KubeFollow),
}

impl Follow {
    pub fn spawn(self, proxy: Arc<Proxy>, stop: CancellationToken) {
        match self {
            Self::File(path) => tokio::spawn(follow_file(path, proxy, stop)),
            Self::Kube(kube) => tokio::spawn(follow_kube(kube, proxy, stop)),
        };
    }
}

/// The source and its channels, marked seen up to the snapshot the waypoint started with,
/// so that nothing published in between is missed.
#[derive(Debug)]
pub struct KubeFollow {
    source: KubeSource,
    models: watch::Receiver<Arc<Model>>,
    objects: watch::Receiver<Arc<Vec<L7Object>>>,
}

/// Polls the file; a changed, valid file replaces the configuration, an invalid one is
/// logged and the last good one stays.
pub async fn follow_file(path: PathBuf, proxy: Arc<Proxy>, stop: CancellationToken) {
    let mut last = std::fs::read_to_string(&path).ok();
    let mut version = 1;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        // One read per change: what is compared is what is parsed.
        let now = std::fs::read_to_string(&path).ok();
        if now == last {
            continue;
        }
        last = now;
        let Some(text) = &last else {
            tracing::warn!(file = %path.display(), "configuration file unreadable; keeping the last good one");
            continue;
        };
        version += 1;
        match parse(text, &path.display().to_string(), version) {
            Ok(s) => {
                proxy.update(s);
                tracing::info!(version, "configuration applied");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "configuration rejected; keeping the last good one"),
        }
    }
}

/// The L7 configuration of `objects`, with what was left out or replaced logged.
fn l7_of(objects: &[L7Object], model: &Model) -> anyhow::Result<L7Config> {
    let (config, notes) = crate::config::from_objects(objects, &model.mesh().trust_domain)?;
    for n in &notes {
        tracing::warn!("{n}");
    }
    Ok(config)
}

/// The in-cluster configuration, or KUBECONFIG.
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration: run in a pod with a service account, or set KUBECONFIG")
}

/// Starts watching; waits (each up to `wait`) for the first full list and for this pod
/// (and `service`, if named) to be in it, then for an L7 configuration that can be read.
/// Until then the waypoint is not ready, which holds a rollout back.
pub async fn start_kube(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    service: Option<&str>,
    wait: Duration,
) -> anyhow::Result<(KubeFollow, Snapshot)> {
    let source =
        KubeSource::start(client, Options { watch_l7: true, mesh: MeshSettings::default(), ..Options::default() });
    tracing::info!("waiting for the first full list from the API server");
    if tokio::time::timeout(wait, source.synced()).await.is_err() {
        anyhow::bail!(
            "no full list from the API server after {wait:?}: check that the waypoint's service account is bound to the pillion-waypoint ClusterRole (ClusterRoleBinding pillion-waypoints, kept by the waypoint controller); status: {:?}",
            source.status()
        );
    }
    let present = |m: &Arc<Model>| {
        m.workload(namespace, pod).is_some() && service.is_none_or(|s| m.service(namespace, s).is_some())
    };
    let mut models = source.subscribe();
    if tokio::time::timeout(wait, models.wait_for(present)).await.is_err() {
        anyhow::bail!(
            "pod {namespace}/{pod}{} not in the cluster's model after {wait:?}: check POD_NAME/--namespace and that the pod has an IP; status: {:?}",
            service.map(|s| format!(" or Service {namespace}/{s}")).unwrap_or_default(),
            source.status()
        );
    }
    let mut objects = source.l7_objects();
    let l7 = loop {
        let now = objects.borrow_and_update().clone();
        match l7_of(&now, &models.borrow()) {
            Ok(l7) => break l7,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "L7 configuration refused; not ready until it is fixed")
            }
        }
        objects.changed().await.context("the Kubernetes source stopped")?;
    };
    let model = models.borrow_and_update().clone();
    Ok((KubeFollow { source, models, objects }, Snapshot { model, l7: Arc::new(l7) }))
}

/// Applies every new model and every new set of L7 objects; refused L7 objects keep the
/// last good L7 configuration (a new model still applies).
pub async fn follow_kube(kube: KubeFollow, proxy: Arc<Proxy>, stop: CancellationToken) {
    let KubeFollow { source, mut models, mut objects } = kube;
    loop {
        let l7_changed = tokio::select! {
            _ = stop.cancelled() => return,
            r = models.changed() => { if r.is_err() { return } false }
            r = objects.changed() => { if r.is_err() { return } true }
        };
        let last = proxy.snapshot();
        let model = models.borrow_and_update().clone();
        let l7 = if l7_changed {
            let now = objects.borrow_and_update().clone();
            match l7_of(&now, &model) {
                Ok(l7) => Arc::new(l7),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "L7 configuration refused; keeping the last good one");
                    last.l7.clone()
                }
            }
        } else {
            last.l7.clone()
        };
        tracing::info!(
            version = model.version(),
            l7_changed,
            skipped = source.status().skipped.len(),
            "configuration applied"
        );
        proxy.update(Snapshot { model, l7 });
    }
}
