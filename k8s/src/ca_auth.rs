//! Who may obtain which certificate from the CA server, decided by Kubernetes
//! (`mesh::ca::CaAuthorizer`).
//!
//! - The caller is whoever its bearer token says, per the API server's TokenReview
//!   (the token must be bound to the CA's audience, so a token stolen from elsewhere
//!   cannot be replayed here).
//! - A caller always gets its own identity (`ns/<ns>/sa/<sa>` of its service account).
//! - Another identity (`ImpersonatedIdentity`: a node agent asking on behalf of its pods)
//!   only for the agents' service accounts, and only if a pod with that identity runs on
//!   the caller's node. The node comes from the token itself (bound pod tokens carry
//!   `authentication.kubernetes.io/node-name`), so a compromised node can mint only the
//!   identities already running there.

#[cfg(test)]
mod tests;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use mesh::Identity;
use mesh::ca::CaError;
use mesh::ca::{CaAuthorizer, CallerInfo};

/// The TokenReview `extra` key holding the node of the pod a token was issued to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The group the API server puts every service account token's user in.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

pub struct KubeAuthorizer {
    client: Client,
    trust_domain: String,
    /// The audience agents' tokens are bound to (`pillion-ca` in the manifests).
    audience: String,
    /// `namespace/name` of service accounts allowed to impersonate (the node agents).
    agents: Vec<(String, String)>,
}

impl KubeAuthorizer {
    pub fn new(client: Client, trust_domain: &str, audience: &str, agents: Vec<(String, String)>) -> Self {
        Self { client, trust_domain: trust_domain.to_owned(), audience: audience.to_owned(), agents }
    }

    /// `(namespace, service account, node)` of a token's owner.
    async fn review(&self, token: &str) -> Result<(String, String, Option<String>), CaError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
            CaError::Unauthenticated(format!("TokenReview failed ({e}); check the CA may create tokenreviews"))
        })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(CaError::Unauthenticated(format!("{why} (audience {})", self.audience)));
        }
        // The API server says which of the asked audiences the token is good for. No answer
        // (an audience-agnostic authenticator) is not a yes: fail closed.
        match &status.audiences {
            Some(audiences) if audiences.contains(&self.audience) => {}
            Some(audiences) => {
                return Err(CaError::Unauthenticated(format!(
                    "the token is not bound to audience {} (it is for {audiences:?}); mount a projected token with that audience",
                    self.audience
                )));
            }
            None => {
                return Err(CaError::Unauthenticated(format!(
                    "the TokenReview answer names no audiences, so nothing says the token is for {}; \
                     the API server's authenticator must support audiences (Kubernetes ≥ 1.13 service account tokens do)",
                    self.audience
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(sa) = username.strip_prefix("system:serviceaccount:") else {
            return Err(CaError::Unauthenticated(format!("{username} is not a service account")));
        };
        // As Istio does: the name alone could come from another authenticator (a webhook or
        // an OIDC claim mapped to that string); the group is the API server's own mark.
        if !user.groups.iter().flatten().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
            return Err(CaError::Unauthenticated(format!(
                "{username} is not in group {SERVICE_ACCOUNTS_GROUP}: not a service account token"
            )));
        }
        let (ns, name) =
            sa.split_once(':').ok_or_else(|| CaError::Unauthenticated(format!("odd username {username}")))?;
        let node = user.extra.and_then(|mut e| e.remove(NODE_NAME_EXTRA)).and_then(|v| v.into_iter().next());
        Ok((ns.to_owned(), name.to_owned(), node))
    }

    /// Whether a pod running as `id` is on `node` (one list: that namespace, that node).
    async fn runs_on(&self, id: &Identity, node: &str) -> Result<bool, CaError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), id.namespace());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| CaError::PermissionDenied(format!("cannot list pods on node {node}: {e}")))?;
        // Finished pods keep their node but no longer need a certificate.
        let running = |p: &&Pod| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        };
        Ok(list.items.iter().filter(running).filter_map(|p| p.spec.as_ref()).any(|spec| {
            let sa = spec.service_account_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("default");
            // Re-checked here: the field selector is the server's, the decision is ours.
            sa == id.service_account() && spec.node_name.as_deref() == Some(node)
        }))
    }
}

#[async_trait]
impl CaAuthorizer for KubeAuthorizer {
    async fn authorize(&self, caller: &CallerInfo) -> Result<Identity, CaError> {
        let token = caller.bearer_token.as_deref().ok_or_else(|| CaError::Unauthenticated("no bearer token".into()))?;
        let (ns, sa, node) = self.review(token).await?;
        let own = Identity::new(&self.trust_domain, &ns, &sa)?;
        let Some(wanted) = &caller.impersonated else { return Ok(own) };
        if *wanted == own {
            return Ok(own);
        }
        if wanted.trust_domain() != self.trust_domain {
            return Err(CaError::PermissionDenied(format!("{wanted} is not in trust domain {}", self.trust_domain)));
        }
        if !self.agents.iter().any(|(n, s)| *n == ns && *s == sa) {
            return Err(CaError::PermissionDenied(format!(
                "{own} is not a node agent and may not impersonate {wanted}"
            )));
        }
        let node = node.ok_or_else(|| {
            CaError::PermissionDenied(format!(
                "{own}'s token names no node ({NODE_NAME_EXTRA}); use a projected token of the agent's pod"
            ))
        })?;
        if self.runs_on(wanted, &node).await? {
            Ok(wanted.clone())
        } else {
            Err(CaError::PermissionDenied(format!("no pod running as {wanted} on node {node}")))
        }
    }
}
