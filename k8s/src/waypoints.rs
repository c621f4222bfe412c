//! The waypoint controller: for each Gateway of class `pillion-waypoint`, a ServiceAccount,
//! Deployment and Service of the same name (what `istio.io/use-waypoint` then resolves
//! to) and a copy of the CA's root certificate (`<name>-ca-root`, a pod can only mount a
//! ConfigMap of its own namespace), all owned by the Gateway so that deleting it removes
//! them, and the Gateway's status (`Accepted`, `Programmed`, the Service's address).
//! A HorizontalPodAutoscaler and a PodDisruptionBudget come from the ConfigMap the
//! Gateway's `spec.infrastructure.parametersRef` names ([`scaling`]), re-read whenever that
//! ConfigMap changes.
//!
//! The waypoints' read access to the cluster (ClusterRole `pillion-waypoint`) is granted
//! through one ClusterRoleBinding, `pillion-waypoints`, installed empty with Pillion and
//! whose subjects the controller keeps equal to the service accounts of the waypoint
//! Gateways that exist. A cluster-scoped binding cannot be owned by a namespaced Gateway,
//! so deletions are caught by a watch of Gateways rather than by garbage collection.
//!
//! Where it runs: one replica for the cluster, not in the node agents. Every agent
//! reconciling the same Gateways would fight over them, and creating Deployments is a
//! right no node should hold (a compromised node could then run anything anywhere).
//! `istio-waypoint` Gateways are left to Istio's own controller.

pub mod scaling;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_api::apis::experimental::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::labels::GATEWAY_NAME;
use scaling::{ParamsError, Scaling};

pub const CLASS: &str = "pillion-waypoint";
const MANAGER: &str = "pillion-waypoint-controller";
/// The ClusterRoleBinding whose subjects are the waypoints' service accounts.
pub const BINDING: &str = "pillion-waypoints";
/// Where the waypoint pods find the CA's root and their token for it.
const ROOT_DIR: &str = "/var/run/secrets/pillion-ca-root";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Gateway {0} has no namespace or uid; it cannot own its waypoint")]
    Unowned(String),
    #[error(
        "applying {what} for Gateway {gateway}: {source}; check the controller's RBAC (create/patch serviceaccounts, services, deployments, configmaps; patch gateways/status)"
    )]
    Apply { what: &'static str, gateway: String, source: Box<kube::Error> },
    #[error(
        "reading the CA's root certificate (ConfigMap {namespace}/{name}): {source}; is pillion-ca running? It publishes the ConfigMap at start"
    )]
    Root { namespace: String, name: String, source: Box<kube::Error> },
    #[error("ConfigMap {namespace}/{name} has no root-cert.pem; restart pillion-ca to publish it again")]
    RootMissing { namespace: String, name: String },
    #[error(
        "updating ClusterRoleBinding {BINDING}: {0}; it is part of deploy/install.yaml (reinstall if it was deleted) and the controller needs get/update on it and bind on ClusterRole pillion-waypoint"
    )]
    Binding(Box<kube::Error>),
    #[error("Gateway {gateway}: {source}")]
    Params { gateway: String, source: ParamsError },
    #[error(
        "ServiceAccount {0} exists and does not belong to the Gateway of the same name; the waypoint would take it over (and deleting the Gateway would delete it): rename the Gateway"
    )]
    AccountTaken(String),
}

/// What the waypoint pods run and where their certificates come from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub pull_policy: String,
    /// The CA's gRPC endpoint, e.g. `https://pillion-ca.pillion-system.svc:15012`.
    pub ca_address: String,
    /// The DNS name on the CA's serving certificate.
    pub ca_domain: String,
    /// Where the CA publishes its root certificate: `(namespace, ConfigMap name)`.
    pub ca_root: (String, String),
    /// The audience the CA accepts tokens for.
    pub ca_audience: String,
}

