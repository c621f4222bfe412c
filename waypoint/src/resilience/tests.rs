//! Backoff, retry budget, circuit breaker and outlier detection in isolation, on paused time.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[test]
fn backoff_grows_exponentially_with_bounded_jitter() {
    let p = RetryPolicy { attempts: 5, codes: vec![503], backoff: Duration::from_millis(100), grpc: Vec::new() };
    let rng = Rng::new(1);
    for retry in 1..=6u32 {
        let full = (Duration::from_millis(100) * (1 << (retry - 1))).min(Duration::from_secs(1));
        for _ in 0..50 {
            let d = p.backoff_for(retry, &rng);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?} outside [{:?}, {full:?}]", full / 2);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn budget_allows_a_percentage_plus_a_minimum_rate() {
    let b = RetryBudget::new(BudgetConfig {
        percent: 20.0,
        interval: Duration::from_secs(10),
        min_count: 2,
        min_interval: Duration::from_secs(1),
    });
    // No traffic yet: the minimum rate still allows two retries per second.
    assert!(b.try_retry());
    assert!(b.try_retry());
    assert!(!b.try_retry());
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..20 {
        b.record_request();
    }
    // 20% of 20 = 4 in the 10 s window, two of which are taken.
    assert!(b.try_retry());
    assert!(b.try_retry());
    assert!(!b.try_retry());
    // Once the window has passed, everything is forgotten.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(b.try_retry());
}

#[tokio::test(start_paused = true)]
async fn breaker_queues_up_to_max_pending_then_overflows() {
    let b = Arc::new(CircuitBreaker::new(BreakerLimits { max_connections: 2, max_pending: 1, max_requests: 5 }));
    let p1 = b.acquire().await.unwrap();
    let _p2 = b.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(b.acquire().await.unwrap_err(), Overflow);
    drop(p1);
    assert_eq!(waiting.await.unwrap(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn outliers_respect_max_ejection_percent_and_come_back() {
    let cfg = OutlierConfig { consecutive_5xx: Some(1), max_ejection_percent: 50.0, ..OutlierConfig::default() };
    let d = OutlierDetector::new(cfg);
    let eps: Vec<SocketAddr> = (1..=4).map(|i| SocketAddr::from(([10, 0, 0, i], 80))).collect();
    assert!(d.record(eps[0], Outcome::Status(502), 4).is_some());
    assert!(d.record(eps[1], Outcome::LocalFailure, 4).is_some());
    // Half of four are out: the third failing endpoint stays.
    assert!(d.record(eps[2], Outcome::Status(500), 4).is_none());
    assert_eq!(d.available(&eps), vec![eps[2], eps[3]]);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(d.available(&eps), eps);
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_consecutive_count() {
    let d = OutlierDetector::new(OutlierConfig { consecutive_5xx: Some(2), ..OutlierConfig::default() });
    let ep = SocketAddr::from(([10, 0, 0, 1], 80));
    assert!(d.record(ep, Outcome::Status(503), 1).is_none());
    assert!(d.record(ep, Outcome::Success, 1).is_none());
    assert!(d.record(ep, Outcome::Status(503), 1).is_none());
    assert!(d.record(ep, Outcome::Status(503), 1).is_some());
    assert!(d.is_ejected(ep));
    // Every endpoint ejected: all are used rather than none.
    assert_eq!(d.available(&[ep]), vec![ep]);
}
