//! From YAML text to a checked [`Model`]: parse the documents, check kinds and API
//! versions, apply the MeshConfig, convert each object, then let the model builder check
//! cross-references, reporting each problem at the line of the object it concerns.

use std::collections::HashMap;

use super::document::{Body, Document, ISTIO_SECURITY_APIS, KINDS, PILLION_API};
use super::{Problem, check_name, pillion};
use crate::istio::{authorization, peer_authentication};
use crate::model::{MeshSettings, Model, ModelBuilder, ObjectRef};

pub(super) fn parse(text: &str, version: u64) -> Result<Model, Problem> {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut docs: Vec<Document> = serde_saphyr::from_multiple_with_options(text, options).map_err(yaml_problem)?;
    let all_docs = docs.len();
    // L7 objects are the waypoint's to read and check; the model ignores them.
    docs.retain(|d| !super::document::is_waypoint_kind(&d.api_version.value, &d.kind.value));
    if all_docs == 0 {
        // Refuse rather than wipe every workload: an empty file is far more often an
        // editor's half-written save than an intent to empty the mesh.
        return Err(Problem::unlocated(
            "the file holds no objects; a config needs at least one (a MeshConfig will do) so that a half-written file is never mistaken for an empty mesh",
        ));
    }

    for d in &docs {
        if let Body::SpecBeforeKind(spec) = &d.body {
            return Err(Problem::at(
                spec,
                "`spec` comes before `kind`: put `kind` first, it decides how `spec` is read".into(),
            ));
        }
        check_kind(d)?;
    }
    let mut mesh_docs = docs.iter().filter(|d| d.kind.value == "MeshConfig");
    let mesh = match mesh_docs.next() {
        None => MeshSettings::default(),
        Some(d) => match &d.body {
            Body::MeshConfig(spec) => pillion::mesh_settings(spec)?,
            _ => MeshSettings::default(),
        },
    };
    if let Some(second) = mesh_docs.next() {
        return Err(Problem::at(&second.kind, "a second MeshConfig: keep exactly one".into()));
    }

    let mut builder = ModelBuilder::new(mesh.clone());
    // Where each object is defined, to point model-level errors (duplicates, dangling
    // references) at the right line.
    let mut lines: HashMap<ObjectRef, (u64, u64)> = HashMap::new();
    for d in &docs {
        let meta = &d.metadata.value;
        let name = &meta.name;
        check_name(name, "metadata.name")?;
        let namespace = match &meta.namespace {
            Some(ns) => {
                check_name(ns, "metadata.namespace")?;
                ns.value.as_str()
            }
            None => "default",
        };
        let kind = d.kind.value.as_str();
        let key = match kind {
            "Namespace" | "MeshConfig" => ObjectRef::new(kind_static(kind), "", &name.value),
            _ => ObjectRef::new(kind_static(kind), namespace, &name.value),
        };
        let here = (name.referenced.line(), name.referenced.column());
        if lines.insert(key.clone(), here).is_some() {
            return Err(Problem::at(name, format!("{key} is defined twice: give each object a unique namespace/name")));
        }
        let missing_spec = || Problem::at(&d.kind, format!("a {kind} needs a `spec`"));
        match (&d.body, kind) {
            (Body::Workload(spec), _) => {
                builder.workload(pillion::workload(&mesh, namespace, name, &meta.labels, spec)?);
            }
            (Body::Service(spec), _) => {
                builder.service(pillion::service(namespace, name, &meta.labels, spec)?);
            }
            (Body::AuthorizationPolicy(spec), _) => {
                let a = authorization::compile(&mesh, namespace, &name.value, &meta.annotations, Some(spec))
                    .map_err(|e| Problem::from(e).or_at(&d.kind))?;
                builder.authorization_policy(a.policy);
            }
            (Body::Empty, "AuthorizationPolicy") => {
                let a = authorization::compile(&mesh, namespace, &name.value, &meta.annotations, None)
                    .map_err(|e| Problem::from(e).or_at(&d.kind))?;
                builder.authorization_policy(a.policy);
            }
            (Body::PeerAuthentication(spec), _) => {
                let p = peer_authentication::compile(namespace, &name.value, Some(spec))
                    .map_err(|e| Problem::from(e).or_at(name))?;
                builder.peer_authentication(p);
            }
            (Body::Empty, "PeerAuthentication") => {
                let p = peer_authentication::compile(namespace, &name.value, None)
                    .map_err(|e| Problem::from(e).or_at(name))?;
                builder.peer_authentication(p);
            }
            (_, "Namespace") => {
                builder.namespace(&name.value, meta.labels.clone());
            }
            (_, "MeshConfig") => {}
            _ => return Err(missing_spec()),
        }
    }

    builder.build(version).map_err(|e| {
        let at = e.object().and_then(|o| lines.get(o)).copied();
        Problem { at, msg: e.to_string() }
    })
}

fn kind_static(kind: &str) -> &'static str {
    KINDS.iter().find(|k| **k == kind).copied().unwrap_or("Object")
}

fn check_kind(d: &Document) -> Result<(), Problem> {
    let kind = d.kind.value.as_str();
    let api = d.api_version.value.as_str();
    let want: &[&str] = match kind {
        "Workload" | "Service" | "MeshConfig" => &[PILLION_API],
        "Namespace" => &["v1"],
        "AuthorizationPolicy" | "PeerAuthentication" => ISTIO_SECURITY_APIS,
        other => {
            return Err(Problem::at(&d.kind, format!("unknown kind {other:?}: expected one of {}", KINDS.join(", "))));
        }
    };
    if !want.contains(&api) {
        return Err(Problem::at(
            &d.api_version,
            format!("apiVersion {api:?} does not serve kind {kind}: use {}", want.join(" or ")),
        ));
    }
    Ok(())
}

/// serde-saphyr reports syntax and type errors with a location; keep the message short
/// (no snippet) and put the location where our errors put it.
fn yaml_problem(e: serde_saphyr::Error) -> Problem {
    let at = e.location().map(|l| (l.line(), l.column()));
    let mut msg = e.without_snippet().to_string();
    // Its message repeats the location ("… at line N, column M"); ours leads with `file:N:M:`.
    if let Some((line, column)) = at
        && let Some(short) = msg.strip_suffix(&format!(" at line {line}, column {column}"))
    {
        msg = short.to_owned();
    }
    Problem { at, msg }
}
