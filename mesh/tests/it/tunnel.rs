//! Tunnels that should work: bulk data, many streams, headers, IPv6 authorities.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::hbone::{HboneServer, TcpUpstream, TunnelRequest};
use mesh::parse::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn pattern(i: usize) -> u8 {
    // Position-dependent, so a dropped, duplicated or reordered chunk shows up.
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_64_mib_exactly_both_ways() {
    const LEN: usize = 64 * 1024 * 1024;
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server_cert = pki.issue(&server_id, DAY).await;
    let client_cert = pki.issue(&client_id, DAY).await;
    // A real TCP upstream, through the server's default dialer.
    let upstream = tcp_echo().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hook = Arc::new(RecordingHook::default());
    let server = HboneServer::builder(server_cert, hook, TcpUpstream).clock(pki.shared_clock()).build();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(listener, shutdown.clone()));

    let pool = pool(client_cert, pki.shared_clock(), 100);
    let tunnel =
        within(10, pool.connect(key("p", &client_id, &server_id, addr), TunnelRequest::new(upstream))).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..LEN).map(pattern).collect();
        for part in chunk.chunks(1 << 20) {
            w.write_all(part).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    within(60, async {
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + k), "byte {} differs", got + k);
            }
            got += n;
        }
    })
    .await;
    writer.await.unwrap();
    assert_eq!(got, LEN, "echo must return exactly what was sent");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams_share_five_connections() {
    const STREAMS: usize = 1000;
    const PER_CONN: usize = 200;
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), PER_CONN);
    let key = key("p", &client_id, &server_id, server.addr);
    // Every task holds its tunnel open until all are open: 1,000 truly concurrent streams.
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let (pool, key, barrier) = (pool.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let target: SocketAddr = ([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080).into();
            let mut t = pool.connect(key, TunnelRequest::new(target)).await.unwrap();
            barrier.wait().await;
            let msg = format!("stream {i}");
            assert_eq!(round_trip(&mut t, msg.as_bytes()).await, msg.as_bytes());
            t.connection_id()
        }));
    }
    let mut conns = std::collections::HashSet::new();
    within(60, async {
        for t in tasks {
            conns.insert(t.await.unwrap());
        }
    })
    .await;
    assert_eq!(conns.len(), STREAMS / PER_CONN, "tunnels must fill connections before opening more");
    assert_eq!(server.dialer.dials.load(std::sync::atomic::Ordering::SeqCst), STREAMS);
}

#[tokio::test]
async fn hook_sees_identity_target_and_trace_headers_and_200_carries_baggage() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let hook =
        RecordingHook { baggage: Some("k8s.deployment.name=server,service.name=server".into()), ..Default::default() };
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), hook).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let target = Authority::parse("[fd00::5]:9080").unwrap();
    let mut request = TunnelRequest::new(target.clone());
    request.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    request.baggage = Some("k8s.namespace.name=default".into());
    request.forwarded = Some("for=\"[fd00::9]:1234\"".into());
    let mut t = within(10, pool.connect(key("p", &client_id, &server_id, server.addr), request)).await.unwrap();
    assert_eq!(t.response_baggage(), Some("k8s.deployment.name=server,service.name=server"));
    assert_eq!(round_trip(&mut t, b"ping").await, b"ping");

    let seen = server.hook.seen.lock().unwrap().clone();
    let [req] = seen.as_slice() else { panic!("one CONNECT expected, saw {}", seen.len()) };
    assert_eq!(req.peer_identity, client_id);
    assert_eq!(req.local_identity, server_id);
    assert_eq!(req.target, target, "IPv6 target must arrive as [addr]:port");
    assert_eq!(req.local_addr, server.addr);
    assert_eq!(req.traceparent.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_eq!(req.baggage.as_deref(), Some("k8s.namespace.name=default"));
    let fwd = req.forwarded_elements().unwrap().unwrap();
    assert_eq!(fwd[0].get("for"), Some("[fd00::9]:1234"));
}

