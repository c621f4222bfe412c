//! The Kubernetes configuration source: watches, the cache, rebuilds and publication.
//!
//! One task owns everything. Every watched kind is a kube-rs `watcher` stream with
//! backoff; the streams are merged, their events applied to the [`Cache`], and after a
//! short quiet period the whole model is rebuilt and published as one `Arc<Model>`
//! through a `watch` channel, exactly like the file source. Readers therefore see either
//! the previous snapshot or the next one, never a mix. Nothing is published until every
//! kind has been listed once, so an agent never acts on "the cluster has no pods".

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gateway_api::apis::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use mesh::model::{MeshSettings, Model};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::cache::{Cache, Change, Ev, Table};
use crate::objects::{self, L7Kind, L7Object, NamespaceInfo, PodInfo, ServiceInfo, SliceInfo, WaypointInfo};
use crate::translate::{self, LocalPod};

#[derive(Debug, Clone)]
pub struct Options {
    /// The agent's node: its pods are reported in [`KubeSource::local_pods`] (with UIDs).
    pub node: Option<String>,
    pub mesh: MeshSettings,
    /// Watch the kinds the waypoint interprets ([`L7Kind`]: HTTPRoute, the L7 side of
    /// AuthorizationPolicy, DestinationRule, XBackendTrafficPolicy, FaultInjection,
    /// ReferenceGrant).
    /// Agents do not need them.
    pub watch_l7: bool,
    /// Quiet time after an event before rebuilding, so a burst (a Deployment rollout,
    /// a relist) costs one rebuild.
    pub debounce: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node: None,
            mesh: MeshSettings::default(),
            watch_l7: false,
            debounce: Duration::from_millis(100),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What the source has done, for readiness and `/config_dump`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Every kind has been listed once and a model published.
    pub synced: bool,
    pub version: u64,
    pub rebuilds: u64,
    /// Failed list/watch calls per kind (each is retried with backoff).
    pub watch_errors: BTreeMap<&'static str, u64>,
    pub last_watch_error: Option<String>,
    /// Objects left out of the current model and why.
    pub skipped: Vec<String>,
    /// A rebuild the model builder refused (the previous model stays in force).
    pub last_build_error: Option<String>,
    /// Kinds whose CRD is not installed: treated as empty, re-checked with backoff.
    pub missing_kinds: Vec<&'static str>,
}

/// Owns the watch task; dropping it stops watching (published snapshots stay readable).
#[derive(Debug)]
pub struct KubeSource {
    model: watch::Receiver<Arc<Model>>,
    local: watch::Receiver<Arc<Vec<LocalPod>>>,
    l7: watch::Receiver<Arc<Vec<L7Object>>>,
    status: watch::Receiver<SourceStatus>,
    task: JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Starts watching. Returns at once; [`KubeSource::synced`] waits for the first model.
    /// Must be called within a tokio runtime.
    pub fn start(client: Client, options: Options) -> Self {
        let (model_tx, model) = watch::channel(Arc::new(Model::default()));
        let (local_tx, local) = watch::channel(Arc::new(Vec::new()));
        let (l7_tx, l7) = watch::channel(Arc::new(Vec::new()));
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let streams = streams(&client, &options);
        let mut cache = Cache::default();
        if !options.watch_l7 {
            cache.l7.iter_mut().for_each(Table::mark_unwatched);
        }
        let run = Runner { options, cache, model_tx, local_tx, l7_tx, status_tx };
        let task = tokio::spawn(run.run(streams));
        Self { model, local, l7, status, task }
    }

    /// The model in force (version 0 and empty before the first sync).
    pub fn current(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }

    /// Notified on every published model.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.model.clone()
    }

    /// Pods on this node that should be captured; changes when labels enrol or opt out.
    pub fn local_pods(&self) -> watch::Receiver<Arc<Vec<LocalPod>>> {
        self.local.clone()
    }

    /// The waypoint's objects (only with [`Options::watch_l7`]), published together with
    /// (and after) the model of the same batch of events.
    pub fn l7_objects(&self) -> watch::Receiver<Arc<Vec<L7Object>>> {
        self.l7.clone()
    }

    pub fn status(&self) -> SourceStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// Waits until the first model is published (readiness gates on this).
    pub async fn synced(&self) {
        let mut s = self.status.clone();
        // The sender lives as long as the task; if the task ended, there is nothing to wait for.
        let _ = s.wait_for(|s| s.synced).await;
    }
}

/// One failed call of one kind's watch.
type WatchFailure = (&'static str, Box<watcher::Error>);
type Merged = Pin<Box<dyn Stream<Item = Result<Change, WatchFailure>> + Send>>;

/// Kinds that are CRDs: a cluster without them still gets a model.
const OPTIONAL_KINDS: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "DestinationRule",
    "XBackendTrafficPolicy",
    "FaultInjection",
    "ReferenceGrant",
];

