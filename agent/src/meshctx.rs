//! The mesh state every pod's proxy shares: the live workload model, the
//! node's certificates, metrics, and the live-connection tracker that a
//! policy change re-evaluates.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use mesh::{
    Identity,
    certs::CertManager,
    model::{ConnInfo, Model, MtlsMode, Workload},
    telemetry::ConnectionMetrics,
};
use tokio::sync::watch;

use crate::{
    attribution::{Unattributed, UnknownPods, attribute, wait_for_pod},
    conntrack::Tracker,
    pod::PodSpec,
    route::required_waypoint_identities,
};

/// What policy needs to judge a live inbound connection again.
#[derive(Debug, Clone)]
pub struct TrackedConn {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_namespace: String,
    pub dst_name: String,
    pub dst: SocketAddr,
}

pub struct MeshCtx {
    /// This agent's node name, as workloads in the model name it.
    pub node: String,
    pub model: watch::Receiver<Arc<Model>>,
    pub certs: CertManager,
    pub tcp: ConnectionMetrics,
    pub tracker: Arc<Tracker<TrackedConn>>,
    /// What happens to an enrolled pod the model does not attribute.
    pub unknown_pods: UnknownPods,
    round_robin: AtomicUsize,
}

/// The outcome of the destination-side checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused, with the reason for logs and the client.
    Denied(String),
}

impl MeshCtx {
    pub fn new(
        node: String,
        model: watch::Receiver<Arc<Model>>,
        certs: CertManager,
        tcp: ConnectionMetrics,
        unknown_pods: UnknownPods,
    ) -> Self {
        Self { node, model, certs, tcp, tracker: Arc::default(), unknown_pods, round_robin: AtomicUsize::new(0) }
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }

    pub fn next_rr(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// A snapshot in which `pod` is attributed, waiting for one up to the
    /// configured bound (a CNI-enrolled pod is often ahead of the model by a
    /// moment); after that, the latest snapshot, which the caller refuses on.
    /// Woken by the model's change notification, never by polling.
    pub async fn model_for(&self, pod: &PodSpec) -> Arc<Model> {
        match self.unknown_pods {
            UnknownPods::Refuse { wait } => wait_for_pod(&self.model, &self.node, pod, wait).await,
            UnknownPods::Passthrough => self.snapshot(),
        }
    }

    /// `pod`'s workload in `model`, or why there is none.
    pub fn pod_workload<'m>(&self, model: &'m Model, pod: &PodSpec) -> Result<&'m Workload, Unattributed> {
        attribute(model, &self.node, pod)
    }

    /// The destination-side checks for a connection to `conn.dst` on a
    /// workload of this node: waypoint enforcement, STRICT for plaintext,
    /// then authorization policy.
    pub fn admit(model: &Model, conn: &TrackedConn) -> Admission {
        let Some(w) = model.workload(&conn.dst_namespace, &conn.dst_name) else {
            return Admission::Denied(format!(
                "workload {}/{} is no longer in the mesh",
                conn.dst_namespace, conn.dst_name
            ));
        };
        if let Some(waypoints) = required_waypoint_identities(model, w) {
            let from_waypoint = conn.src_identity.as_ref().is_some_and(|id| waypoints.contains(id));
            if !from_waypoint {
                return Admission::Denied(
                    "destination has a waypoint and this connection did not come through it".into(),
                );
            }
        }
        if conn.src_identity.is_none() && model.peer_auth_mode(w, conn.dst.port()) == MtlsMode::Strict {
            return Admission::Denied(
                "PeerAuthentication STRICT: plaintext is not accepted; connect from a mesh workload".into(),
            );
        }
        let verdict = model.authorize(&ConnInfo {
            src_identity: conn.src_identity.as_ref().map(Identity::spiffe_id),
            src_ip: conn.src_ip,
            dst_workload: w,
            dst: conn.dst,
        });
        if verdict.allowed {
            Admission::Allowed
        } else {
            Admission::Denied(format!(
                "denied by authorization policy {} ({:?})",
                verdict.policy.as_deref().unwrap_or("(no ALLOW policy matched)"),
                verdict.reason
            ))
        }
    }

    /// Re-evaluates every live connection against a new model and closes
    /// those it now denies; connections whose verdict is unchanged stay up.
    pub fn reevaluate(&self, model: &Model) -> usize {
        self.tracker.reevaluate(|c| Self::admit(model, c) == Admission::Allowed)
    }
}
