//! The pool's bounds on paused time: idle connections expire, a connection is retired after
//! its request cap, and an ejected endpoint's connections are dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use mesh::Identity;
use mesh::ca::EmbeddedCa;
use mesh::certs::{CertManager, CertManagerConfig, CertMetrics};
use mesh::clock::SystemClock;
use mesh::hbone::{DirectTcpDialer, Pool, PoolConfig};

use crate::resilience::PoolSettings;
use crate::route::ServiceKey;
use crate::upstream::{HboneUpstream, Target, Upstream};

/// A plain HTTP/1.1 endpoint (outside the mesh, so no HBONE) counting the connections it
/// accepted.
async fn endpoint() -> (SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    (addr, accepted)
}

fn upstream() -> HboneUpstream {
    let (ca, _) = EmbeddedCa::generate("cluster.local", SystemClock::shared()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let certs = CertManager::new(Arc::new(ca), CertManagerConfig::default(), CertMetrics::register(&mut registry));
    let pool = Pool::new(PoolConfig::default(), DirectTcpDialer, Arc::new(certs));
    HboneUpstream::new(pool, Identity::new("cluster.local", "shop", "waypoint").unwrap(), "shop/waypoint-0")
}

fn target(addr: SocketAddr, pool: PoolSettings) -> Target {
    Target {
        addr,
        identity: Identity::new("cluster.local", "shop", "reviews").unwrap(),
        service: ServiceKey::new("shop", "reviews"),
        http2: false,
        hbone: false,
        traceparent: None,
        forwarded: None,
        pool,
    }
}

async fn get(up: &HboneUpstream, t: &Target) {
    let req =
        Request::get("/").header("host", "reviews").body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync());
    let r = up.send(t, req.unwrap()).await.unwrap();
    r.into_body().collect().await.unwrap();
    // The connection goes back to the pool once the exchange is over.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connections_expire_after_the_rules_idle_timeout() {
    let (addr, accepted) = endpoint().await;
    let up = upstream();
    let t = target(addr, PoolSettings { idle_timeout: Some(Duration::from_secs(5)), ..Default::default() });
    get(&up, &t).await;
    get(&up, &t).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
    tokio::time::advance(Duration::from_secs(6)).await;
    get(&up, &t).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection idle past 5 s is not reused");
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_retired_after_max_requests_per_connection() {
    let (addr, accepted) = endpoint().await;
    let up = upstream();
    let t = target(addr, PoolSettings { max_requests_per_connection: Some(2), ..Default::default() });
    for _ in 0..5 {
        get(&up, &t).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "5 requests, at most 2 per connection");
    let (addr, accepted) = endpoint().await;
    let t = target(addr, PoolSettings::default());
    for _ in 0..5 {
        get(&up, &t).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "without a cap one keep-alive connection serves all");
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_endpoint_is_dialled_afresh() {
    let (addr, accepted) = endpoint().await;
    let up = upstream();
    let t = target(addr, PoolSettings::default());
    get(&up, &t).await;
    up.forget(addr);
    get(&up, &t).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
