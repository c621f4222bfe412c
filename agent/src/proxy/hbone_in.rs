//! Inbound HBONE on the pod's `:15008`: present the destination workload's
//! certificate, accept only CONNECTs to this pod's own addresses, apply the
//! destination-side checks with the peer's verified identity, then dial the
//! app at the pod IP from inside the pod's netns.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use mesh::{
    certs::CertError,
    hbone::{Accepted, ConnectHook, ConnectRequest, HboneServer, Refusal, ServerCertResolver, UpstreamDialer},
    model::Model,
    telemetry::{ConnectionLabels, Reporter, SecurityPolicy},
    tls::WorkloadCert,
};
use pillion_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::net::TcpListener;

use super::{PodContext, app_stream::AppStream, dial_app, observed::Observed, outbound::peer_of};
use crate::{
    accesslog::{ConnRecord, Direction},
    conntrack::Revocable,
    kernel::addr::canonical,
    meshctx::{Admission, MeshCtx, TrackedConn},
    stats::bump,
};

/// The pod's certificate: that of the model workload the enrolled pod *is*
/// (by namespace, name and uid), never of whichever workload the model lists
/// at the dialled address. Without one there is no identity to present, so
/// the handshake is refused (there is no HBONE status before TLS).
pub struct PodCertResolver(pub Arc<PodContext>);

#[async_trait]
impl ServerCertResolver for PodCertResolver {
    async fn resolve(&self, local: SocketAddr) -> Result<WorkloadCert, CertError> {
        let pod = &self.0;
        let model = pod.mesh.model_for(&pod.spec).await;
        let identity = match pod.workload_in(&model) {
            Ok(w) if w.in_mesh() => w.identity().clone(),
            Err(why) if pod.mesh.unknown_pods.refuses() => {
                pod.bump(|c| &c.denied);
                crate::accesslog::log(&ConnRecord {
                    direction: Some(Direction::Inbound),
                    dst_hbone: Some(local),
                    dst_workload: pod.spec.name.clone(),
                    dst_namespace: pod.spec.namespace.clone(),
                    error: Some(format!("HBONE handshake refused: {why}")),
                    ..Default::default()
                });
                return Err(CertError::UnknownLocalAddress(local));
            }
            // Outside the mesh, or no model source at all: nothing to present.
            _ => return Err(CertError::UnknownLocalAddress(local)),
        };
        pod.mesh.certs.fetch(&identity).await
    }
}

/// What a CONNECT asks of this pod, once its target is known to be ours.
fn tracked(pod: &PodContext, model: &Model, req: &ConnectRequest) -> Result<TrackedConn, Refusal> {
    let target = req
        .target
        .socket_addr()
        .ok_or_else(|| Refusal::BadTarget("the target must be ip:port of a workload (names go to waypoints)".into()))?;
    let target = SocketAddr::new(canonical(target.ip()), target.port());
    if !pod.spec.ips.iter().any(|ip| canonical(*ip) == target.ip()) {
        return Err(Refusal::BadTarget(format!("{target} is not an address of pod {}", pod.spec.key())));
    }
    if canonical(req.local_addr.ip()) != target.ip() {
        return Err(Refusal::BadTarget(format!("target {target} is not the address the client dialled")));
    }
    if [HBONE_PORT, OUTBOUND_PORT, INBOUND_PORT].contains(&target.port()) {
        return Err(Refusal::Unavailable(format!("port {} is the agent's own; refusing the loop", target.port())));
    }
    let w = match pod.workload_in(model) {
        Ok(w) if w.in_mesh() => w,
        Ok(_) => return Err(Refusal::Unavailable(format!("{target} is a workload outside the mesh"))),
        Err(why) => return Err(Refusal::Unavailable(why.to_string())),
    };
    Ok(TrackedConn {
        src_identity: Some(req.peer_identity.clone()),
        // The outer TCP peer: agents dial from the source pod's netns, so this
        // is the source pod's address. (`Forwarded` is trusted only from
        // waypoints, which arrive with the waypoint issue.)
        src_ip: canonical(req.peer_addr.ip()),
        dst_namespace: w.namespace().to_owned(),
        dst_name: w.name().to_owned(),
        dst: target,
    })
}

pub struct PodHook(pub Arc<PodContext>);

