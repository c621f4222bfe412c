//! Memory and rebuild time against cluster size, for `docs/kubernetes.md`. A measurement,
//! not a test (CI would count an ignored test as skipped); run with
//! `cargo run -p pillion-k8s --release --example scale`.

use std::collections::BTreeMap;
use std::time::Instant;

use mesh::model::{MeshSettings, PortProtocol};
use pillion_k8s::cache::{Cache, Change, Ev};
use pillion_k8s::objects::{NamespaceInfo, PodInfo, ServiceInfo, ServicePortInfo, SliceInfo, TargetPort};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn labels(kv: &[(&str, String)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// `pods` pods in 50 namespaces, one Service (and EndpointSlice) per 5 pods; typical
/// labels (app, version, pod-template-hash, team, tier).
fn cluster(pods: usize) -> Cache {
    // Every kind listed (empty) first; the objects then arrive as watch events.
    let mut c = Cache::listed_empty();
    for ns in 0..50 {
        let info = NamespaceInfo { labels: labels(&[("istio.io/dataplane-mode", "ambient".into())]) };
        c.apply(Change::Namespace(Ev::Apply((String::new(), format!("team-{ns}")), Some(info))));
    }
    for i in 0..pods {
        let ns = format!("team-{}", i % 50);
        let app = format!("app-{}", i / 5);
        let pod = PodInfo {
            labels: labels(&[
                ("app", app.clone()),
                ("version", "v1".into()),
                ("pod-template-hash", format!("{:x}", 0x5f6d7c8b9a_u64 + i as u64)),
                ("team", ns.clone()),
                ("tier", "backend".into()),
            ]),
            service_account: app.clone(),
            node: format!("node-{}", i % 100),
            ips: vec![format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255).parse().unwrap()],
            uid: None,
            created: i as i64,
        };
        c.apply(Change::Pod(Ev::Apply((ns.clone(), format!("{app}-{:x}", i)), Some(pod))));
        if i % 5 == 4 {
            let svc = ServiceInfo {
                labels: labels(&[("app", app.clone())]),
                vips: vec![format!("172.{}.{}.{}", 16 + ((i >> 16) & 15), (i >> 8) & 255, i & 255).parse().unwrap()],
                ports: vec![ServicePortInfo {
                    name: "http".into(),
                    port: 80,
                    target: TargetPort::Number(8080),
                    protocol: PortProtocol::Tcp,
                    app_protocol: None,
                }],
                traffic_distribution: None,
            };
            c.apply(Change::Service(Ev::Apply((ns.clone(), app.clone()), Some(svc))));
            let pods = (i - 4..=i).map(|j| format!("{app}-{j:x}")).collect();
            let slice = SliceInfo { service: app.clone(), ports: vec![("http".into(), 8080)], pods, zones: Vec::new() };
            c.apply(Change::Slice(Ev::Apply((ns, format!("{app}-abcde")), Some(slice))));
        }
    }
    c
}

fn main() {
    for pods in [1_000, 10_000, 50_000] {
        let before = rss_bytes();
        // `cluster` fills the tables with Apply events; the table keeps them live.
        let cache = cluster(pods);
        assert!(cache.synced());
        let with_cache = rss_bytes();
        let start = Instant::now();
        let built = pillion_k8s::translate::build(&cache, &MeshSettings::default(), Some("node-1"), 1).unwrap();
        let took = start.elapsed();
        let with_model = rss_bytes();
        assert_eq!(built.model.workloads().len(), pods);
        println!(
            "{pods:>6} pods: cache {:>6.0} B/pod, model {:>6.0} B/pod, rebuild {:>8.1} ms, local pods {}",
            with_cache.saturating_sub(before) as f64 / pods as f64,
            with_model.saturating_sub(with_cache) as f64 / pods as f64,
            took.as_secs_f64() * 1000.0,
            built.local.len()
        );
        drop(built);
        drop(cache);
    }
}