impl Settings {
    /// Defaults matching deploy/ (namespace `pillion-system`).
    pub fn for_namespace(namespace: &str) -> Self {
        Self {
            image: "pillion/pillion-waypoint:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            ca_address: format!("https://pillion-ca.{namespace}.svc:15012"),
            ca_domain: format!("pillion-ca.{namespace}.svc"),
            ca_root: (namespace.to_owned(), "pillion-ca-root-cert".into()),
            ca_audience: "pillion-ca".into(),
        }
    }
}

/// The metadata of every object made for `gw`: its name and namespace, the Gateway's label
/// and the Gateway as controlling owner.
fn owned_meta(gw: &Gateway) -> Result<Value, ControllerError> {
    let name = gw.name_any();
    let (Some(ns), Some(uid)) = (gw.namespace(), gw.uid()) else { return Err(ControllerError::Unowned(name)) };
    let owner = OwnerReference {
        api_version: Gateway::api_version(&()).into_owned(),
        kind: Gateway::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Ok(json!({"name": name, "namespace": ns, "labels": {GATEWAY_NAME: name}, "ownerReferences": [owner]}))
}

/// The four objects a waypoint Gateway gets, as server-side-apply bodies: ServiceAccount,
/// Deployment, Service and the root-certificate ConfigMap (holding `root_pem`).
pub fn desired(gw: &Gateway, s: &Settings, root_pem: &str) -> Result<[Value; 4], ControllerError> {
    desired_scaled(gw, s, root_pem, &Scaling::default())
}

/// As [`desired`], for a waypoint scaled as `scaling` says: with an autoscaler the
/// Deployment leaves `replicas` to it and requests CPU (utilization is measured against it).
pub fn desired_scaled(
    gw: &Gateway,
    s: &Settings,
    root_pem: &str,
    scaling: &Scaling,
) -> Result<[Value; 4], ControllerError> {
    let meta = owned_meta(gw)?;
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
    let root_map = format!("{name}-ca-root");
    let mut root_meta = meta.clone();
    root_meta["name"] = json!(root_map);
    let root =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": root_meta, "data": {"root-cert.pem": root_pem}});
    let env = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PILLION_KUBERNETES", "value": "true"},
        {"name": "PILLION_CA_ADDRESS", "value": s.ca_address},
        {"name": "PILLION_CA_DOMAIN", "value": s.ca_domain},
        {"name": "PILLION_CA_ROOTS", "value": format!("{ROOT_DIR}/root-cert.pem")},
        {"name": "PILLION_CA_TOKEN", "value": format!("{TOKEN_DIR}/pillion-ca")},
    ]);
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME: name}},
            "template": {
                // The waypoint speaks HBONE itself: never captured by the agent.
                "metadata": {"labels": {GATEWAY_NAME: name, "istio.io/dataplane-mode": "none"}},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "waypoint",
                        "image": s.image,
                        "imagePullPolicy": s.pull_policy,
                        "args": ["run", "--namespace", ns, "--waypoint-service", name],
                        "env": env,
                        "ports": [{"name": "mesh", "containerPort": 15008}, {"name": "metrics", "containerPort": 15020},
                                  {"name": "readiness", "containerPort": 15021}],
                        // Ready once it has its certificate, the cluster's configuration and
                        // is serving: a rollout waits for that.
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "runAsNonRoot": true, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "ca-root", "mountPath": ROOT_DIR, "readOnly": true},
                                         {"name": "ca-token", "mountPath": TOKEN_DIR, "readOnly": true}]
                    }],
                    "volumes": [
                        {"name": "ca-root", "configMap": {"name": root_map}},
                        // Bound to the CA only and short-lived: the CA checks it with TokenReview.
                        {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken":
                            {"audience": s.ca_audience, "expirationSeconds": 3600, "path": "pillion-ca"}}]}}
                    ]
                }
            }
        }
    });
    let mut deployment = deployment;
    if scaling.hpa.is_some() {
        let spec = deployment["spec"].as_object_mut().expect("a spec");
        spec.remove("replicas");
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": scaling::DEFAULT_CPU_REQUEST}});
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": {GATEWAY_NAME: name}, "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008}]}
    });
    Ok([sa, deployment, service, root])
}

