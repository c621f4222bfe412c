//! Pool behaviour: per-pod isolation, idle release on the injected clock, timeouts.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mesh::hbone::{HboneError, Pool, PoolConfig, PoolKey, TcpDialer, TunnelRequest};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn target() -> TunnelRequest {
    TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))
}

#[tokio::test]
async fn pods_never_share_a_connection_and_idle_connections_close() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let config =
        PoolConfig { idle_timeout: Duration::from_secs(30), clock: pki.shared_clock(), ..PoolConfig::default() };
    let pool = Pool::new(config, mesh::hbone::DirectTcpDialer, Arc::new(pki.issue(&client_id, DAY).await));
    let (a, b) = (key("pod-a", &client_id, &server_id, server.addr), key("pod-b", &client_id, &server_id, server.addr));
    let mut ta = pool.connect(a.clone(), target()).await.unwrap();
    let mut tb = pool.connect(b.clone(), target()).await.unwrap();
    let ta2 = pool.connect(a.clone(), target()).await.unwrap();
    assert_ne!(ta.connection_id(), tb.connection_id(), "two pods, two sockets");
    assert_eq!(ta.connection_id(), ta2.connection_id(), "one pod reuses its connection");
    assert_eq!(pool.connection_count(), 2);
    assert_eq!(round_trip(&mut ta, b"a").await, b"a");
    assert_eq!(round_trip(&mut tb, b"b").await, b"b");
    drop((ta, ta2, tb));

    // Not idle long enough yet: nothing closes.
    pki.clock.advance(Duration::from_secs(10));
    tokio::task::yield_now().await;
    assert_eq!(pool.connection_count(), 2);
    // Past the idle timeout: both close.
    pki.clock.advance(Duration::from_secs(25));
    let mut open = pool.watch_connections();
    within(10, open.wait_for(|n| *n == 0)).await.unwrap();
    assert_eq!(pool.connections_for(&a), 0);
    // And the pool dials afresh afterwards.
    let mut t = pool.connect(a, target()).await.unwrap();
    assert_eq!(round_trip(&mut t, b"again").await, b"again");
}

#[tokio::test]
async fn a_peer_that_never_answers_the_handshake_times_out() {
    let pki = Pki::new();
    let client_id = id("default", "client");
    // Accepts TCP, then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let config = PoolConfig {
        handshake_timeout: Duration::from_millis(200),
        clock: pki.shared_clock(),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config, mesh::hbone::DirectTcpDialer, Arc::new(pki.issue(&client_id, DAY).await));
    let err =
        within(10, pool.connect(key("p", &client_id, &id("default", "server"), addr), target())).await.unwrap_err();
    assert!(matches!(err, HboneError::HandshakeTimeout(a) if a == addr), "{err:?}");
    hold.abort();
}

/// Never completes a dial, like a SYN into a black hole.
struct BlackHole;

#[async_trait]
impl TcpDialer for BlackHole {
    type Stream = TcpStream;
    async fn dial(&self, _key: &PoolKey) -> io::Result<TcpStream> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_dial_that_hangs_times_out() {
    let pki = Pki::new();
    let client_id = id("default", "client");
    let config = PoolConfig { connect_timeout: Duration::from_millis(100), ..PoolConfig::default() };
    let pool = Pool::new(config, BlackHole, Arc::new(pki.issue(&client_id, DAY).await));
    let dst: SocketAddr = ([127, 0, 0, 1], 15008).into();
    let err =
        within(10, pool.connect(key("p", &client_id, &id("default", "server"), dst), target())).await.unwrap_err();
    assert!(matches!(err, HboneError::ConnectTimeout(_)), "{err:?}");
}

#[tokio::test]
async fn removing_a_pod_closes_its_connections_only() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let a = key("pod-a", &client_id, &server_id, server.addr);
    let b = key("pod-b", &client_id, &server_id, server.addr);
    let _ta = pool.connect(a.clone(), target()).await.unwrap();
    let mut tb = pool.connect(b, target()).await.unwrap();
    pool.remove_pod("pod-a");
    let mut open = pool.watch_connections();
    within(10, open.wait_for(|n| *n == 1)).await.unwrap();
    assert_eq!(pool.connections_for(&a), 0);
    assert_eq!(round_trip(&mut tb, b"still here").await, b"still here");
}

#[tokio::test]
async fn a_connection_the_server_drains_is_replaced() {
    use mesh::hbone::HboneServer;
    use tokio_util::sync::CancellationToken;

    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = HboneServer::builder(
        pki.issue(&server_id, DAY).await,
        Arc::new(RecordingHook::default()),
        Arc::new(EchoDialer::default()),
    )
    .clock(pki.shared_clock())
    .build();
    // Accept by hand so the first connection can be drained on its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = CancellationToken::new();
    let first_token = first.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, peer)) = listener.accept().await {
            let token = if n == 0 { first_token.clone() } else { CancellationToken::new() };
            n += 1;
            let local = s.local_addr().unwrap();
            tokio::spawn(server.clone().serve_connection(s, peer, local, token));
        }
    });
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let k = key("p", &client_id, &server_id, addr);
    let mut t1 = pool.connect(k.clone(), target()).await.unwrap();
    assert_eq!(round_trip(&mut t1, b"one").await, b"one");
    drop(t1);
    // The server drains its end (GOAWAY); the next tunnel must still open.
    first.cancel();
    let mut t2 = within(10, pool.connect(k, target())).await.unwrap();
    assert_eq!(round_trip(&mut t2, b"two").await, b"two");
}

#[tokio::test]
async fn a_failed_dial_leaves_no_pool_entry_behind() {
    let pki = Pki::new();
    let client_id = id("default", "client");
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let k = key("p", &client_id, &id("default", "server"), closed);
    let err = within(10, pool.connect(k.clone(), target())).await.unwrap_err();
    assert!(matches!(err, HboneError::Dial { .. }), "{err:?}");
    assert_eq!(pool.connections_for(&k), 0);
    assert_eq!(pool.tracked_keys(), 0, "failed dials must not accumulate state");
}