#[tokio::test]
async fn half_close_lets_the_reply_finish_after_the_request_ends() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let mut t = pool
        .connect(
            key("p", &client_id, &server_id, server.addr),
            TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80))),
        )
        .await
        .unwrap();
    // Shut down our side first; the echo's data and its EOF must still arrive.
    t.write_all(b"last words").await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(10, t.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"last words");
    // A default 200 still carries baggage when the hook gives none.
    let t2 = pool
        .connect(
            key("p", &client_id, &server_id, server.addr),
            TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80))),
        )
        .await
        .unwrap();
    assert_eq!(t2.response_baggage(), Some("k8s.namespace.name=default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_stall_its_neighbours() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let k = key("p", &client_id, &server_id, server.addr);
    let target = || TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)));
    // Stream A: 32 MiB sent, echoed back, never read: its windows and buffers (about 10 MiB
    // in all) fill and it stalls.
    let stalled = pool.connect(k.clone(), target()).await.unwrap();
    let (_unread, mut w) = tokio::io::split(stalled);
    let pusher = tokio::spawn(async move {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..32 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    // Stream B on the same connection still moves 2 MiB both ways.
    let mut busy = pool.connect(k, target()).await.unwrap();
    let payload: Vec<u8> = (0..2 * 1024 * 1024).map(pattern).collect();
    let (mut r, mut w) = tokio::io::split(&mut busy);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(20, async { tokio::join!(send, recv) }).await;
    assert!(back == payload, "neighbour stream corrupted or cut short ({} bytes)", back.len());
    assert!(!pusher.is_finished(), "stream A should still be stalled on flow control");
    pusher.abort();
}

#[tokio::test]
async fn shutdown_stops_new_connections_but_lets_open_tunnels_finish() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let k = key("p", &client_id, &server_id, server.addr);
    let mut open = pool.connect(k.clone(), TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))).await.unwrap();
    open.write_all(b"before drain").await.unwrap();
    server.shutdown.cancel();
    // The open tunnel completes after the drain started.
    assert_eq!(within(10, round_trip(&mut open, b", after")).await, b"before drain, after");
    drop(open);
    // No new tunnels: the connection got GOAWAY and the listener is gone.
    let other = key("other-pod", &client_id, &server_id, server.addr);
    let err = within(10, pool.connect(other, TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80))))).await;
    assert!(err.is_err(), "a drained server must not open tunnels");
}

#[tokio::test]
async fn ipv6_hbone_with_the_certificate_chosen_by_dialled_address() {
    use mesh::certs::{CertManager, CertManagerConfig, CertMetrics};
    use mesh::hbone::ByLocalAddress;

    let pki = Pki::new();
    let certs = CertManager::new(
        pki.ca.clone(),
        CertManagerConfig { clock: pki.shared_clock(), ..CertManagerConfig::default() },
        CertMetrics::default(),
    );
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let owner = server_id.clone();
    let resolver = ByLocalAddress {
        certs: certs.clone(),
        lookup: move |local: SocketAddr| local.ip().is_loopback().then(|| owner.clone()),
    };
    let hook = Arc::new(RecordingHook::default());
    let server =
        HboneServer::builder(resolver, hook.clone(), Arc::new(EchoDialer::default())).clock(pki.shared_clock()).build();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    let pool = mesh::hbone::Pool::new(
        mesh::hbone::PoolConfig { clock: pki.shared_clock(), ..Default::default() },
        mesh::hbone::DirectTcpDialer,
        Arc::new(certs.clone()),
    );
    let target = SocketAddr::new(addr.ip(), 8080);
    let mut t =
        within(10, pool.connect(key("p", &client_id, &server_id, addr), TunnelRequest::new(target))).await.unwrap();
    assert_eq!(round_trip(&mut t, b"v6").await, b"v6");
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen[0].target.to_string(), "[::1]:8080");
    assert!(seen[0].targets_dialled_address());
    assert_eq!(seen[0].local_identity, server_id);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_relay_moves_an_application_socket_with_half_close() {
    let pki = Pki::new();
    let (client_id, server_id) = (id("default", "client"), id("default", "server"));
    let server = start_server(pki.issue(&server_id, DAY).await, pki.shared_clock(), RecordingHook::default()).await;
    let pool = pool(pki.issue(&client_id, DAY).await, pki.shared_clock(), 100);
    let tunnel = pool
        .connect(
            key("p", &client_id, &server_id, server.addr),
            TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80))),
        )
        .await
        .unwrap();
    // The "application" end of a socket pair; the agent would pass the accepted TCP stream.
    let (mut app, agent_side) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(tunnel.relay(agent_side));
    let payload: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(pattern).collect();
    let (mut r, mut w) = tokio::io::split(&mut app);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(20, async { tokio::join!(send, recv) }).await;
    assert!(back == payload, "relay corrupted or cut the stream ({} bytes)", back.len());
    let (sent, received) = within(10, relay).await.unwrap().unwrap();
    assert_eq!((sent, received), (payload.len() as u64, payload.len() as u64));
}
