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

use crate::{conntrack::Tracker, route::required_waypoint_identities};

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
    pub fn new(node: String, model: watch::Receiver<Arc<Model>>, certs: CertManager, tcp: ConnectionMetrics) -> Self {
        Self { node, model, certs, tcp, tracker: Arc::default(), round_robin: AtomicUsize::new(0) }
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }

    pub fn next_rr(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// The in-mesh workload on this node owning one of `ips` (an enrolled
    /// pod's addresses), if the model has one.
    pub fn local_workload<'m>(&self, model: &'m Model, ips: &[IpAddr]) -> Option<&'m Workload> {
        ips.iter().find_map(|ip| model.workload_by_ip(*ip)).filter(|w| w.node == self.node)
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
