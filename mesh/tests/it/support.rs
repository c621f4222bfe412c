//! Test PKI, servers, hooks and dialers shared by the integration tests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mesh::ca::EmbeddedCa;
use mesh::ca::embedded::CaPem;
use mesh::clock::{ManualClock, SharedClock};
use mesh::hbone::{
    Accepted, ConnectHook, ConnectRequest, DirectTcpDialer, HboneServer, Pool, PoolConfig, PoolKey, Refusal,
    UpstreamDialer,
};
use mesh::tls::{TrustBundle, WorkloadCert};
use mesh::{Identity, ca::CertificateSource, ca::SignRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

/// A CA on a manual clock, plus its PEM (to mint deliberately broken certificates).
pub struct Pki {
    pub ca: Arc<EmbeddedCa>,
    pub pem: CaPem,
    pub clock: ManualClock,
}

impl Pki {
    pub fn new() -> Self {
        let clock = ManualClock::starting_now();
        let (ca, pem) = EmbeddedCa::generate(TD, clock.shared()).unwrap();
        Self { ca: Arc::new(ca), pem, clock }
    }

    pub fn shared_clock(&self) -> SharedClock {
        self.clock.shared()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.ca.roots().to_vec()).unwrap()
    }

    /// A valid workload certificate through the normal CSR path.
    pub async fn issue(&self, identity: &Identity, lifetime: Duration) -> WorkloadCert {
        let csr = mesh::ca::generate_csr(identity).unwrap();
        let issued =
            self.ca.sign(SignRequest { identity: identity.clone(), csr_pem: csr.csr_pem, lifetime }).await.unwrap();
        WorkloadCert::new(issued.chain, csr.key, TrustBundle::new(issued.roots).unwrap()).unwrap()
    }
}

/// Records every CONNECT it sees; refuses targets whose port is in `deny_ports`.
#[derive(Default)]
pub struct RecordingHook {
    pub seen: Mutex<Vec<ConnectRequest>>,
    pub deny_ports: Vec<u16>,
    pub baggage: Option<String>,
}

#[async_trait]
impl ConnectHook for RecordingHook {
    async fn authorize(&self, request: &ConnectRequest) -> Result<Accepted, Refusal> {
        self.seen.lock().unwrap().push(request.clone());
        if self.deny_ports.contains(&request.target.port) {
            return Err(Refusal::Denied("port denied by test policy".into()));
        }
        Ok(Accepted { baggage: self.baggage.clone() })
    }
}

/// Upstream that echoes every byte in memory (no sockets) and counts dials.
#[derive(Default)]
pub struct EchoDialer {
    pub dials: AtomicUsize,
}

#[async_trait]
impl UpstreamDialer for EchoDialer {
    type Stream = DuplexStream;
    async fn dial(&self, _request: &ConnectRequest) -> io::Result<DuplexStream> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (near, far) = tokio::io::duplex(256 * 1024);
        tokio::spawn(echo(far));
        Ok(near)
    }
}

/// Copies input to output, then half-closes: an echo server.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A real TCP echo server on loopback.
pub async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(echo(s));
        }
    });
    addr
}

/// A running HBONE server presenting `cert`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hook: Arc<RecordingHook>,
    pub dialer: Arc<EchoDialer>,
    pub shutdown: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_server(cert: WorkloadCert, clock: SharedClock, hook: RecordingHook) -> TestServer {
    let hook = Arc::new(hook);
    let dialer = Arc::new(EchoDialer::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = HboneServer::builder(cert, hook.clone(), dialer.clone())
        .clock(clock)
        .default_baggage("k8s.namespace.name=default")
        .build();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    TestServer { addr, hook, dialer, shutdown }
}

pub fn key(pod: &str, src: &Identity, dst: &Identity, addr: SocketAddr) -> PoolKey {
    PoolKey { src_pod: pod.into(), src_identity: src.clone(), dst_identity: dst.clone(), dst: addr }
}

pub fn pool(cert: WorkloadCert, clock: SharedClock, max_streams: usize) -> Pool<DirectTcpDialer> {
    let config = PoolConfig { max_streams, clock, ..PoolConfig::default() };
    Pool::new(config, DirectTcpDialer, Arc::new(cert))
}

/// Writes `msg`, half-closes, and returns everything read back.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    back
}

/// Bounds a test step so a hang fails fast instead of stalling CI.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test step timed out")
}
