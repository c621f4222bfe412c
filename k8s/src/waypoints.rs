//! The waypoint controller: for each Gateway of class `pillion-waypoint`, a ServiceAccount,
//! Deployment and Service of the same name (what `istio.io/use-waypoint` then resolves
//! to), owned by the Gateway so that deleting it removes them, and the Gateway's status
//! (`Accepted`, `Programmed`, the Service's address).
//!
//! Where it runs: one replica for the cluster, not in the node agents. Every agent
//! reconciling the same Gateways would fight over them, and creating Deployments is a
//! right no node should hold (a compromised node could then run anything anywhere).
//! `istio-waypoint` Gateways are left to Istio's own controller.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_api::apis::experimental::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::labels::GATEWAY_NAME;

pub const CLASS: &str = "pillion-waypoint";
const MANAGER: &str = "pillion-waypoint-controller";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Gateway {0} has no namespace or uid; it cannot own its waypoint")]
    Unowned(String),
    #[error(
        "applying {what} for Gateway {gateway}: {source}; check the controller's RBAC (create/patch serviceaccounts, services, deployments; patch gateways/status)"
    )]
    Apply { what: &'static str, gateway: String, source: Box<kube::Error> },
}

/// What the waypoint pods run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub pull_policy: String,
}

/// The three objects a waypoint Gateway gets, as server-side-apply bodies.
pub fn desired(gw: &Gateway, s: &Settings) -> Result<[Value; 3], ControllerError> {
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
    let meta = json!({"name": name, "namespace": ns, "labels": {GATEWAY_NAME: name}, "ownerReferences": [owner]});
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
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
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "mesh", "containerPort": 15008}, {"name": "metrics", "containerPort": 15020}],
                        "readinessProbe": {"tcpSocket": {"port": 15008}, "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": {GATEWAY_NAME: name}, "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008}]}
    });
    Ok([sa, deployment, service])
}

/// The Gateway's status for the Service's address and the Deployment's readiness.
pub fn status(gw: &Gateway, address: Option<&str>, ready: bool) -> Value {
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
    json!({"status": {"addresses": addresses, "conditions": [
        condition("Accepted", true, "Accepted", "handled by the Pillion waypoint controller"),
        condition("Programmed", ready, reason, message),
    ]}})
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
    let [sa, deployment, service] = desired(&gw, &ctx.settings)?;
    let pp = PatchParams::apply(MANAGER).force();
    let who = format!("{ns}/{name}");
    let fail = |what| {
        let gateway = who.clone();
        move |source| ControllerError::Apply { what, gateway, source: Box::new(source) }
    };
    let c = &ctx.client;
    Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&sa))
        .await
        .map_err(fail("ServiceAccount"))?;
    let d = Api::<Deployment>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&deployment))
        .await
        .map_err(fail("Deployment"))?;
    let svc = Api::<Service>::namespaced(c.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(&service))
        .await
        .map_err(fail("Service"))?;
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

fn error_policy(_gw: Arc<Gateway>, e: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "waypoint reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller until the process ends.
pub async fn run(client: Client, settings: Settings) {
    let ctx = Arc::new(Context { client: client.clone(), settings });
    Controller::new(Api::<Gateway>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(GATEWAY_NAME))
        .owns(Api::<Service>::all(client), watcher::Config::default().labels(GATEWAY_NAME))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
