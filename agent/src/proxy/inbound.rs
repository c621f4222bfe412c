//! Inbound plaintext: sk_lookup hands a connection for the pod to 15006 with
//! its original destination as the local address. For a mesh workload the
//! destination-side checks apply (STRICT refuses plaintext, waypoint,
//! policy); then dial the app at the pod IP. A pod the model does not
//! attribute is refused: none of those checks could be made for it.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use mesh::telemetry::{ConnectionLabels, Reporter, SecurityPolicy};
use tokio::net::TcpStream;

use super::{ActiveGuard, PodContext, dial_app, outbound::peer_of, refuse_unattributed, relay::relay, reset};
use crate::{
    accesslog::{self, ConnRecord, Direction},
    conntrack::Revocable,
    kernel::addr::canonical,
    meshctx::{Admission, MeshCtx, TrackedConn},
};

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    pod.bump(|c| &c.inbound_accepted);
    let _active = ActiveGuard::new(&pod);
    let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
    let dst = client.local_addr().ok().map(|a| SocketAddr::new(canonical(a.ip()), a.port()));
    let mut record = ConnRecord {
        direction: Some(Direction::Inbound),
        src: Some(peer),
        dst,
        dst_workload: pod.spec.name.clone(),
        dst_namespace: pod.spec.namespace.clone(),
        ..Default::default()
    };
    // Only the pod's own addresses: never act as an open proxy, and never
    // dial 127.0.0.1 (that would expose the app's localhost-only listeners).
    let Some(dst) = dst.filter(|d| pod.spec.ips.iter().any(|ip| canonical(*ip) == d.ip())) else {
        reset(client);
        record.error = Some("destination is not one of the pod's addresses; reset".into());
        accesslog::log(&record);
        return;
    };
    let model = pod.mesh.model_for(&pod.spec).await;
    let dst_w = match pod.workload_in(&model) {
        Ok(w) => Some(w),
        Err(why) if pod.mesh.unknown_pods.refuses() => {
            return refuse_unattributed(&pod, client, &mut record, started, why);
        }
        // No model source at all: capture and relay only.
        Err(_) => None,
    };
    let src_w = model.workload_by_ip(peer.ip());
    record.src_workload = src_w.map(|w| w.name().to_owned()).unwrap_or_default();
    record.src_namespace = src_w.map(|w| w.namespace().to_owned()).unwrap_or_default();
    let registration = match dst_w {
        Some(w) => {
            record.dst_identity = w.identity().to_string();
            let conn = TrackedConn {
                src_identity: None,
                src_ip: peer.ip(),
                dst_namespace: w.namespace().to_owned(),
                dst_name: w.name().to_owned(),
                dst,
            };
            // Registered before the check, so a policy change in between is
            // still applied to this connection.
            let registration = pod.mesh.tracker.register(conn.clone());
            if let Admission::Denied(reason) = MeshCtx::admit(&model, &conn) {
                pod.bump(|c| &c.denied);
                reset(client);
                record.error = Some(reason);
                accesslog::log(&record);
                return;
            }
            Some(registration)
        }
        // No model source (see above): plain passthrough.
        None => None,
    };
    let upstream = match dial_app(&pod.netns, dst, pod.app_source(peer.ip(), dst), pod.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            pod.bump(|c| &c.upstream_failed);
            reset(client);
            record.duration = started.elapsed();
            record.error = Some(format!("connect to {dst}: {e}"));
            accesslog::log(&record);
            return;
        }
    };
    let labels =
        ConnectionLabels::new(Reporter::Destination, &peer_of(src_w), &peer_of(dst_w), None, SecurityPolicy::Unknown);
    let guard = pod.mesh.tcp.open(labels);
    let _ = client.set_nodelay(true);
    let done = match registration {
        Some(r) => relay(client, Revocable::new(upstream, r), Some(&guard)).await,
        None => relay(client, upstream, Some(&guard)).await,
    };
    record.bytes_sent = done.sent;
    record.bytes_recv = done.recv;
    record.duration = started.elapsed();
    record.error = done.error.map(|e| e.to_string());
    accesslog::log(&record);
}