/// One kind's watch: events converted one object at a time, failures tagged with the kind.
fn one<K, T>(
    api: Api<K>,
    kind: &'static str,
    b: Backoff,
    convert: impl Fn(&K) -> Option<T> + Send + 'static,
    wrap: fn(Ev<T>) -> Change,
) -> Merged
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    watcher(api, watcher::Config::default())
        .backoff(b)
        .map(move |r| match r {
            Ok(ev) => Ok(wrap(Ev::from_watch(ev, &convert))),
            Err(e) => Err((kind, Box::new(e))),
        })
        .boxed()
}

fn streams(client: &Client, o: &Options) -> Vec<Merged> {
    let backoff = || Backoff::new(o.backoff_min, o.backoff_max);
    let c = || client.clone();
    let node = o.node.clone();
    let mesh = o.mesh.clone();
    let mut v = vec![
        one(Api::<Namespace>::all(c()), "Namespace", backoff(), NamespaceInfo::from_k8s, Change::Namespace),
        one(Api::<Pod>::all(c()), "Pod", backoff(), move |p| PodInfo::from_k8s(p, node.as_deref()), Change::Pod),
        one(Api::<Service>::all(c()), "Service", backoff(), ServiceInfo::from_k8s, Change::Service),
        one(Api::<EndpointSlice>::all(c()), "EndpointSlice", backoff(), SliceInfo::from_k8s, Change::Slice),
        one(Api::<Gateway>::all(c()), "Gateway", backoff(), WaypointInfo::from_k8s, Change::Waypoint),
        dynamic(
            c(),
            &istio_resource("AuthorizationPolicy", "authorizationpolicies"),
            "AuthorizationPolicy",
            backoff(),
            objects::authorization_policy(mesh),
            Change::AuthorizationPolicy,
        ),
        dynamic(
            c(),
            &istio_resource("PeerAuthentication", "peerauthentications"),
            "PeerAuthentication",
            backoff(),
            objects::peer_authentication,
            Change::PeerAuthentication,
        ),
    ];
    if o.watch_l7 {
        for kind in L7Kind::ALL {
            // `dynamic` takes a plain fn to wrap events; the kind is matched here instead.
            let wrap: fn(Ev<L7Object>) -> Change = match kind {
                L7Kind::HttpRoute => |e| Change::L7(L7Kind::HttpRoute, e),
                L7Kind::GrpcRoute => |e| Change::L7(L7Kind::GrpcRoute, e),
                L7Kind::AuthorizationPolicy => |e| Change::L7(L7Kind::AuthorizationPolicy, e),
                L7Kind::DestinationRule => |e| Change::L7(L7Kind::DestinationRule, e),
                L7Kind::BackendTrafficPolicy => |e| Change::L7(L7Kind::BackendTrafficPolicy, e),
                L7Kind::FaultInjection => |e| Change::L7(L7Kind::FaultInjection, e),
                L7Kind::ReferenceGrant => |e| Change::L7(L7Kind::ReferenceGrant, e),
            };
            v.push(dynamic(c(), &kind.api_resource(), kind.name(), backoff(), objects::dynamic_l7(kind), wrap));
        }
    }
    v
}

fn istio_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("security.istio.io", "v1", kind), plural)
}

/// A watch through `DynamicObject`, each object converted on its own: kinds whose objects
/// a typed watch might fail to decode (open CRD schemas, newer API versions) cannot stall
/// the whole list this way.
fn dynamic<T: Send + 'static>(
    client: Client,
    resource: &ApiResource,
    name: &'static str,
    b: Backoff,
    convert: impl Fn(&DynamicObject) -> Option<T> + Send + 'static,
    wrap: fn(Ev<T>) -> Change,
) -> Merged {
    one(Api::<DynamicObject>::all_with(client, resource), name, b, convert, wrap)
}

struct Runner {
    options: Options,
    cache: Cache,
    model_tx: watch::Sender<Arc<Model>>,
    local_tx: watch::Sender<Arc<Vec<LocalPod>>>,
    l7_tx: watch::Sender<Arc<Vec<L7Object>>>,
    status_tx: watch::Sender<SourceStatus>,
}

