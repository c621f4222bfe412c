//! The CA server's own bounds: the per-peer rate limit (checked before any authorization,
//! so a flood costs no TokenReview) and the cap on concurrent TLS handshakes.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::*;
use crate::clock::SystemClock;

/// Counts authorizations (each would be a TokenReview against the API server).
struct Counting(AtomicUsize);

#[async_trait]
impl CaAuthorizer for Arc<Counting> {
    async fn authorize(&self, _caller: &CallerInfo) -> Result<Identity, CaError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(CaError::Unauthenticated("junk token".into()))
    }
}

fn ca() -> Arc<EmbeddedCa> {
    Arc::new(EmbeddedCa::generate("cluster.local", SystemClock::shared()).unwrap().0)
}

fn junk() -> Request<IstioCertificateRequest> {
    let mut r = Request::new(IstioCertificateRequest { csr: String::new(), validity_duration: 0, metadata: None });
    r.metadata_mut().insert("authorization", "Bearer junk".parse().unwrap());
    r
}

#[tokio::test]
async fn requests_over_the_rate_get_resource_exhausted_before_any_token_review() {
    let reviews = Arc::new(Counting(AtomicUsize::new(0)));
    let server = CaServer::new(ca(), reviews.clone()).rate_limit(3, 0.0);
    for _ in 0..3 {
        let e = server.create_certificate(junk()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let e = server.create_certificate(junk()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(reviews.0.load(Ordering::SeqCst), 3, "the refused request reached no authorizer");
}

#[tokio::test]
async fn handshakes_over_the_cap_are_closed_at_once() {
    let ca = ca();
    let (chain, key) = ca.serving_cert(&["pillion-ca"], Duration::from_secs(3600)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reviews = Arc::new(Counting(AtomicUsize::new(0)));
    let server = CaServer::new(ca, reviews).max_handshakes(1);
    let (stop, shutdown) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve_tls(listener, chain, key, async move {
        let _ = shutdown.await;
    }));
    // Holds the only handshake slot without a ClientHello.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    // Before the cap this waited the 10 s handshake timeout.
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "not closed at once: {read:?}");
    drop(stop);
}
