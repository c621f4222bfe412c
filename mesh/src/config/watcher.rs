//! Reloading the config file without a restart.
//!
//! A task watches the file's *directory* with `notify` (editors and Kubernetes ConfigMaps
//! replace files by rename or symlink swap, which a watch on the file itself would miss)
//! and also polls the file's metadata as a fallback for filesystems that send no events.
//! Either trigger leads to reading the file; unchanged content (by hash) is ignored, a
//! good file is published as a new `Arc<Model>` with the next version, and a bad file is
//! logged with its line-numbered error, counted, and otherwise ignored: the last good
//! model stays in force.

#[cfg(test)]
mod tests;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::Watcher as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ConfigError;
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How often the file's size, mtime and inode are compared, in case no event arrives.
    pub poll_interval: Duration,
    /// Quiet time after a change event before reading, so a save made of several writes
    /// is read once, complete.
    pub debounce: Duration,
    /// Use filesystem events; `false` relies on polling alone.
    pub use_notify: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(1), debounce: Duration::from_millis(100), use_notify: true }
    }
}

/// Reload counters, registered into the caller's prometheus-client registry.
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub version: Gauge,
}

impl ConfigMetrics {
    /// Registers under the `pillion_config_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("pillion_config");
        sub.register("reloads", "Configuration changes accepted", m.reloads.clone());
        sub.register(
            "reload_failures",
            "Configuration files rejected (the last good one stays)",
            m.reload_failures.clone(),
        );
        sub.register("version", "Version of the configuration in force", m.version.clone());
        m
    }
}

/// The outcome of loading so far (serializes for `/config_dump`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    /// Version of the model in force.
    pub version: u64,
    /// Accepted changes after the initial load.
    pub reloads: u64,
    /// Rejected files.
    pub failures: u64,
    /// Times the file was read because it might have changed (content unchanged included).
    pub checks: u64,
    /// The error of the last attempt, `None` if it succeeded.
    #[serde(serialize_with = "error_text")]
    pub last_error: Option<ConfigError>,
    pub last_attempt: Option<SystemTime>,
}

/// Owns the reload task; dropping it stops watching (the published model stays readable
/// through receivers already handed out).
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    model: watch::Receiver<Arc<Model>>,
    status: watch::Receiver<ReloadStatus>,
    task: JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigWatcher {
    /// Loads `path` (version 1) and starts watching it. Fails if the first load fails, so
    /// an agent never starts on a broken file. Must be called within a tokio runtime.
    pub fn start(path: impl Into<PathBuf>, options: WatchOptions, metrics: ConfigMetrics) -> Result<Self, ConfigError> {
        let path = path.into();
        let text = read(&path)?;
        let model = super::parse(&text, &path.display().to_string(), 1)?;
        tracing::info!(path = %path.display(), version = 1, workloads = model.workloads().len(), "config loaded");
        metrics.version.set(1);
        let (model_tx, model_rx) = watch::channel(Arc::new(model));
        let status = ReloadStatus { version: 1, last_attempt: Some(SystemTime::now()), ..ReloadStatus::default() };
        let (status_tx, status_rx) = watch::channel(status);
        let state = Reloader {
            path: path.clone(),
            fingerprint: fingerprint(&path),
            content: hash(&text),
            model_tx,
            status_tx,
            metrics,
        };
        let task = tokio::spawn(state.run(options));
        Ok(Self { path, model: model_rx, status: status_rx, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model in force now.
    pub fn current(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }

    /// Notified on every accepted change (never on a rejected one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.model.clone()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.borrow().clone()
    }

    /// Notified after every attempt, good or bad.
    pub fn subscribe_status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// The error of the last attempt, `None` if it succeeded.
    pub fn last_error(&self) -> Option<ConfigError> {
        self.status.borrow().last_error.clone()
    }
}

fn error_text<S: serde::Serializer>(e: &Option<ConfigError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { file: path.display().to_string(), source: Arc::new(e) })
}

/// What polling compares: size, mtime and inode (a rename-replace changes the inode even
/// when size and mtime happen to match). Follows symlinks, so ConfigMap swaps show up.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.len(), m.modified().ok()?, ino))
}

fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

struct Reloader {
    path: PathBuf,
    fingerprint: Option<(u64, SystemTime, u64)>,
    /// Hash of the last content tried, good or bad, so a bad file is reported once.
    content: u64,
    model_tx: watch::Sender<Arc<Model>>,
    status_tx: watch::Sender<ReloadStatus>,
    metrics: ConfigMetrics,
}

impl Reloader {
    async fn run(mut self, options: WatchOptions) {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        // Kept alive for as long as the task runs.
        let _notify = if options.use_notify { self.notify(ev_tx) } else { None };
        let mut ticker = tokio::time::interval(options.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = ev_rx.recv() => {
                    // Let a multi-step save settle.
                    while let Ok(Some(())) = tokio::time::timeout(options.debounce, ev_rx.recv()).await {}
                    self.check();
                }
                _ = ticker.tick() => {
                    if fingerprint(&self.path) != self.fingerprint {
                        self.check();
                    }
                }
            }
        }
    }

    fn notify(&self, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Any event in the directory triggers a read: the content hash filters out the
        // unrelated ones, and ConfigMap updates touch `..data`, not the file's name.
        let handler = move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        };
        let watched = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
        match watched {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch config directory; polling only");
                None
            }
        }
    }

    fn check(&mut self) {
        self.fingerprint = fingerprint(&self.path);
        let text = match read(&self.path) {
            Ok(t) => t,
            Err(e) => return self.reject(e),
        };
        let h = hash(&text);
        if h == self.content {
            // Same bytes (a touch, a no-op save): not a new version.
            self.status_tx.send_modify(|s| s.checks += 1);
            return;
        }
        self.content = h;
        let version = self.model_tx.borrow().version() + 1;
        match super::parse(&text, &self.path.display().to_string(), version) {
            Ok(model) => {
                tracing::info!(path = %self.path.display(), version, workloads = model.workloads().len(), "config reloaded");
                self.metrics.reloads.inc();
                self.metrics.version.set(i64::try_from(version).unwrap_or(i64::MAX));
                self.model_tx.send_replace(Arc::new(model));
                self.status_tx.send_modify(|s| {
                    s.checks += 1;
                    s.version = version;
                    s.reloads += 1;
                    s.last_error = None;
                    s.last_attempt = Some(SystemTime::now());
                });
            }
            Err(e) => self.reject(e),
        }
    }

    fn reject(&mut self, e: ConfigError) {
        // A vanished file is not new content: forget the hash so its return is re-read.
        if matches!(e, ConfigError::Read { .. }) {
            self.content = 0;
        }
        let version = self.model_tx.borrow().version();
        tracing::error!(error = %e, version, "config rejected; keeping the last good configuration");
        self.metrics.reload_failures.inc();
        self.status_tx.send_modify(|s| {
            s.checks += 1;
            s.failures += 1;
            s.last_error = Some(e);
            s.last_attempt = Some(SystemTime::now());
        });
    }
}