impl Runner {
    async fn run(mut self, streams: Vec<Merged>) {
        let mut merged = futures::stream::select_all(streams);
        let (mut model_dirty, mut routes_dirty) = (false, false);
        while let Some(item) = merged.next().await {
            let (m, r) = self.handle(item);
            (model_dirty, routes_dirty) = (model_dirty || m, routes_dirty || r);
            // Take the rest of a burst before rebuilding.
            while let Ok(Some(item)) = tokio::time::timeout(self.options.debounce, merged.next()).await {
                let (m, r) = self.handle(item);
                (model_dirty, routes_dirty) = (model_dirty || m, routes_dirty || r);
            }
            if !self.cache.synced() {
                continue;
            }
            // L7 objects first: whoever wakes on `synced` must find them already there.
            if routes_dirty {
                self.l7_tx.send_replace(Arc::new(self.cache.l7_objects()));
                routes_dirty = false;
            }
            if model_dirty || !self.status_tx.borrow().synced {
                self.rebuild();
                model_dirty = false;
            }
        }
    }

    fn handle(&mut self, item: Result<Change, WatchFailure>) -> (bool, bool) {
        match item {
            Ok(change) => {
                // A CRD installed after start: its first real list ends the "missing" state.
                if change.is_list_done() && self.status_tx.borrow().missing_kinds.contains(&change.kind()) {
                    let kind = change.kind();
                    tracing::info!(kind, "the CRD is installed now; watching it");
                    self.status_tx.send_modify(|s| s.missing_kinds.retain(|k| *k != kind));
                }
                self.cache.apply(change)
            }
            Err((kind, e)) => {
                let missing = OPTIONAL_KINDS.contains(&kind) && is_not_found(&e);
                let msg = if missing {
                    format!("{kind}: its CRD is not installed; treated as empty and re-checked with backoff")
                } else {
                    format!(
                        "{kind} watch failed: {e}; retrying with backoff (check the API server is reachable and that this pod's ClusterRole (pillion-agent for agents, pillion-waypoint for waypoints) grants list/watch on it)"
                    )
                };
                // A missing CRD is re-checked with backoff for as long as it is missing:
                // say so once, not every 30 s.
                let known = missing && self.status_tx.borrow().missing_kinds.contains(&kind);
                if known {
                    tracing::debug!(kind, error = %e, "{msg}");
                } else {
                    tracing::warn!(kind, error = %e, "{msg}");
                }
                self.status_tx.send_modify(|s| {
                    *s.watch_errors.entry(kind).or_default() += 1;
                    s.last_watch_error = Some(msg);
                    if missing && !s.missing_kinds.contains(&kind) {
                        s.missing_kinds.push(kind);
                    }
                });
                if missing {
                    return self.treat_as_empty(kind);
                }
                (false, false)
            }
        }
    }

    /// An uninstalled CRD lists as an empty, synced table (until it appears).
    fn treat_as_empty(&mut self, kind: &str) -> (bool, bool) {
        let mut empty = |c: Vec<Change>| {
            c.into_iter().map(|c| self.cache.apply(c)).fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1))
        };
        let mut changes = match kind {
            "Gateway" => vec![Change::Waypoint(Ev::Init), Change::Waypoint(Ev::InitDone)],
            "AuthorizationPolicy" => {
                vec![Change::AuthorizationPolicy(Ev::Init), Change::AuthorizationPolicy(Ev::InitDone)]
            }
            "PeerAuthentication" => {
                vec![Change::PeerAuthentication(Ev::Init), Change::PeerAuthentication(Ev::InitDone)]
            }
            _ => Vec::new(),
        };
        // AuthorizationPolicy is both a model kind and an L7 one.
        if let Some(k) = L7Kind::ALL.into_iter().find(|k| k.name() == kind) {
            changes.extend([Change::L7(k, Ev::Init), Change::L7(k, Ev::InitDone)]);
        }
        empty(changes)
    }

    fn rebuild(&mut self) {
        let version = self.model_tx.borrow().version() + 1;
        match translate::build(&self.cache, &self.options.mesh, self.options.node.as_deref(), version) {
            Ok(built) => {
                for s in &built.skipped {
                    tracing::warn!(version, "{s}");
                }
                tracing::info!(
                    version,
                    workloads = built.model.workloads().len(),
                    services = built.model.services().len(),
                    skipped = built.skipped.len(),
                    "kubernetes config published"
                );
                self.model_tx.send_replace(Arc::new(built.model));
                self.local_tx.send_if_modified(|l| {
                    let changed = **l != built.local;
                    if changed {
                        *l = Arc::new(built.local);
                    }
                    changed
                });
                self.status_tx.send_modify(|s| {
                    s.synced = true;
                    s.version = version;
                    s.rebuilds += 1;
                    s.skipped = built.skipped;
                    s.last_build_error = None;
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "kubernetes config rejected; the previous model stays in force");
                self.status_tx.send_modify(|s| s.last_build_error = Some(e.to_string()));
            }
        }
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}