/// The HorizontalPodAutoscaler and PodDisruptionBudget bodies `scaling` asks for, aimed
/// at the waypoint's own Deployment and pods whatever the parameters say.
pub fn scaling_objects(gw: &Gateway, scaling: &Scaling) -> Result<(Option<Value>, Option<Value>), ControllerError> {
    let meta = owned_meta(gw)?;
    let name = gw.name_any();
    let hpa = scaling.hpa.as_ref().map(|spec| {
        let mut spec = spec.clone();
        spec["scaleTargetRef"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name});
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": spec})
    });
    let pdb = scaling.pdb.as_ref().map(|spec| {
        let mut spec = spec.clone();
        spec["selector"] = json!({"matchLabels": {GATEWAY_NAME: name}});
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": spec})
    });
    Ok((hpa, pdb))
}

/// What the Gateway's `spec.infrastructure.parametersRef` asks for (nothing without one).
async fn scaling_of(client: &Client, gw: &Gateway) -> Result<Scaling, ControllerError> {
    let (ns, name) = (gw.namespace().unwrap_or_default(), gw.name_any());
    let Some(r) = gw.spec.infrastructure.as_ref().and_then(|i| i.parameters_ref.as_ref()) else {
        return Ok(Scaling::default());
    };
    let params = |source| ControllerError::Params { gateway: format!("{ns}/{name}"), source };
    if !r.group.is_empty() || r.kind != "ConfigMap" {
        return Err(params(ParamsError::Kind { group: r.group.clone(), kind: r.kind.clone() }));
    }
    let map = Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt(&r.name).await.map_err(|e| {
        ControllerError::Apply { what: "parameters ConfigMap", gateway: format!("{ns}/{name}"), source: Box::new(e) }
    })?;
    let map = map.ok_or_else(|| params(ParamsError::Missing(r.name.clone())))?;
    Scaling::from_data(&map.data.unwrap_or_default()).map_err(params)
}

/// Applies `body` as `name`, or deletes an earlier one when `body` is `None`.
async fn apply_or_remove<K>(api: Api<K>, name: &str, body: Option<&Value>) -> Result<(), kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match body {
        Some(b) => api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(b)).await.map(drop),
        None => match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// The binding's subjects: the service accounts the controller made for waypoint Gateways
/// that exist (owned by them, same name and namespace), sorted. An account merely named
/// like a Gateway is never bound.
pub fn binding_subjects(gateways: &[Gateway], accounts: &[ServiceAccount]) -> Vec<Subject> {
    let live: Vec<(String, String, String)> = gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == CLASS && g.metadata.deletion_timestamp.is_none())
        .filter_map(|g| Some((g.namespace()?, g.name_any(), g.uid()?)))
        .collect();
    let mut subjects: Vec<Subject> = accounts
        .iter()
        .filter(|a| {
            let (ns, name) = (a.namespace().unwrap_or_default(), a.name_any());
            a.owner_references().iter().any(|o| {
                o.kind == "Gateway"
                    && live.iter().any(|(gns, gname, uid)| *gns == ns && *gname == name && o.uid == *uid)
            })
        })
        .map(|a| Subject {
            kind: "ServiceAccount".into(),
            name: a.name_any(),
            namespace: a.namespace(),
            api_group: None,
        })
        .collect();
    subjects.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    subjects.dedup();
    subjects
}

/// Makes [`BINDING`]'s subjects match the waypoints that exist now. The binding is read
/// first and replaced with that resourceVersion, so a sync that read an older world loses
/// with a conflict (and retries) instead of undoing a newer one.
pub async fn sync_binding(client: &Client) -> Result<(), ControllerError> {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let gateways: Api<Gateway> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let fail = |e| ControllerError::Binding(Box::new(e));
    let mut last = None;
    for _ in 0..3 {
        let mut b = bindings.get(BINDING).await.map_err(fail)?;
        let gws = gateways.list(&ListParams::default()).await.map_err(fail)?;
        let sas = accounts.list(&ListParams::default().labels(GATEWAY_NAME)).await.map_err(fail)?;
        let want = binding_subjects(&gws.items, &sas.items);
        if b.subjects.as_deref().unwrap_or_default() == want.as_slice() {
            return Ok(());
        }
        tracing::info!(waypoints = want.len(), "updating the waypoints' ClusterRoleBinding");
        b.subjects = Some(want);
        match bindings.replace(BINDING, &PostParams::default(), &b).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => last = Some(kube::Error::Api(e)),
            Err(e) => return Err(fail(e)),
        }
    }
    Err(fail(last.expect("three conflicts")))
}

