//! A gRPC echo backend and client (tonic, `tests/proto/echo.proto`) for the waypoint's gRPC
//! tests: unary calls (the first `fail-first` of them answered `UNAVAILABLE`, to be retried)
//! and a bidirectional stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("pillion.test");
}

use pb::Msg;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

struct Backend {
    name: String,
    fail_first: u64,
    attempts: AtomicU64,
}

#[tonic::async_trait]
impl Echo for Arc<Backend> {
    async fn say(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.fail_first {
            return Err(Status::unavailable(format!("{} attempt {attempt} fails on purpose", self.name)));
        }
        let mut m = request.into_inner();
        m.backend = self.name.clone();
        m.attempt = attempt;
        Ok(Response::new(m))
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

    async fn chat(&self, request: Request<Streaming<Msg>>) -> Result<Response<Self::ChatStream>, Status> {
        let name = self.name.clone();
        let out = request.into_inner().map(move |m| {
            m.map(|mut m| {
                m.backend = name.clone();
                m
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// `grpc-backend <addr> <name> [fail-first=<n>]`: serves until killed.
pub fn backend(addr: SocketAddr, name: String, opts: &[String]) {
    let fail_first = opts.iter().find_map(|o| o.strip_prefix("fail-first=")?.parse().ok()).unwrap_or(0);
    let svc = Arc::new(Backend { name, fail_first, attempts: AtomicU64::new(0) });
    runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        println!("{}", json!({"event": "ready"}));
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(svc))
            .serve_with_incoming(incoming)
            .await
            .expect("gRPC server");
    });
}

/// `grpc-client <addr> <unary-calls> <stream-messages>`: the unary calls one after another,
/// then one stream; what each returned.
pub fn client(to: SocketAddr, unary: u32, stream: u32) -> serde_json::Value {
    let started = Instant::now();
    let run = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut c = EchoClient::new(channel);
        let (mut ok, mut failed, mut attempts) = (0u32, Vec::new(), Vec::new());
        for seq in 1..=unary {
            let m = Msg { seq, payload: vec![seq as u8; 100], ..Default::default() };
            match c.say(m).await {
                Ok(r) if r.get_ref().seq == seq => {
                    ok += 1;
                    attempts.push(r.get_ref().attempt);
                }
                Ok(r) => failed.push(format!("call {seq} answered as {}", r.get_ref().seq)),
                Err(s) => failed.push(format!("call {seq}: {:?} {}", s.code(), s.message())),
            }
        }
        let outbound =
            futures::stream::iter(1..=stream).map(|seq| Msg { seq, payload: vec![7; 1000], ..Default::default() });
        let mut echoed = 0u32;
        let mut inbound =
            c.chat(outbound).await.map_err(|s| format!("chat: {:?} {}", s.code(), s.message()))?.into_inner();
        while let Some(m) = inbound.next().await {
            let m = m.map_err(|s| format!("chat message: {:?} {}", s.code(), s.message()))?;
            if m.seq != echoed + 1 {
                return Err(format!("stream message {} came as {}", echoed + 1, m.seq));
            }
            echoed += 1;
        }
        Ok::<_, String>((ok, failed, attempts, echoed))
    };
    match runtime().block_on(run) {
        Ok((ok, failed, attempts, echoed)) => json!({
            "ok": true, "unary_ok": ok, "unary_failed": failed, "attempts": attempts, "stream_echoed": echoed,
            "secs": started.elapsed().as_secs_f64(),
        }),
        Err(e) => json!({"ok": false, "error": e}),
    }
}
