use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame};

use super::*;
use crate::proxy::BodyBudget;

type Sender = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

/// A client body fed frame by frame from the test.
fn client() -> (Sender, RequestBody) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx).boxed_unsync())
}

fn data(n: usize, byte: u8) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(vec![byte; n])))
}

fn replay(source: RequestBody, limit: usize, budget: &Arc<BodyBudget>) -> (Replay, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let r = Replay::new(source, limit, budget.reservation("peer"), Duration::from_secs(60), received.clone());
    (r, received)
}

async fn next_data(body: &mut ReplayBody) -> Bytes {
    body.frame().await.expect("a frame").expect("no error").into_data().expect("data")
}

#[tokio::test]
async fn a_retry_replays_the_kept_frames_then_reads_on_from_the_client() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (tx, source) = client();
    let (r, received) = replay(source, 1024, &budget);
    tx.unbounded_send(data(100, b'a')).unwrap();
    tx.unbounded_send(data(100, b'b')).unwrap();
    let mut first = r.attempt().unwrap();
    assert_eq!(next_data(&mut first).await, vec![b'a'; 100]);
    assert_eq!(budget.in_use(), 100);
    // The first attempt failed after one frame: the second sends it again, then the rest.
    let second = r.attempt().expect("within the buffer");
    assert!(first.frame().await.unwrap().is_err(), "the old attempt's body is superseded");
    tx.unbounded_send(data(50, b'c')).unwrap();
    drop(tx);
    let all = second.collect().await.unwrap().to_bytes();
    assert_eq!(all.len(), 250);
    assert_eq!((&all[..100], &all[100..200], &all[200..]), (&[b'a'; 100][..], &[b'b'; 100][..], &[b'c'; 50][..]));
    assert_eq!(received.load(Ordering::Relaxed), 250, "each byte counted once, as read from the client");
    assert!(r.replayable());
    drop((r, first));
    assert_eq!(budget.in_use(), 0, "the copy is given back with the request");
}

#[tokio::test]
async fn a_body_past_the_buffer_streams_whole_but_is_not_replayed() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..64).map(|_| data(1000, b'x')).collect();
    let (r, _) = replay(StreamBody::new(futures::stream::iter(chunks)).boxed_unsync(), 10_000, &budget);
    let body = r.attempt().unwrap();
    assert_eq!(body.collect().await.unwrap().to_bytes().len(), 64_000, "every byte streamed");
    assert!(r.outgrew() && !r.replayable());
    assert!(r.attempt().is_none(), "no second attempt");
    assert_eq!(budget.in_use(), 0, "the copy was given back when it outgrew the buffer");
    assert!(r.whole().await.is_none(), "nor mirrored");
}

#[tokio::test]
async fn a_spent_budget_stops_the_copy_never_the_request() {
    let budget = BodyBudget::new(1 << 20, 150);
    let (tx, source) = client();
    let (held, _) = replay(source, 1024, &budget);
    tx.unbounded_send(data(100, b'h')).unwrap();
    let mut h = held.attempt().unwrap();
    next_data(&mut h).await;
    // Same peer: 50 bytes of its 150 are left.
    let (r, _) = replay(Full::new(Bytes::from(vec![b'y'; 80])).map_err(|n| match n {}).boxed_unsync(), 1024, &budget);
    let body = r.attempt().unwrap().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 80);
    assert!(r.outgrew());
    assert_eq!(budget.in_use(), 100);
}

#[tokio::test]
async fn trailers_pass_and_are_replayed() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = vec![data(10, b'g'), Ok(Frame::trailers(trailers.clone()))];
    let (r, _) = replay(StreamBody::new(futures::stream::iter(frames)).boxed_unsync(), 1024, &budget);
    for _ in 0..2 {
        let got = r.attempt().unwrap().collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&trailers));
        assert_eq!(got.to_bytes().len(), 10);
    }
    let (frames, t) = r.whole().await.unwrap();
    assert_eq!((frames.len(), t), (1, Some(trailers)));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_fails_after_the_idle_timeout_and_is_not_retried() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (tx, source) = client();
    let (r, _) = replay(source, 1024, &budget);
    tx.unbounded_send(data(10, b's')).unwrap();
    let mut body = r.attempt().unwrap();
    assert!(!r.waiting_on_client(), "nothing asked of the client yet");
    next_data(&mut body).await;
    assert!(!r.waiting_on_client());
    let start = tokio::time::Instant::now();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    assert_eq!(r.client_failure(), Some(ClientFailure::Stalled));
    assert!(r.attempt().is_none() && !r.receiving());
    drop(tx);
}

