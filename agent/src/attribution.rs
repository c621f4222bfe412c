//! Which workload of the model an enrolled pod is. Identity, STRICT and
//! policy all hang on this answer, so it is decided by who the pod *is*
//! (namespace, name, and uid where both sides know it), never by whichever
//! workload the model happens to list at the pod's address: an address is
//! reused as soon as a pod dies, and the model may not have caught up.
//!
//! A pod the model cannot attribute is refused in both directions (after a
//! bounded wait for the model, see [`UnknownPods`]). ztunnel does the same for
//! workloads it does not know: without the workload there is no identity to
//! present, and no STRICT or authorization policy can be evaluated for it.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use mesh::model::{Model, Workload};
use tokio::sync::watch;

use crate::pod::PodSpec;

/// What the proxy does for an enrolled pod that the model does not attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPods {
    /// Wait up to this long for the model to list the pod, then refuse the
    /// connection. Every agent with a model source (a config file or
    /// Kubernetes) runs this way.
    Refuse { wait: Duration },
    /// No model source at all (`run` without `--config` or
    /// `--kubernetes`): there is no mesh, only capture and relay, so nothing
    /// is attributed and everything passes through.
    Passthrough,
}

impl UnknownPods {
    pub fn refuses(self) -> bool {
        matches!(self, Self::Refuse { .. })
    }
}

/// Why an enrolled pod is not tied to a workload of the model; the message
/// goes to the access log as the connection's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unattributed {
    #[error(
        "pod {pod} is enrolled but not in the mesh model (yet); its traffic is refused until the model lists it (add it to the config file, or check the agent's Kubernetes watch)"
    )]
    NotInModel { pod: String },
    #[error(
        "pod {pod} is not in the mesh model and its address {ip} belongs to workload {owner} there; refusing rather than using that workload's identity (an address reused before the model caught up?)"
    )]
    AddressOfAnother { pod: String, ip: IpAddr, owner: String },
    #[error(
        "the mesh model places workload {pod} on node {node:?}, not on this one; refusing its traffic until the model catches up"
    )]
    OtherNode { pod: String, node: String },
    #[error(
        "workload {pod} in the mesh model is pod uid {model_uid}, but the enrolled pod is uid {pod_uid} (a re-created pod of the same name); refusing until the model catches up"
    )]
    OtherUid { pod: String, model_uid: String, pod_uid: String },
    #[error(
        "workload {pod} in the mesh model has addresses {model_ips:?}, the enrolled pod {pod_ips:?}; refusing until the model and the enrolment agree"
    )]
    OtherAddresses { pod: String, model_ips: Vec<IpAddr>, pod_ips: Vec<IpAddr> },
}

/// The workload of `model` that the pod enrolled as `pod` on `node` is: the
/// one with the pod's namespace and name, on this node, sharing an address
/// with the enrolment, and with its uid when both know one.
pub fn attribute<'m>(model: &'m Model, node: &str, pod: &PodSpec) -> Result<&'m Workload, Unattributed> {
    let Some(w) = model.workload(&pod.namespace, &pod.name) else {
        let claimed = pod.ips.iter().find_map(|ip| model.workload_by_ip(*ip).map(|w| (*ip, w)));
        return Err(match claimed {
            Some((ip, w)) => {
                Unattributed::AddressOfAnother { pod: pod.key(), ip, owner: format!("{}/{}", w.namespace(), w.name()) }
            }
            None => Unattributed::NotInModel { pod: pod.key() },
        });
    };
    if w.node != node {
        return Err(Unattributed::OtherNode { pod: pod.key(), node: w.node.clone() });
    }
    if let (Some(model_uid), Some(pod_uid)) = (&w.uid, &pod.uid)
        && model_uid != pod_uid
    {
        return Err(Unattributed::OtherUid { pod: pod.key(), model_uid: model_uid.clone(), pod_uid: pod_uid.clone() });
    }
    let shares_an_address = pod.ips.iter().any(|ip| w.ips.iter().any(|m| m.to_canonical() == ip.to_canonical()));
    if !shares_an_address {
        return Err(Unattributed::OtherAddresses {
            pod: pod.key(),
            model_ips: w.ips.clone(),
            pod_ips: pod.ips.clone(),
        });
    }
    Ok(w)
}

/// The first snapshot of `models` in which `pod` is attributed, waiting up to
/// `wait` for it; after that the latest snapshot (which the caller refuses
/// on). Woken by the model's change notification, never by polling.
pub async fn wait_for_pod(
    models: &watch::Receiver<Arc<Model>>,
    node: &str,
    pod: &PodSpec,
    wait: Duration,
) -> Arc<Model> {
    let mut rx = models.clone();
    let model = rx.borrow_and_update().clone();
    if attribute(&model, node, pod).is_ok() {
        return model;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {
                let model = rx.borrow_and_update().clone();
                if attribute(&model, node, pod).is_ok() {
                    return model;
                }
            }
            // The deadline passed, or the model source is gone for good.
            Ok(Err(_)) | Err(_) => return rx.borrow().clone(),
        }
    }
}

/// The last attribution outcome of one pod, so that each change is logged
/// once rather than on every connection.
#[derive(Debug, Default)]
pub struct ChangeLog(Mutex<Option<Unattributed>>);

impl ChangeLog {
    pub fn note(&self, pod: &str, now: Option<&Unattributed>) {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() == now {
            return;
        }
        match now {
            Some(why) => {
                tracing::warn!(pod, error = %why, "enrolled pod not attributed to a workload; refusing its traffic")
            }
            None => tracing::info!(pod, "the mesh model now attributes the pod; its traffic flows"),
        }
        *last = now.cloned();
    }
}

#[cfg(test)]
mod tests;
