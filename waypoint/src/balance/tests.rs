use std::net::SocketAddr;
use std::sync::Arc;

use mesh::model::{Locality, TrafficDistribution};

use super::*;
use crate::rng::Rng;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 8080))
}

#[test]
fn the_closest_tier_that_has_endpoints_wins() {
    let (za, zb) = (Locality::parse("r1/za"), Locality::parse("r1/zb"));
    let other_region = Locality::parse("r2/zc");
    let eps = [
        (1, Place { node: "n1", locality: &za }),
        (2, Place { node: "n2", locality: &za }),
        (3, Place { node: "n3", locality: &zb }),
        (4, Place { node: "n4", locality: &other_region }),
    ];
    let me = Place { node: "n2", locality: &za };
    assert_eq!(closest(&eps, &me, TrafficDistribution::PreferSameNode), vec![2]);
    assert_eq!(closest(&eps, &me, TrafficDistribution::PreferSameZone), vec![1, 2], "the zone, not only the node");
    // Nothing in my zone: my region; nothing there either: everyone.
    let me = Place { node: "n9", locality: &Locality::parse("r1/zq") };
    assert_eq!(closest(&eps, &me, TrafficDistribution::PreferSameZone), vec![1, 2, 3]);
    let nowhere = Locality::default();
    let me = Place { node: "n9", locality: &nowhere };
    assert_eq!(closest(&eps, &me, TrafficDistribution::PreferSameZone), vec![1, 2, 3, 4]);
    // The node tier still falls back to the zone when no endpoint shares the node.
    let me = Place { node: "n9", locality: &zb };
    assert_eq!(closest(&eps, &me, TrafficDistribution::PreferSameNode), vec![3]);
}

#[test]
fn a_consistent_hash_keeps_keys_in_place_when_an_endpoint_leaves() {
    let b = Balancer::default();
    let rng = Rng::new(1);
    let policy = LbPolicy::ConsistentHash(HashKey::SourceIp);
    let all: Vec<SocketAddr> = (1..=4).map(addr).collect();
    let before: Vec<SocketAddr> = (0..1000u64).map(|k| b.pick(&policy, &all, Some(k), &rng)).collect();
    // Every endpoint gets a share, and the same key always lands on the same endpoint.
    for a in &all {
        let share = before.iter().filter(|x| *x == a).count();
        assert!((150..350).contains(&share), "{a}: {share} of 1000");
    }
    assert_eq!(before[17], b.pick(&policy, &all, Some(17), &rng));
    let fewer: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != addr(3)).collect();
    for (k, was) in before.iter().enumerate() {
        let now = b.pick(&policy, &fewer, Some(k as u64), &rng);
        if *was != addr(3) {
            assert_eq!(now, *was, "key {k} moved though its endpoint stayed");
        }
    }
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let b = Arc::new(Balancer::default());
    let rng = Rng::new(3);
    let (x, y) = (addr(1), addr(2));
    let held: Vec<_> = (0..5).map(|_| b.start(x)).collect();
    assert_eq!(b.in_flight(x), 5);
    let to_y = (0..1000).filter(|_| b.pick(&LbPolicy::LeastRequest, &[x, y], None, &rng) == y).count();
    // y wins whenever the two picks differ or both are y: about 3 in 4.
    assert!(to_y > 700, "{to_y} of 1000 to the idle endpoint");
    drop(held);
    assert_eq!(b.in_flight(x), 0);
}

#[test]
fn round_robin_takes_turns() {
    let b = Balancer::default();
    let rng = Rng::new(5);
    let all = [addr(3), addr(1), addr(2)];
    let picks: Vec<SocketAddr> = (0..6).map(|_| b.pick(&LbPolicy::RoundRobin, &all, None, &rng)).collect();
    assert_eq!(picks, [addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]);
}

#[test]
fn hash_keys_read_headers_cookies_queries_and_the_client() {
    let req = http::Request::get("/p?user=ann&x=1")
        .header("x-user", "bob")
        .header("cookie", "a=1; session=s3; b=2")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let client: SocketAddr = "10.1.1.1:5000".parse().unwrap();
    let h = |k: HashKey| k.of(&parts.headers, &parts.uri, client);
    assert_eq!(h(HashKey::Header("x-user".parse().unwrap())), Some(stable_hash(&"bob")));
    assert_eq!(h(HashKey::Cookie("session".into())), Some(stable_hash(&"s3")));
    assert_eq!(h(HashKey::QueryParameter("user".into())), Some(stable_hash(&"ann")));
    assert_eq!(h(HashKey::SourceIp), Some(stable_hash(&"10.1.1.1")));
    assert_eq!(h(HashKey::Cookie("missing".into())), None);
    // The same client from another port hashes alike.
    assert_eq!(
        HashKey::SourceIp.of(&parts.headers, &parts.uri, "10.1.1.1:6000".parse().unwrap()),
        h(HashKey::SourceIp)
    );
}
