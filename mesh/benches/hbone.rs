//! Micro-benchmarks (not tests): bulk throughput through one HBONE tunnel against plain TCP
//! on loopback, tunnel-open rate on a warm pool, and full mutual-TLS 1.3 handshakes.
//!
//! `cargo bench -p mesh --bench hbone`. Figures drift on a shared 2-core machine: compare the
//! tunnel and TCP rows of one run rather than absolute numbers across runs.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use mesh::Identity;
use mesh::ca::{EmbeddedCa, generate_csr};
use mesh::clock::SystemClock;
use mesh::hbone::{
    Accepted, ConnectHook, ConnectRequest, DirectTcpDialer, HboneServer, Pool, PoolConfig, PoolKey, Refusal,
    TunnelRequest, UpstreamDialer,
};
use mesh::tls::{TrustBundle, WorkloadCert, client_config, server_config};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const BULK: usize = 64 * 1024 * 1024;

fn main() {
    divan::main();
}

struct Env {
    rt: Runtime,
    client: WorkloadCert,
    server: WorkloadCert,
    hbone: SocketAddr,
    tcp_sink: SocketAddr,
    pool: Pool<DirectTcpDialer>,
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ca, _) = EmbeddedCa::generate("cluster.local", SystemClock::shared()).unwrap();
    let issue = |identity: &Identity| {
        let csr = generate_csr(identity).unwrap();
        let issued = ca.sign_csr(identity, &csr.csr_pem, Duration::from_secs(86400)).unwrap();
        WorkloadCert::new(issued.chain, csr.key, TrustBundle::new(issued.roots).unwrap()).unwrap()
    };
    let client = issue(&client_id());
    let server = issue(&server_id());
    let (hbone, tcp_sink) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hbone = l.local_addr().unwrap();
        let srv = HboneServer::builder(server.clone(), AllowAll, SinkDialer).build();
        tokio::spawn(srv.serve(l, CancellationToken::new()));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_sink = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                s.set_nodelay(true).unwrap();
                tokio::spawn(drain(s));
            }
        });
        (hbone, tcp_sink)
    });
    let pool = Pool::new(PoolConfig::default(), DirectTcpDialer, Arc::new(client.clone()));
    Env { rt, client, server, hbone, tcp_sink, pool }
});

fn client_id() -> Identity {
    Identity::new("cluster.local", "default", "client").unwrap()
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "default", "server").unwrap()
}

fn key(env: &Env) -> PoolKey {
    PoolKey { src_pod: "bench".into(), src_identity: client_id(), dst_identity: server_id(), dst: env.hbone }
}

struct AllowAll;

#[async_trait]
impl ConnectHook for AllowAll {
    async fn authorize(&self, _r: &ConnectRequest) -> Result<Accepted, Refusal> {
        Ok(Accepted::default())
    }
}

/// Upstream that reads everything, then closes: a discard server in memory.
struct SinkDialer;

#[async_trait]
impl UpstreamDialer for SinkDialer {
    type Stream = DuplexStream;
    async fn dial(&self, _r: &ConnectRequest) -> std::io::Result<DuplexStream> {
        let (near, far) = tokio::io::duplex(1 << 20);
        tokio::spawn(drain(far));
        Ok(near)
    }
}

async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 1 << 18];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    let _ = s.shutdown().await;
}

/// Sends BULK bytes, half-closes, and waits for the far side's EOF (all bytes consumed).
async fn push<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    static DATA: LazyLock<Vec<u8>> = LazyLock::new(|| vec![0x5a; 1 << 20]);
    for _ in 0..BULK / DATA.len() {
        s.write_all(&DATA).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn bulk_64mib_plain_tcp(b: Bencher) {
    let env = &*ENV;
    b.counter(BytesCount::new(BULK)).bench(|| {
        env.rt.block_on(async {
            let s = TcpStream::connect(env.tcp_sink).await.unwrap();
            s.set_nodelay(true).unwrap();
            push(s).await;
        })
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn bulk_64mib_hbone_tunnel(b: Bencher) {
    let env = &*ENV;
    b.counter(BytesCount::new(BULK)).bench(|| {
        env.rt.block_on(async {
            let t =
                env.pool.connect(key(env), TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))).await.unwrap();
            push(t).await;
        })
    });
}

/// CONNECT round trip on an already-open pooled connection (open, 200, close).
#[divan::bench(sample_count = 20, sample_size = 50)]
fn tunnel_open_warm_pool(b: Bencher) {
    let env = &*ENV;
    env.rt.block_on(async {
        drop(env.pool.connect(key(env), TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))).await.unwrap());
    });
    b.counter(ItemsCount::new(1usize)).bench(|| {
        env.rt.block_on(async {
            let t =
                env.pool.connect(key(env), TunnelRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)))).await.unwrap();
            drop(t);
        })
    });
}

/// A full mutual TLS 1.3 handshake (P-256 SVIDs, chain and identity checks on both sides),
/// over an in-memory pipe so only TLS work is measured. Both sides run on this machine.
#[divan::bench(sample_count = 20, sample_size = 20)]
fn mtls_full_handshake(b: Bencher) {
    let env = &*ENV;
    let clock = SystemClock::shared();
    let server = Arc::new(server_config(&env.server, clock.clone()).unwrap());
    let client = Arc::new(client_config(&env.client, vec![server_id()], clock).unwrap());
    b.counter(ItemsCount::new(1usize)).bench(|| {
        env.rt.block_on(async {
            let (c, s) = tokio::io::duplex(64 * 1024);
            let accept = tokio_rustls::TlsAcceptor::from(server.clone()).accept(s);
            let connect = tokio_rustls::TlsConnector::from(client.clone())
                .connect(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()), c);
            let (mut s, c) = tokio::join!(accept, connect);
            let mut c = c.unwrap();
            // TLS 1.3 clients finish before the server has checked their certificate:
            // one byte each way completes both sides' verification.
            c.write_all(b"x").await.unwrap();
            let s = s.as_mut().unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
        })
    });
}