#[tokio::test]
async fn a_client_abort_is_told_apart_from_an_upstream_failure() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (tx, source) = client();
    let (r, _) = replay(source, 1024, &budget);
    tx.unbounded_send(Err("client went away".into())).unwrap();
    assert!(r.attempt().unwrap().frame().await.unwrap().is_err());
    assert_eq!(r.client_failure(), Some(ClientFailure::Aborted));
}

#[tokio::test]
async fn sizes_and_ends_are_told_to_the_upstream_connection() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (empty, _) = replay(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync(), 1024, &budget);
    assert!(empty.attempt().unwrap().is_end_stream(), "a GET goes out with END_STREAM on its headers");
    let (sized, _) =
        replay(Full::new(Bytes::from_static(b"hello")).map_err(|n| match n {}).boxed_unsync(), 1024, &budget);
    let mut b = sized.attempt().unwrap();
    assert_eq!(b.size_hint().exact(), Some(5), "Content-Length is kept");
    next_data(&mut b).await;
    assert_eq!(b.size_hint().exact(), Some(0));
    assert!(b.frame().await.is_none());
    let again = sized.attempt().unwrap();
    assert_eq!(again.size_hint().exact(), Some(5));
    assert!(!again.is_end_stream());
}

#[tokio::test]
async fn closing_retries_gives_back_a_streaming_copy_but_keeps_a_whole_one_for_mirrors() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (tx, source) = client();
    let (streaming, _) = replay(source, 1024, &budget);
    tx.unbounded_send(data(100, b'a')).unwrap();
    let mut b = streaming.attempt().unwrap();
    next_data(&mut b).await;
    streaming.close_retries();
    assert_eq!(budget.in_use(), 0);
    assert!(streaming.attempt().is_none());
    tx.unbounded_send(data(100, b'b')).unwrap();
    assert_eq!(next_data(&mut b).await.len(), 100, "the body streams on");
    assert_eq!(budget.in_use(), 0, "uncopied");

    let (whole, _) =
        replay(Full::new(Bytes::from_static(b"small")).map_err(|n| match n {}).boxed_unsync(), 1024, &budget);
    let mirror = {
        let whole = whole.clone();
        tokio::spawn(async move { whole.whole().await })
    };
    whole.attempt().unwrap().collect().await.unwrap();
    whole.close_retries();
    let (frames, _) = mirror.await.unwrap().expect("the mirror gets the body");
    assert_eq!(frames.concat(), b"small");
}

#[tokio::test]
async fn a_backend_answering_early_still_gets_the_whole_replayed_body() {
    let budget = BodyBudget::new(1 << 20, 1 << 20);
    let (tx, source) = client();
    let (r, _) = replay(source, 1024, &budget);
    for b in [b'a', b'b', b'c'] {
        tx.unbounded_send(data(100, b)).unwrap();
    }
    let mut first = r.attempt().unwrap();
    for _ in 0..3 {
        next_data(&mut first).await;
    }
    // The second attempt's backend answers after one replayed frame: retries close, but the
    // frames it has not replayed yet must still come, then the rest from the client.
    let mut second = r.attempt().unwrap();
    assert_eq!(next_data(&mut second).await[0], b'a');
    r.close_retries();
    assert_eq!(budget.in_use(), 300, "kept while the attempt replays");
    assert_eq!(next_data(&mut second).await[0], b'b');
    assert_eq!(next_data(&mut second).await[0], b'c');
    assert_eq!(budget.in_use(), 0, "given back once it caught up");
    tx.unbounded_send(data(100, b'd')).unwrap();
    drop(tx);
    assert_eq!(next_data(&mut second).await[0], b'd');
    assert!(second.frame().await.is_none());
    drop(first);
}
