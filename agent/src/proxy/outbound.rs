//! Outbound: a pod's captured connect arrives on 15001; recover where it was
//! going, decide the route from the model (HBONE, a service endpoint, the
//! service's waypoint, or passthrough) and carry it there. A pod the model
//! does not attribute gets no route at all: its traffic would leave either
//! in plaintext or under some other workload's identity.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use mesh::{
    hbone::{PoolKey, TunnelRequest},
    model::Workload,
    telemetry::{ConnectionLabels, Peer, Reporter, SecurityPolicy, ServiceRef},
};
use pillion_common::{OrigDstKey, SIDE_V4, SIDE_V6};
use tokio::net::TcpStream;

use super::{ActiveGuard, PodContext, dial_app, observed::Metered, refuse_unattributed, relay::relay, reset};
use crate::{
    accesslog::{self, ConnRecord, Direction},
    kernel::addr::socket_addr,
    route::{self, Hop, WorkloadKey},
};

/// Which listener a connection reached: the key the kernel used.
pub fn side_of(local: SocketAddr) -> u32 {
    match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => SIDE_V6,
        _ => SIDE_V4,
    }
}

/// Metrics identity of a workload (or of an unknown peer).
pub fn peer_of(w: Option<&Workload>) -> Peer {
    match w {
        Some(w) => Peer::workload(w.name(), w.namespace()).identity(w.identity()).pod_labels(w.labels.iter()),
        None => Peer::unknown(),
    }
}

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    pod.bump(|c| &c.outbound_accepted);
    let _active = ActiveGuard::new(&pod);
    let side = client.local_addr().map(side_of).unwrap_or(SIDE_V4);
    let key = OrigDstKey { netns_cookie: pod.cookie, side, client_port: u32::from(peer.port()) };
    let mut record = ConnRecord {
        direction: Some(Direction::Outbound),
        src: Some(SocketAddr::new(pod.pod_ip_like(peer), peer.port())),
        src_workload: pod.spec.name.clone(),
        src_namespace: pod.spec.namespace.clone(),
        ..Default::default()
    };
    // A missing record means we cannot know where this was going: reset it
    // rather than guess. (Taken before any wait: the entry is keyed by the
    // client port, which is free to be reused once this connection ends.)
    let Some(dst) = pod.kernel.take_orig_dst(key).as_ref().and_then(socket_addr) else {
        pod.bump(|c| &c.no_orig_dst);
        reset(client);
        record.error = Some("no original destination recorded for this connection; reset".into());
        accesslog::log(&record);
        return;
    };
    record.dst = Some(dst);
    let model = pod.mesh.model_for(&pod.spec).await;
    let src_w = match pod.workload_in(&model) {
        Ok(w) => Some(w),
        Err(why) if pod.mesh.unknown_pods.refuses() => {
            return refuse_unattributed(&pod, client, &mut record, started, why);
        }
        // No model source at all: capture and relay only.
        Err(_) => None,
    };
    record.src_identity = src_w.map(|w| w.identity().to_string()).unwrap_or_default();
    let route = route::route(&model, src_w, dst, pod.mesh.next_rr());
    let service = route.service.as_ref().map(|(ns, name)| ServiceRef::new(name, ns, "cluster.local"));
    if let Some((ns, name)) = &route.service {
        record.dst_service = format!("{name}.{ns}.svc.cluster.local");
    }
    let src_peer = peer_of(src_w);
    let mut last_error = if route.hops.is_empty() {
        Some("no endpoint to send to (empty service or waypoint)".to_string())
    } else {
        None
    };
    for hop in &route.hops {
        let dst_key = match hop {
            Hop::Plain { workload, .. } => workload.clone(),
            Hop::Hbone { workload, .. } => Some(workload.clone()),
        };
        let dst_w = dst_key.as_ref().and_then(|k: &WorkloadKey| model.workload(&k.namespace, &k.name));
        record.dst_workload = dst_key.as_ref().map(|k| k.name.clone()).unwrap_or_default();
        record.dst_namespace = dst_key.as_ref().map(|k| k.namespace.clone()).unwrap_or_default();
        let dst_peer = peer_of(dst_w);
        match hop {
            Hop::Plain { dst: addr, .. } => match dial_app(&pod.netns, *addr, None, pod.connect_timeout).await {
                Ok(upstream) => {
                    record.dst = Some(*addr);
                    let labels = ConnectionLabels::new(
                        Reporter::Source,
                        &src_peer,
                        &dst_peer,
                        service.as_ref(),
                        SecurityPolicy::Unknown,
                    );
                    return finish(&pod, client, upstream, labels, record, started).await;
                }
                Err(e) => last_error = Some(format!("connect to {addr}: {e}")),
            },
            Hop::Hbone { hbone_addr, target, identity, via_waypoint, .. } => {
                let Some(src_w) = src_w else { continue };
                // Without pooling, a unique key per tunnel never shares.
                let src_pod = if pod.hbone_pooling {
                    pod.spec.key()
                } else {
                    format!("{}#{}", pod.spec.key(), pod.mesh.next_rr())
                };
                let key = PoolKey {
                    src_pod,
                    src_identity: src_w.identity().clone(),
                    dst_identity: identity.clone(),
                    dst: *hbone_addr,
                };
                record.dst_hbone = Some(*hbone_addr);
                record.dst_identity = identity.to_string();
                if *via_waypoint {
                    record.dst_workload = String::new();
                }
                match pod.pool.connect(key, TunnelRequest::new(target.clone())).await {
                    Ok(tunnel) => {
                        if let Some(a) = target.socket_addr() {
                            record.dst = Some(a);
                        }
                        let labels = ConnectionLabels::new(
                            Reporter::Source,
                            &src_peer,
                            &dst_peer,
                            service.as_ref(),
                            SecurityPolicy::MutualTls,
                        );
                        return finish_tunnel(&pod, client, tunnel, labels, record, started).await;
                    }
                    Err(e) => last_error = Some(format!("HBONE to {hbone_addr}: {e}")),
                }
            }
        }
        tracing::debug!(pod = %pod.spec.key(), error = ?last_error, "upstream candidate failed; trying the next");
    }
    pod.bump(|c| &c.upstream_failed);
    reset(client);
    record.duration = started.elapsed();
    record.error = last_error;
    accesslog::log(&record);
}

