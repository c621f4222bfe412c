//! What the agent knows about an enrolled pod.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EnrolError;

/// An enrolment request, as the API, the CLI and the state files carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// The pod's network namespace, e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// The pod's cgroup v2 directory, when known: checked to be under the
    /// capture root so a pod that could never be captured is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// The pod's uid, when the enroller knows it (the CNI plugin, the
    /// Kubernetes reconciler): checked against the model's, so a re-created
    /// pod of the same name is not taken for the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl PodSpec {
    /// `namespace/name`, the pod's identity in the API and the logs.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A file name for the pod's pins and state: `namespace_name`, with the name's dots
    /// as `_` (bpffs refuses dots). Namespaces hold neither `_` nor `.`, and names no
    /// `_`, so no two pods share one.
    pub fn file_name(&self) -> String {
        format!("{}_{}", self.namespace, self.name.replace('.', "_"))
    }

    pub fn validate(&self) -> Result<(), EnrolError> {
        // A namespace is a DNS-1123 label; a pod name a DNS-1123 subdomain (labels joined
        // by dots, as a Deployment named `my.app` makes them).
        if !is_label(&self.namespace) {
            return Err(EnrolError::BadName(self.namespace.clone()));
        }
        if self.name.len() > 253 || !self.name.split('.').all(is_label) {
            return Err(EnrolError::BadName(self.name.clone()));
        }
        // A file name (pins, state) is at most 255 bytes.
        if self.file_name().len() > 255 {
            return Err(EnrolError::BadName(self.key()));
        }
        if self.ips.is_empty() {
            return Err(EnrolError::NoIps(self.key()));
        }
        Ok(())
    }
}

/// A DNS-1123 label: 1–63 of lowercase letters, digits and `-`, not at either end.
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            name: "client-1".into(),
            namespace: "default".into(),
            netns: "/var/run/netns/x".into(),
            ips: vec!["10.1.0.2".parse().unwrap()],
            cgroup: None,
            uid: None,
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
        assert_eq!(spec().file_name(), "default_client-1");
    }

    #[test]
    fn bad_names_and_missing_ips_are_refused() {
        for bad in ["", "Upper", "dot.", ".dot", "a..b", "-lead", "trail-", "a/b", "under_score"] {
            let mut s = spec();
            s.name = bad.into();
            assert!(matches!(s.validate(), Err(EnrolError::BadName(_))), "{bad:?}");
        }
        let mut s = spec();
        s.ips.clear();
        assert!(matches!(s.validate(), Err(EnrolError::NoIps(_))));
    }

    #[test]
    fn dotted_names_are_pods_too() {
        let mut s = spec();
        s.name = "my.app-7d9f-x2".into();
        s.validate().unwrap();
        assert_eq!(s.file_name(), "default_my_app-7d9f-x2", "bpffs refuses dots");
        s.namespace = "has.dot".into();
        assert!(matches!(s.validate(), Err(EnrolError::BadName(_))), "namespaces are labels");
        s.namespace = "default".into();
        s.name = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        assert!(matches!(s.validate(), Err(EnrolError::BadName(_))), "longer than a file name may be");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            serde_json::from_str::<PodSpec>(r#"{"name":"a","namespace":"b","netns":"/x","ips":[],"hostNetwork":true}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
