//! Inbound plaintext: sk_lookup hands a connection for the pod to 15006 with
//! its original destination as the local address; dial the app there.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;

use super::{ActiveGuard, PodContext, dial_in, relay::relay, reset};
use crate::{
    accesslog::{self, ConnRecord, Direction},
    kernel::addr::canonical,
};

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    pod.bump(|c| &c.inbound_accepted);
    let active = ActiveGuard::new(&pod);
    let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
    let dst = client.local_addr().ok().map(|a| SocketAddr::new(canonical(a.ip()), a.port()));
    let mut record = ConnRecord {
        direction: Direction::Inbound,
        src: peer,
        dst,
        pod_namespace: &pod.spec.namespace,
        pod_name: &pod.spec.name,
        bytes_sent: 0,
        bytes_recv: 0,
        duration: started.elapsed(),
        error: None,
    };
    // Only the pod's own addresses: never act as an open proxy, and never
    // dial 127.0.0.1 (that would expose the app's localhost-only listeners).
    let Some(dst) = dst.filter(|d| pod.spec.ips.iter().any(|ip| canonical(*ip) == d.ip())) else {
        reset(client);
        record.error = Some("destination is not one of the pod's addresses; reset".into());
        accesslog::log(&record);
        return;
    };
    let upstream = match dial_in(&pod.netns, dst, pod.connect_timeout).await {
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
    let _ = client.set_nodelay(true);
    let done = relay(client, upstream).await;
    record.bytes_sent = done.sent;
    record.bytes_recv = done.recv;
    record.duration = started.elapsed();
    record.error = done.error.map(|e| e.to_string());
    accesslog::log(&record);
    drop(active);
}
