//! The L4 proxy: outbound (15001) and inbound plaintext (15006) for each
//! enrolled pod, relaying to the original destination.

pub mod app_stream;
pub mod hbone_in;
pub mod inbound;
pub mod limits;
pub mod observed;
pub mod outbound;
pub mod relay;
pub mod transparent;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

use crate::netns::Netns;

/// Dials `dst` from inside `netns`. The socket is created in the pod's netns
/// by a thread of the agent's (exempt) cgroup, so the kernel programs never
/// capture it again.
pub async fn dial_in(netns: &Netns, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    dial_as(netns, dst, None, timeout).await
}

/// [`dial_in`], from `source` when given ([`transparent`]).
async fn dial_as(netns: &Netns, dst: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let std_stream = std::net::TcpStream::from(netns.tcp_socket(dst.is_ipv6())?);
    if let Some(source) = source {
        transparent::bind_as(&std_stream, source, dst.is_ipv6())?;
    }
    let socket = TcpSocket::from_std_stream(std_stream);
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {dst} timed out after {timeout:?}"))),
    }
}

/// Dials the app (an original destination) from inside `netns`, as `source` when
/// given (see [`transparent`]); see [`app_stream`] for how the connection is closed.
pub async fn dial_app(
    netns: &Netns,
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<app_stream::AppStream> {
    dial_as(netns, dst, source, timeout).await.map(app_stream::AppStream::new)
}

/// Closes `stream` with a TCP reset, so the peer sees a refusal rather than a
/// clean end of stream (or a hang).
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Refuses a connection of a pod the model does not attribute (its reason in the access
/// log, counted as denied): the one answer of both the inbound and the outbound path.
pub fn refuse_unattributed(
    pod: &PodContext,
    client: TcpStream,
    record: &mut crate::accesslog::ConnRecord,
    started: std::time::Instant,
    why: impl std::fmt::Display,
) {
    pod.bump(|c| &c.denied);
    reset(client);
    record.duration = started.elapsed();
    record.error = Some(why.to_string());
    crate::accesslog::log(record);
}

/// Dials HBONE connections from the source pod's netns (one pool per pod:
/// pods never share a connection).
pub struct PodDialer {
    pub netns: std::sync::Arc<Netns>,
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl mesh::hbone::TcpDialer for PodDialer {
    type Stream = TcpStream;
    async fn dial(&self, key: &mesh::hbone::PoolKey) -> io::Result<TcpStream> {
        dial_in(&self.netns, key.dst, self.timeout).await
    }
}

/// What the proxy needs to serve one enrolled pod.
pub struct PodContext {
    pub spec: crate::pod::PodSpec,
    pub netns: std::sync::Arc<Netns>,
    pub cookie: u64,
    pub counters: crate::stats::Counters,
    pub agent_counters: std::sync::Arc<crate::stats::Counters>,
    pub kernel: std::sync::Arc<crate::kernel::Kernel>,
    pub connect_timeout: Duration,
    pub drain: crate::drain::Drain,
    /// Cancelled on unenrol: the pod's accept loops stop.
    pub cancel: tokio_util::sync::CancellationToken,
    pub mesh: std::sync::Arc<crate::meshctx::MeshCtx>,
    pub pool: mesh::hbone::Pool<PodDialer>,
    /// `false`: a fresh HBONE connection per tunnel (benchmarks).
    pub hbone_pooling: bool,
    pub limits: limits::PodLimits,
    /// Logs changes of the pod's attribution to a model workload.
    pub attribution: crate::attribution::ChangeLog,
    /// The pod routes replies to transparent sockets back to the agent: the app is
    /// dialled with the client's address as its source ([`transparent`]).
    pub transparent: bool,
}

impl PodContext {
    /// The source the app should see for a client at `client` dialling `dst`.
    pub fn app_source(&self, client: IpAddr, dst: SocketAddr) -> Option<IpAddr> {
        self.transparent.then(|| transparent::source_for(client, dst)).flatten()
    }

    /// The pod's own address of the same family as `like` (for logs), or its
    /// first address.
    pub fn pod_ip_like(&self, like: SocketAddr) -> std::net::IpAddr {
        let want_v6 = crate::kernel::addr::canonical(like.ip()).is_ipv6();
        self.spec.ips.iter().copied().find(|ip| ip.is_ipv6() == want_v6).unwrap_or(self.spec.ips[0])
    }

    /// The pod's workload in `model`, or why there is none (logged once per
    /// change, when such pods are refused).
    pub fn workload_in<'m>(
        &self,
        model: &'m mesh::model::Model,
    ) -> Result<&'m mesh::model::Workload, crate::attribution::Unattributed> {
        let found = self.mesh.pod_workload(model, &self.spec);
        if self.mesh.unknown_pods.refuses() {
            self.attribution.note(&self.spec.key(), found.as_ref().err());
        }
        found
    }

    pub(crate) fn bump(&self, pick: impl Fn(&crate::stats::Counters) -> &std::sync::atomic::AtomicU64) {
        crate::stats::bump(pick(&self.counters));
        crate::stats::bump(pick(&self.agent_counters));
    }
}

/// Accepts on `listener` until shutdown or unenrol, handing each connection
/// to `handle` on its own task. Past the pod's connection cap a new
/// connection is reset at once (counted in `pillion_limit_refusals_total`).
pub async fn accept_loop<F, Fut>(
    pod: std::sync::Arc<PodContext>,
    listener: tokio::net::TcpListener,
    name: &'static str,
    handle: F,
) where
    F: Fn(std::sync::Arc<PodContext>, TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut drain = pod.drain.clone();
    let mut backoff = mesh::limits::AcceptBackoff::new(name);
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.stopped() => break,
            _ = pod.cancel.cancelled() => break,
            accepted = backoff.accept(&listener) => accepted,
        };
        let Some(slot) = pod.limits.connections.try_acquire() else {
            reset(stream);
            continue;
        };
        let guard = pod.drain.guard();
        let fut = handle(pod.clone(), stream, peer);
        tokio::spawn(async move {
            fut.await;
            drop((slot, guard));
        });
    }
}

/// Counts a connection as active while it lives.
pub(crate) struct ActiveGuard<'a>(&'a PodContext);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(pod: &'a PodContext) -> Self {
        pod.bump(|c| &c.active);
        Self(pod)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.counters.active.fetch_sub(1, Relaxed);
        self.0.agent_counters.active.fetch_sub(1, Relaxed);
    }
}