#[async_trait]
impl ConnectHook for PodHook {
    async fn authorize(&self, req: &ConnectRequest) -> Result<Accepted, Refusal> {
        let model = self.0.mesh.snapshot();
        let conn = tracked(&self.0, &model, req)?;
        match MeshCtx::admit(&model, &conn) {
            Admission::Allowed => Ok(Accepted::default()),
            Admission::Denied(reason) => {
                bump(&self.0.counters.denied);
                bump(&self.0.agent_counters.denied);
                crate::accesslog::log(&ConnRecord {
                    direction: Some(Direction::Inbound),
                    src: Some(req.peer_addr),
                    src_identity: req.peer_identity.to_string(),
                    dst: Some(conn.dst),
                    dst_hbone: Some(req.local_addr),
                    dst_workload: conn.dst_name.clone(),
                    dst_namespace: conn.dst_namespace.clone(),
                    dst_identity: req.local_identity.to_string(),
                    error: Some(reason.clone()),
                    ..Default::default()
                });
                Err(Refusal::Denied(reason))
            }
        }
    }
}

/// Dials the app for an accepted CONNECT; the stream it returns counts
/// metrics, can be revoked by a policy change, and logs when it ends.
pub struct PodUpstream(pub Arc<PodContext>);

#[async_trait]
impl UpstreamDialer for PodUpstream {
    type Stream = Observed<Revocable<AppStream, TrackedConn>>;

    async fn dial(&self, req: &ConnectRequest) -> io::Result<Self::Stream> {
        let pod = &self.0;
        bump(&pod.counters.hbone_accepted);
        bump(&pod.agent_counters.hbone_accepted);
        let model = pod.mesh.snapshot();
        let conn =
            tracked(pod, &model, req).map_err(|r| io::Error::new(io::ErrorKind::PermissionDenied, r.to_string()))?;
        let registration = pod.mesh.tracker.register(conn.clone());
        // Policy may have changed since the hook ran.
        if let Admission::Denied(reason) = MeshCtx::admit(&model, &conn) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
        }
        let source = pod.app_source(conn.src_ip, conn.dst);
        let app = dial_app(&pod.netns, conn.dst, source, pod.connect_timeout).await.inspect_err(|_| {
            bump(&pod.counters.upstream_failed);
        })?;
        let src_w = model.workload_by_ip(conn.src_ip);
        let dst_w = model.workload(&conn.dst_namespace, &conn.dst_name);
        let src_peer = match src_w {
            Some(w) if w.identity() == &req.peer_identity => peer_of(Some(w)),
            _ => mesh::telemetry::Peer::unknown().identity(&req.peer_identity),
        };
        let labels =
            ConnectionLabels::new(Reporter::Destination, &src_peer, &peer_of(dst_w), None, SecurityPolicy::MutualTls);
        let record = ConnRecord {
            direction: Some(Direction::Inbound),
            src: Some(req.peer_addr),
            src_workload: src_w.map(|w| w.name().to_owned()).unwrap_or_default(),
            src_namespace: src_w.map(|w| w.namespace().to_owned()).unwrap_or_default(),
            src_identity: req.peer_identity.to_string(),
            dst: Some(conn.dst),
            dst_hbone: Some(req.local_addr),
            dst_workload: conn.dst_name.clone(),
            dst_namespace: conn.dst_namespace.clone(),
            dst_identity: req.local_identity.to_string(),
            ..Default::default()
        };
        Ok(Observed::new(Revocable::new(app, registration), pod.mesh.tcp.open(labels), record))
    }
}

/// Serves HBONE on the pod's listeners until unenrol or shutdown.
pub fn serve(pod: &Arc<PodContext>, listeners: Vec<TcpListener>) {
    let server = HboneServer::builder(PodCertResolver(pod.clone()), PodHook(pod.clone()), PodUpstream(pod.clone()));
    let server = pod.limits.apply(server).handshake_timeout(Duration::from_secs(10)).build();
    let stop = pod.cancel.child_token();
    let mut drain = pod.drain.clone();
    let on_drain = stop.clone();
    tokio::spawn(async move {
        drain.stopped().await;
        on_drain.cancel();
    });
    for listener in listeners {
        tokio::spawn(server.clone().serve(listener, stop.clone()));
    }
}
