//! Kubernetes mode (`run --kubernetes`): the model comes from the cluster
//! (`pillion_k8s::KubeSource`), and a reconciler keeps enrolment in step with
//! the pods of this node the cluster says to capture.
//!
//! The CNI plugin enrols new pods before their app starts; the reconciler
//! covers pods that were running before the agent (found through `/proc`),
//! label changes on running pods, and opt-outs. It never unenrols a pod the
//! source does not know yet (the CNI plugin may have just enrolled it):
//! only pods the model marks as outside the mesh, or that left this node.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use mesh::model::{MeshSettings, Model};
use pillion_k8s::{KubeSource, Options, procfs, translate::LocalPod, uninstall::Verdict};
use tokio::sync::watch;

use crate::{
    enrol::{PodStatus, Registry},
    error::EnrolError,
    pod::PodSpec,
};

/// Connects with the in-cluster configuration (or `KUBECONFIG`) and starts
/// watching; returns once every kind has been listed once.
pub async fn start(node: &str) -> anyhow::Result<KubeSource> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration: run in a pod with a service account, or set KUBECONFIG")?;
    let source = KubeSource::start(
        client,
        Options { node: Some(node.to_owned()), mesh: MeshSettings::default(), ..Options::default() },
    );
    tracing::info!(node, "waiting for the first full list from the API server");
    source.synced().await;
    Ok(source)
}

/// Enrols and unenrols this node's pods as the desired set changes.
/// The reconciler's backstop period.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

pub fn spawn_reconciler(
    mut local: watch::Receiver<Arc<Vec<LocalPod>>>,
    models: watch::Receiver<Arc<Model>>,
    registry: Arc<Registry>,
    node: String,
    proc_root: PathBuf,
) {
    tokio::spawn(async move {
        loop {
            let desired = local.borrow_and_update().clone();
            let model = models.borrow().clone();
            let registry2 = registry.clone();
            let (node2, root) = (node.clone(), proc_root.clone());
            let _ = tokio::task::spawn_blocking(move || reconcile(&registry2, &desired, &model, &node2, &root)).await;
            // Also on a timer: a pod whose process was not found yet, or whose enrolment
            // failed, is retried without waiting for the next change.
            tokio::select! {
                r = local.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    });
}

/// Whether the pod's netns path still names the namespace it was enrolled with.
fn netns_alive(spec: &PodSpec, cookie: u64) -> bool {
    crate::netns::Netns::open(&spec.netns).and_then(|n| n.cookie()).is_ok_and(|c| c == cookie)
}

fn reconcile(registry: &Registry, desired: &[LocalPod], model: &Model, node: &str, proc_root: &std::path::Path) {
    let enrolled: BTreeMap<String, PodStatus> = registry.list().into_iter().map(|s| (s.pod.key(), s)).collect();
    for pod in desired {
        let key = format!("{}/{}", pod.namespace, pod.name);
        if enrolled.contains_key(&key) || pod.ips.is_empty() {
            continue;
        }
        let Some(uid) = &pod.uid else { continue };
        // A pod started before the agent (or missed by the CNI plugin).
        let Some(process) = procfs::find_pod(proc_root, uid) else {
            tracing::debug!(pod = %key, "no process for the pod yet; the CNI plugin or a later pass enrols it");
            continue;
        };
        let spec = PodSpec {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            netns: process.netns,
            ips: pod.ips.clone(),
            cgroup: None,
            uid: Some(uid.clone()),
        };
        match registry.enrol(spec) {
            Ok(_) => tracing::info!(pod = %key, "enrolled a running pod"),
            Err(EnrolError::AlreadyEnrolled(_) | EnrolError::NetnsInUse { .. }) => {}
            // The pod may vanish mid-enrolment: nothing was left behind.
            Err(e) => tracing::warn!(pod = %key, error = %e, "could not enrol a running pod"),
        }
    }
    for (key, status) in &enrolled {
        let spec = &status.pod;
        let why = match model.workload(&spec.namespace, &spec.name) {
            Some(w) if !w.in_mesh() || w.node != node => "opted out of the mesh or moved",
            // Unknown to the cluster and its netns gone: deleted while its DEL was missed.
            // (Unknown alone is not enough: the CNI plugin may just have enrolled it.)
            None if !netns_alive(spec, status.netns_cookie) => "deleted (its network namespace is gone)",
            _ => continue,
        };
        match registry.unenrol(&spec.namespace, &spec.name) {
            Ok(()) => tracing::info!(pod = %key, "unenrolled: {why}"),
            Err(e) => tracing::warn!(pod = %key, error = %e, "could not unenrol"),
        }
    }
}

/// Whether Pillion is being uninstalled: this agent's DaemonSet is gone or
/// being deleted. A rolling update keeps the DaemonSet, so capture (pinned)
/// outlives the restart; only an uninstall may unpin. Unknown means no.
pub async fn uninstalling() -> bool {
    let (Ok(namespace), Ok(name)) = (std::env::var("POD_NAMESPACE"), std::env::var("DAEMONSET_NAME")) else {
        return false;
    };
    let Ok(client) = kube::Client::try_default().await else { return false };
    match pillion_k8s::uninstall::check(client, &namespace, &name).await {
        Verdict::Uninstalling(why) => {
            tracing::info!(%why, "Pillion is being uninstalled");
            true
        }
        Verdict::Staying => false,
        Verdict::Unknown(why) => {
            tracing::warn!(%why, "cannot tell whether Pillion is being uninstalled; keeping capture in place");
            false
        }
    }
}