/// Refuses to adopt a ServiceAccount someone else made (e.g. `default`): the waypoint
/// would run as it, and the Gateway's deletion would delete it.
async fn check_account(client: &Client, gw: &Gateway) -> Result<(), ControllerError> {
    let (ns, name) = (gw.namespace().unwrap_or_default(), gw.name_any());
    let existing = Api::<ServiceAccount>::namespaced(client.clone(), &ns).get_opt(&name).await.map_err(|e| {
        ControllerError::Apply { what: "ServiceAccount", gateway: format!("{ns}/{name}"), source: Box::new(e) }
    })?;
    match existing {
        Some(sa) if !sa.owner_references().iter().any(|o| Some(&o.uid) == gw.uid().as_ref()) => {
            Err(ControllerError::AccountTaken(format!("{ns}/{name}")))
        }
        _ => Ok(()),
    }
}

/// The CA's root certificate, as published by pillion-ca.
async fn root_pem(client: &Client, s: &Settings) -> Result<String, ControllerError> {
    let (namespace, name) = s.ca_root.clone();
    let map = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .map_err(|e| ControllerError::Root { namespace: namespace.clone(), name: name.clone(), source: Box::new(e) })?;
    map.data.and_then(|mut d| d.remove("root-cert.pem")).ok_or(ControllerError::RootMissing { namespace, name })
}

/// The Gateway's status for the Service's address and the Deployment's readiness.
pub fn status(gw: &Gateway, address: Option<&str>, ready: bool) -> Value {
    status_with(gw, Ok(()), address, ready)
}

/// The status with `accepted` an error message when the Gateway cannot be served.
fn status_with(gw: &Gateway, accepted: Result<(), String>, address: Option<&str>, ready: bool) -> Value {
    let generation = gw.metadata.generation.unwrap_or(0);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
        json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": now})
    };
    let addresses: Vec<Value> = address.into_iter().map(|a| json!({"type": "IPAddress", "value": a})).collect();
    let (reason, message) = if ready {
        ("Programmed", "the waypoint is running")
    } else {
        ("Pending", "waiting for the waypoint Deployment to have a ready replica")
    };
    let accepted = match &accepted {
        Ok(()) => condition("Accepted", true, "Accepted", "handled by the Pillion waypoint controller"),
        Err(why) => condition("Accepted", false, "Invalid", why),
    };
    json!({"status": {"addresses": addresses, "conditions": [accepted, condition("Programmed", ready, reason, message)]}})
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
}