/// Relays to the chosen upstream, with live metrics, then logs.
async fn finish<U>(
    pod: &PodContext,
    client: TcpStream,
    upstream: U,
    labels: ConnectionLabels,
    mut record: ConnRecord,
    started: Instant,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let guard = pod.mesh.tcp.open(labels);
    let _ = client.set_nodelay(true);
    let done = relay(client, upstream, Some(&guard)).await;
    record.bytes_sent = done.sent;
    record.bytes_recv = done.recv;
    record.duration = started.elapsed();
    record.error = done.error.map(|e| e.to_string());
    accesslog::log(&record);
}

/// Relays over an HBONE tunnel with its single-copy relay, counting on the
/// client's socket.
async fn finish_tunnel(
    pod: &PodContext,
    mut client: TcpStream,
    tunnel: mesh::hbone::Tunnel,
    labels: ConnectionLabels,
    mut record: ConnRecord,
    started: Instant,
) {
    let guard = pod.mesh.tcp.open(labels);
    let _ = client.set_nodelay(true);
    let result = tunnel.relay(Metered::new(&mut client, &guard)).await;
    record.bytes_sent = guard.received();
    record.bytes_recv = guard.sent();
    record.duration = started.elapsed();
    if let Err(e) = result {
        record.error = Some(e.to_string());
        reset(client);
    }
    accesslog::log(&record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_follow_the_listener_address() {
        assert_eq!(side_of("127.0.0.1:15001".parse().unwrap()), SIDE_V4);
        assert_eq!(side_of("[::ffff:127.0.0.1]:15001".parse().unwrap()), SIDE_V4);
        assert_eq!(side_of("[::1]:15001".parse().unwrap()), SIDE_V6);
    }
}
