//! The L7 configuration from Kubernetes objects (`pillion_k8s::KubeSource::l7_objects`),
//! which arrive in the shape of config-file documents and go through the same converters.
//!
//! A file is rejected whole over one bad object because its author is right there; a
//! cluster has many authors, so here each object is checked on its own. A bad route,
//! backend policy or fault is left out and reported, and the rest applies. A bad
//! AuthorizationPolicy is not left out, which would open what a DENY closes (or, for an
//! ALLOW, what its other rules would have kept closed): it is enforced as deny-all on the
//! targets it names, and reported; when even its targets cannot be read, on every waypoint
//! and Service of its namespace (never further: one tenant's bad object must not freeze
//! other tenants' configuration). FaultInjections and ReferenceGrants
//! are checked first because routes refer to them.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde_json::Value;

use super::document::{Object, build, is_l7_kind};
use super::{L7Config, L7ConfigError, authz};
use crate::authz::{L7Policy, L7Rule, PolicyTarget};

/// Names the origin in errors, where a file source names its path.
const SOURCE: &str = "the Kubernetes API";

/// The parts of an object the converters borrow.
struct Owned {
    kind: String,
    namespace: String,
    name: String,
    annotations: BTreeMap<String, String>,
    spec: Value,
}

impl Owned {
    fn read(o: &Value) -> Option<Self> {
        let kind = o["kind"].as_str()?;
        if !is_l7_kind(o["apiVersion"].as_str().unwrap_or(""), kind) {
            return None;
        }
        let m = &o["metadata"];
        Some(Self {
            kind: kind.to_owned(),
            namespace: m["namespace"].as_str().unwrap_or("default").to_owned(),
            name: m["name"].as_str()?.to_owned(),
            annotations: serde_json::from_value(m["annotations"].clone()).unwrap_or_default(),
            spec: o.get("spec").cloned().unwrap_or(Value::Null),
        })
    }

    fn object(&self) -> Object<'_> {
        Object {
            kind: &self.kind,
            namespace: &self.namespace,
            name: &self.name,
            annotations: &self.annotations,
            at: (0, 0),
            spec: &self.spec,
        }
    }

    fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The configuration built from `objects`, and one line per object left out or replaced
/// and why. One object never blocks the others: an AuthorizationPolicy whose targets cannot
/// be read is deny-all on its whole namespace.
pub fn from_objects<O: Borrow<Value>>(
    objects: &[O],
    trust_domain: &str,
) -> Result<(L7Config, Vec<String>), L7ConfigError> {
    let owned: Vec<Owned> = objects.iter().filter_map(|o| Owned::read(o.borrow())).collect();
    let mut notes = Vec::new();
    // Objects that routes refer to come first and go with every route's check.
    let (faults, others): (Vec<&Owned>, Vec<&Owned>) =
        owned.iter().partition(|o| o.kind == "FaultInjection" || o.kind == "ReferenceGrant");

    let mut good: Vec<Object<'_>> = Vec::new();
    for f in faults {
        match build(&[f.object()], trust_domain) {
            Ok(_) => good.push(f.object()),
            Err(p) => notes.push(format!("{} left out: {}", f.describe(), p.msg)),
        }
    }
    let faults_ok = good.len();
    let mut stand_ins = Vec::new();
    for o in others {
        let mut with_faults = good[..faults_ok].to_vec();
        with_faults.push(o.object());
        let Err(p) = build(&with_faults, trust_domain) else {
            good.push(o.object());
            continue;
        };
        if o.kind != "AuthorizationPolicy" {
            notes.push(format!("{} left out: {}", o.describe(), p.msg));
            continue;
        }
        let (targets, scope) = match authz::targets(&o.spec) {
            Some(targets) if targets.is_empty() => {
                notes.push(format!("{} left out: {}", o.describe(), p.msg));
                continue;
            }
            Some(targets) => (targets, "its targets"),
            // Where it applies is unknown, but not outside its namespace: a policy binds only
            // to its own namespace's waypoints and Services. Deny-all there, the rest of
            // the cluster unaffected.
            None => (vec![PolicyTarget::Namespace], "every waypoint and Service of its namespace"),
        };
        notes.push(format!("{}: {}; enforced as deny-all on {scope} until fixed", o.describe(), p.msg));
        stand_ins.push(L7Policy {
            name: o.name.clone(),
            namespace: o.namespace.clone(),
            action: mesh::model::Action::Deny,
            targets,
            // An empty rule matches every request.
            rules: vec![L7Rule::default()],
            dry_run: false,
        });
    }
    // Objects valid one by one are valid together today; if that ever changes, the
    // update is refused rather than half-applied.
    let mut config =
        build(&good, trust_domain).map_err(|p| L7ConfigError::Unlocated { file: SOURCE.into(), problem: p.msg })?;
    config.authz.extend(stand_ins);
    Ok((config, notes))
}