/// One reconciliation: apply the objects, then report status.
pub async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if gw.spec.gateway_class_name != CLASS {
        return Ok(Action::await_change());
    }
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let c = &ctx.client;
    let pp = PatchParams::apply(MANAGER).force();
    let who = format!("{ns}/{name}");
    let fail = |what| {
        let gateway = who.clone();
        move |source| ControllerError::Apply { what, gateway, source: Box::new(source) }
    };
    if let Err(e) = check_account(c, &gw).await {
        if let ControllerError::AccountTaken(_) = &e {
            refuse(c, &gw, &e).await;
        }
        return Err(e);
    }
    let scaling = match scaling_of(c, &gw).await {
        Ok(s) => s,
        Err(e) => {
            if let ControllerError::Params { .. } = &e {
                refuse(c, &gw, &e).await;
            }
            return Err(e);
        }
    };
    let root = root_pem(c, &ctx.settings).await?;
    let [sa, deployment, service, root] = desired_scaled(&gw, &ctx.settings, &root, &scaling)?;
    let (hpa, pdb) = scaling_objects(&gw, &scaling)?;
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .patch(&format!("{name}-ca-root"), &pp, &Patch::Apply(&root))
        .await
        .map_err(fail("root certificate ConfigMap"))?;
    Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&sa))
        .await
        .map_err(fail("ServiceAccount"))?;
    // The waypoint needs its read access before it starts.
    sync_binding(c).await?;
    let d = Api::<Deployment>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&deployment))
        .await
        .map_err(fail("Deployment"))?;
    let svc = Api::<Service>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&service))
        .await
        .map_err(fail("Service"))?;
    apply_or_remove(Api::<HorizontalPodAutoscaler>::namespaced(c.clone(), &ns), &name, hpa.as_ref())
        .await
        .map_err(fail("HorizontalPodAutoscaler"))?;
    apply_or_remove(Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns), &name, pdb.as_ref())
        .await
        .map_err(fail("PodDisruptionBudget"))?;
    let ready = d.status.and_then(|s| s.available_replicas).unwrap_or(0) > 0;
    let address = svc.spec.and_then(|s| s.cluster_ip).filter(|ip| ip != "None");
    let body = status(&gw, address.as_deref(), ready);
    Api::<Gateway>::namespaced(c.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(fail("Gateway status"))?;
    // Owned Deployments and Services trigger a reconcile when they change; the requeue
    // is a backstop for missed events.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Reports `e` in the Gateway's `Accepted` condition (best effort: the error itself is
/// logged and retried either way).
async fn refuse(c: &Client, gw: &Gateway, e: &ControllerError) {
    let body = status_with(gw, Err(e.to_string()), None, false);
    let _ = Api::<Gateway>::namespaced(c.clone(), &gw.namespace().unwrap_or_default())
        .patch_status(&gw.name_any(), &PatchParams::default(), &Patch::Merge(&body))
        .await;
}

fn error_policy(_gw: Arc<Gateway>, e: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "waypoint reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// How often the binding is re-synced without any event (a failed sync, or a missed one).
const BINDING_RESYNC: Duration = Duration::from_secs(60);

/// Re-syncs the binding on every Gateway event, deletions and class changes included
/// (which the controller's reconcile never sees), and every minute as a backstop.
async fn follow_gateways(client: Client) {
    let mut events = watcher(Api::<Gateway>::all(client.clone()), watcher::Config::default()).default_backoff().boxed();
    let mut tick = tokio::time::interval(BINDING_RESYNC);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Gateway watch failed; retrying with backoff");
                    continue;
                }
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {}
        }
        if let Err(e) = sync_binding(&client).await {
            tracing::warn!(error = %e, "syncing the waypoints' ClusterRoleBinding failed; retrying within a minute");
        }
    }
}

/// The waypoint Gateways whose `spec.infrastructure.parametersRef` names ConfigMap
/// `namespace/name`: an edit of it re-reconciles them (their autoscaler and disruption
/// budget follow it).
pub fn referencing<'a>(
    gateways: impl IntoIterator<Item = &'a Gateway>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<Gateway>> {
    gateways
        .into_iter()
        .filter(|g| g.spec.gateway_class_name == CLASS && g.namespace().as_deref() == Some(namespace))
        .filter(|g| {
            g.spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.parameters_ref.as_ref())
                .is_some_and(|r| r.group.is_empty() && r.kind == "ConfigMap" && r.name == name)
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// Runs the controller until the process ends.
pub async fn run(client: Client, settings: Settings) {
    tokio::spawn(follow_gateways(client.clone()));
    let ctx = Arc::new(Context { client: client.clone(), settings });
    let controller = Controller::new(Api::<Gateway>::all(client.clone()), watcher::Config::default());
    let gateways = controller.store();
    controller
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(GATEWAY_NAME))
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default().labels(GATEWAY_NAME))
        // ConfigMaps are not cached (the trigger only maps each change to its Gateways).
        .watches(Api::<ConfigMap>::all(client), watcher::Config::default(), move |cm: ConfigMap| {
            let state = gateways.state();
            referencing(state.iter().map(|g| g.as_ref()), &cm.namespace().unwrap_or_default(), &cm.name_any())
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
