//! Outbound: a pod's captured connect arrives on 15001; recover where it was
//! going and dial that from inside the pod.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use pillion_common::{OrigDstKey, SIDE_V4, SIDE_V6};
use tokio::net::TcpStream;

use super::{ActiveGuard, PodContext, dial_in, relay::relay, reset};
use crate::{
    accesslog::{self, ConnRecord, Direction},
    kernel::addr::socket_addr,
};

/// Which listener a connection reached: the key the kernel used.
pub fn side_of(local: SocketAddr) -> u32 {
    match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => SIDE_V6,
        _ => SIDE_V4,
    }
}

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    pod.bump(|c| &c.outbound_accepted);
    let active = ActiveGuard::new(&pod);
    let side = client.local_addr().map(side_of).unwrap_or(SIDE_V4);
    let key = OrigDstKey { netns_cookie: pod.cookie, side, client_port: u32::from(peer.port()) };
    let src = SocketAddr::new(pod.pod_ip_like(peer), peer.port());
    let mut record = ConnRecord {
        direction: Direction::Outbound,
        src,
        dst: None,
        pod_namespace: &pod.spec.namespace,
        pod_name: &pod.spec.name,
        bytes_sent: 0,
        bytes_recv: 0,
        duration: started.elapsed(),
        error: None,
    };
    // A missing record means we cannot know where this was going: reset it
    // rather than guess.
    let Some(dst) = pod.kernel.take_orig_dst(key).as_ref().and_then(socket_addr) else {
        pod.bump(|c| &c.no_orig_dst);
        reset(client);
        record.error = Some("no original destination recorded for this connection; reset".into());
        accesslog::log(&record);
        return;
    };
    record.dst = Some(dst);
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
