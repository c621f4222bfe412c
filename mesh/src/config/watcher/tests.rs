//! Reload behaviour on a real file: bounded waits on the watch channels, no fixed sleeps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// A private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pillion-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workload(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ips: [{ip}], node: a}}\n"
    )
}

/// Replaces the file the way editors do: write a sibling, then rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_model(rx: &mut watch::Receiver<Arc<Model>>, version: u64) -> Arc<Model> {
    let m = tokio::time::timeout(WAIT, rx.wait_for(|m| m.version() >= version))
        .await
        .unwrap_or_else(|_| panic!("no model version {version} within {WAIT:?}"))
        .unwrap()
        .clone();
    assert_eq!(m.version(), version);
    m
}

async fn wait_failures(rx: &mut watch::Receiver<ReloadStatus>, n: u64) -> ReloadStatus {
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.failures >= n))
        .await
        .unwrap_or_else(|_| panic!("no failure #{n} within {WAIT:?}"))
        .unwrap()
        .clone()
}

async fn reload_cycle(options: WatchOptions, in_place: bool) {
    let dir = TempDir::new();
    let path = dir.0.join("mesh.yaml");
    let write = |text: &str| if in_place { std::fs::write(&path, text).unwrap() } else { replace(&path, text) };
    write(&workload("a", "10.0.0.1"));

    let metrics = ConfigMetrics::default();
    let w = ConfigWatcher::start(&path, options, metrics.clone()).unwrap();
    assert_eq!(w.current().version(), 1);
    let mut models = w.subscribe();
    let mut status = w.subscribe_status();

    // A change is picked up with the next version.
    write(&(workload("a", "10.0.0.1") + &workload("b", "10.0.0.2")));
    let m = wait_model(&mut models, 2).await;
    assert!(m.workload("shop", "b").is_some());
    assert_eq!(w.status().reloads, 1);

    // Rewriting the same bytes is seen but is not a new version.
    let checks = w.status().checks;
    write(&(workload("a", "10.0.0.1") + &workload("b", "10.0.0.2")));
    tokio::time::timeout(WAIT, status.wait_for(|s| s.checks > checks)).await.expect("rewrite seen").unwrap();
    assert_eq!(w.current().version(), 2);

    // Garbage is rejected with a line number; the last good model stays.
    write(
        &(workload("a", "10.0.0.1")
            + "---\napiVersion: pillion.dev/v1alpha1\nkind: Workload\nmetadata: {name: c}\nspec: {ips: [10.0.0.300], node: a}\n"),
    );
    let s = wait_failures(&mut status, 1).await;
    let err = s.last_error.expect("error kept");
    assert_eq!(err.line(), Some(10), "{err}");
    assert!(err.to_string().contains("mesh.yaml:10:"), "{err}");
    assert_eq!(w.current().version(), 2);
    assert!(w.current().workload("shop", "b").is_some());
    assert_eq!(metrics.reload_failures.get(), 1);
    let dump = serde_json::to_value(w.status()).unwrap();
    assert!(dump["lastError"].as_str().unwrap().contains("mesh.yaml:10:"), "{dump}");

    // Fixing the file recovers.
    write(&workload("c", "10.0.0.3"));
    let m = wait_model(&mut models, 3).await;
    assert!(m.workload("shop", "c").is_some() && m.workload("shop", "a").is_none());
    assert!(w.last_error().is_none());
    assert_eq!((metrics.reloads.get(), metrics.version.get()), (2, 3));
}

#[tokio::test]
async fn reloads_on_change_rejects_garbage_and_recovers() {
    let options = WatchOptions {
        poll_interval: Duration::from_secs(3600),
        debounce: Duration::from_millis(20),
        use_notify: true,
    };
    reload_cycle(options, false).await;
}

#[tokio::test]
async fn polling_alone_sees_in_place_writes() {
    let options = WatchOptions {
        poll_interval: Duration::from_millis(20),
        debounce: Duration::from_millis(5),
        use_notify: false,
    };
    reload_cycle(options, true).await;
}

#[tokio::test]
async fn a_bad_first_file_is_an_error() {
    let dir = TempDir::new();
    let path = dir.0.join("mesh.yaml");
    std::fs::write(&path, "kind: [").unwrap();
    let e = ConfigWatcher::start(&path, WatchOptions::default(), ConfigMetrics::default()).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:1:", path.display())), "{e}");
    let e = ConfigWatcher::start(dir.0.join("missing.yaml"), WatchOptions::default(), ConfigMetrics::default())
        .unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}
