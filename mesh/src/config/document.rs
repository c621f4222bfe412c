//! One YAML document = one Kubernetes-shaped object. The `kind` decides how `spec` is
//! read, so `kind` must come before `spec` (as in every manifest `kubectl` writes).
//!
//! Values that need checking beyond their YAML type (addresses, principals, ports…) are
//! kept as [`Spanned`] so that errors found after parsing still point at their line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::pillion::{MeshConfigSpec, ServiceSpec, WorkloadSpec};
use crate::istio::authorization::AuthorizationPolicySpec;
use crate::istio::peer_authentication::PeerAuthenticationSpec;

pub(crate) const PILLION_API: &str = "pillion.dev/v1alpha1";
pub(crate) const ISTIO_SECURITY_APIS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
pub(crate) const KINDS: &[&str] =
    &["Workload", "Service", "MeshConfig", "Namespace", "AuthorizationPolicy", "PeerAuthentication"];
/// Kinds the waypoint reads from the same file (`waypoint/src/config*`), with their API
/// versions: the model skips them so one file can hold the whole mesh, L7 included.
pub const WAYPOINT_KINDS: &[(&str, &[&str])] = &[
    ("HTTPRoute", &["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]),
    ("GRPCRoute", &["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"]),
    ("XBackendTrafficPolicy", &["gateway.networking.x-k8s.io/v1alpha1"]),
    ("DestinationRule", &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]),
    ("FaultInjection", &[PILLION_API]),
    ("ReferenceGrant", &["gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1"]),
];

/// Whether a document of this `apiVersion` and `kind` belongs to the waypoint.
pub fn is_waypoint_kind(api_version: &str, kind: &str) -> bool {
    WAYPOINT_KINDS.iter().any(|(k, apis)| *k == kind && apis.contains(&api_version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Metadata {
    pub name: Spanned<String>,
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    // Accepted and ignored so objects copied from `kubectl get -o yaml` load unchanged.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<IgnoredAny>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<IgnoredAny>,
    #[serde(default, rename = "generation")]
    _generation: Option<IgnoredAny>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<IgnoredAny>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<IgnoredAny>,
    #[serde(default, rename = "ownerReferences")]
    _owner_references: Option<IgnoredAny>,
    #[serde(default, rename = "finalizers")]
    _finalizers: Option<IgnoredAny>,
}

#[derive(Debug)]
pub(crate) enum Body {
    Workload(WorkloadSpec),
    Service(ServiceSpec),
    MeshConfig(MeshConfigSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    PeerAuthentication(PeerAuthenticationSpec),
    /// No `spec` (fine for Namespace; an empty AuthorizationPolicy means "deny all").
    Empty,
    /// `spec` came before `kind`, so it could not be read; reported at its line.
    SpecBeforeKind(Spanned<IgnoredAny>),
    /// A `spec` that was skipped: the kind is unknown (reported later at the kind's line)
    /// or the kind does not need one (Namespace).
    Skipped,
}

#[derive(Debug)]
pub(crate) struct Document {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Spanned<Metadata>,
    pub body: Body,
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with apiVersion, kind, metadata and spec")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        const FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
        let (mut api_version, mut kind, mut metadata, mut body) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" => api_version = Some(map.next_value::<Spanned<String>>()?),
                "kind" => kind = Some(map.next_value::<Spanned<String>>()?),
                "metadata" => metadata = Some(map.next_value::<Spanned<Metadata>>()?),
                "status" => {
                    map.next_value::<IgnoredAny>()?;
                }
                "spec" => {
                    let Some(k) = kind.as_ref() else {
                        // serde-saphyr gives custom errors no location, so remember where the
                        // spec is and report it once the document is read.
                        body = Some(Body::SpecBeforeKind(map.next_value::<Spanned<IgnoredAny>>()?));
                        continue;
                    };
                    body = Some(match k.value.as_str() {
                        "Workload" => Body::Workload(map.next_value()?),
                        "Service" => Body::Service(map.next_value()?),
                        "MeshConfig" => Body::MeshConfig(map.next_value()?),
                        "AuthorizationPolicy" => match map.next_value::<Option<AuthorizationPolicySpec>>()? {
                            Some(s) => Body::AuthorizationPolicy(s),
                            None => Body::Empty,
                        },
                        "PeerAuthentication" => match map.next_value::<Option<PeerAuthenticationSpec>>()? {
                            Some(s) => Body::PeerAuthentication(s),
                            None => Body::Empty,
                        },
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            Body::Skipped
                        }
                    });
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        Ok(Document {
            api_version: api_version.ok_or_else(|| de::Error::missing_field("apiVersion"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            metadata: metadata.ok_or_else(|| de::Error::missing_field("metadata"))?,
            body: body.unwrap_or(Body::Empty),
        })
    }
}
