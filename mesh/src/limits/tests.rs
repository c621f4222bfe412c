use std::cell::Cell;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn emfile() -> io::Error {
    io::Error::from_raw_os_error(24)
}

/// Under a persistent EMFILE the loop must sleep, not spin: on today's HBONE server the
/// same situation retried immediately (100 % CPU, one warning per attempt).
#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_growing_and_bounded() {
    let attempts = Cell::new(0u32);
    let mut backoff = AcceptBackoff::new("test");
    let start = Instant::now();
    let stop_after = Duration::from_secs(10);
    let got = backoff
        .retry(|| {
            attempts.set(attempts.get() + 1);
            let done = start.elapsed() >= stop_after;
            async move { if done { Ok(()) } else { Err(emfile()) } }
        })
        .await;
    assert_eq!(got, ());
    // 5 ms doubling to 1 s: 9 steps reach 1.275 s, then one attempt per second.
    let n = attempts.get();
    assert!((15..=22).contains(&n), "{n} attempts in 10 s of failures");
    assert!(start.elapsed() < stop_after + BACKOFF_MAX + Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_backoff_and_aborted_connections_do_not_wait() {
    let mut backoff = AcceptBackoff::new("test");
    let script = Cell::new(vec![Err(emfile()), Err(emfile()), Err(emfile()), Ok(1)]);
    let next = || {
        let mut s = script.take();
        let r = s.remove(0);
        script.set(s);
        async move { r }
    };
    let start = Instant::now();
    assert_eq!(backoff.retry(next).await, 1);
    assert_eq!(start.elapsed(), BACKOFF_MIN * (1 + 2 + 4));
    // Reset: the next failure waits the minimum again.
    script.set(vec![Err(emfile()), Ok(2)]);
    let start = Instant::now();
    assert_eq!(backoff.retry(next).await, 2);
    assert_eq!(start.elapsed(), BACKOFF_MIN);
    // A connection that died in the queue is no reason to wait.
    script.set(vec![Err(io::ErrorKind::ConnectionAborted.into()), Ok(3)]);
    let start = Instant::now();
    assert_eq!(backoff.retry(next).await, 3);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_log_gate_admits_one_line_per_interval_and_counts_the_rest() {
    let gate = LogGate::default();
    assert_eq!(gate.admit(), Some(0));
    assert_eq!(gate.admit(), None);
    assert_eq!(gate.admit(), None);
    tokio::time::advance(LOG_INTERVAL).await;
    assert_eq!(gate.admit(), Some(2));
}

#[test]
fn a_conn_limit_refuses_past_its_cap_and_counts_the_refusals() {
    let metrics = LimitMetrics::default();
    let limit = ConnLimit::new("pod_connections", "shop/cart", 2, &metrics);
    let shared = limit.clone();
    let a = limit.try_acquire().unwrap();
    let _b = shared.try_acquire().unwrap();
    assert!(limit.try_acquire().is_none(), "the cap is shared by clones");
    assert_eq!(metrics.counter("pod_connections").get(), 1);
    drop(a);
    assert!(limit.try_acquire().is_some());
    assert_eq!(limit.in_use(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_peer_gets_its_burst_then_the_refill_rate_and_others_are_unaffected() {
    let limit = PeerRateLimit::new(3, 2.0);
    let a = Some("10.0.0.1".parse().unwrap());
    let b = Some("10.0.0.2".parse().unwrap());
    assert!((0..3).all(|_| limit.admit(a)));
    assert!(!limit.admit(a), "over the burst");
    assert!(limit.admit(b), "another peer has its own bucket");
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(limit.admit(a), "one token refilled after 1/rate");
    assert!(!limit.admit(a));
    assert!(
        limit.admit(None) && limit.admit(None) && limit.admit(None) && !limit.admit(None),
        "unknown peers share one"
    );
}
