//! Telling an uninstall from a rolling update, for the agent and the CNI installer on
//! SIGTERM. On an uninstall they must unchain the plugin and remove the pins (or no pod
//! could start or be reached); on an update they must leave both in place.
//!
//! Removing capture is fail-open for every pod of the node, so it takes two independent
//! signals from two different objects: the DaemonSet gone (or being deleted), the install
//! namespace gone (or terminating), our roles gone (403). Any two different ones mean
//! uninstall; one alone does not (a DaemonSet re-created to change its selector, a broken
//! Role). A 401 says nothing about the install (a token refresh failure or a service
//! account key rotation cause it too), so it is never a signal. Anything else (the API
//! server unreachable) keeps everything in place: an update is far more common, and the
//! next agent finds its pins; `pillion-agent reset` removes them by hand.

#[cfg(test)]
mod tests;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// What the API server says about the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pillion is being removed; why.
    Uninstalling(String),
    Staying,
    /// The API server could not tell; treated as staying.
    Unknown(String),
}

impl Verdict {
    pub fn uninstalling(&self) -> bool {
        matches!(self, Self::Uninstalling(_))
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What one object's answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// The DaemonSet gone or being deleted.
    DaemonSetGone,
    /// The namespace gone or terminating.
    NamespaceGone,
    /// No right to read it: a Role or ClusterRole of the install is gone.
    RoleGone,
    /// The object is there and not being deleted.
    Present,
    /// No answer that means anything (401, 5xx, unreachable).
    Unclear,
}

fn signal<K: kube::Resource>(answer: &Result<Option<K>, kube::Error>, gone: Signal) -> Signal {
    match answer {
        Ok(None) => gone,
        Ok(Some(o)) if o.meta().deletion_timestamp.is_some() => gone,
        Ok(Some(_)) => Signal::Present,
        Err(e) if code(e) == Some(403) => Signal::RoleGone,
        Err(_) => Signal::Unclear,
    }
}

fn describe<K>(answer: &Result<Option<K>, kube::Error>, what: &str) -> String {
    match answer {
        Ok(None) => format!("{what} is gone"),
        Ok(Some(_)) => format!("{what} is there (being deleted or not)"),
        Err(e) => format!("{what}: {e}"),
    }
}

pub async fn check(client: Client, namespace: &str, daemonset: &str) -> Verdict {
    let ds_answer = Api::<DaemonSet>::namespaced(client.clone(), namespace).get_opt(daemonset).await;
    let ds = signal(&ds_answer, Signal::DaemonSetGone);
    let ds_what = describe(&ds_answer, &format!("DaemonSet {namespace}/{daemonset}"));
    match ds {
        Signal::Present => return Verdict::Staying,
        Signal::Unclear => {
            return Verdict::Unknown(format!(
                "{ds_what}; a refused token or an unreachable API server is not an uninstall"
            ));
        }
        _ => {}
    }
    let ns_answer = Api::<Namespace>::all(client).get_opt(namespace).await;
    let ns = signal(&ns_answer, Signal::NamespaceGone);
    let why = format!("{ds_what}; {}", describe(&ns_answer, &format!("namespace {namespace}")));
    match (ds, ns) {
        (Signal::DaemonSetGone, Signal::NamespaceGone | Signal::RoleGone)
        | (Signal::RoleGone, Signal::NamespaceGone) => Verdict::Uninstalling(why),
        _ => Verdict::Unknown(format!(
            "{why}: one sign of an uninstall is not enough (delete the namespace too, or run `pillion-agent reset` on the node)"
        )),
    }
}
