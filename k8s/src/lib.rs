//! Pillion's Kubernetes configuration source.
//!
//! kube-rs watchers for Namespaces, Pods, Services, EndpointSlices, Gateway API
//! `Gateway`s (waypoints) and `HTTPRoute`s, and Istio's `AuthorizationPolicy` and
//! `PeerAuthentication`, folded into the same [`mesh::model::Model`] the file source
//! builds and published through a `tokio::sync::watch` channel.
//!
//! Layering: [`labels`] → [`consent`] (a waypoint's pods and users) → [`objects`] (compact
//! forms; Istio's security kinds through `mesh::istio`, the reader the file source and the
//! waypoint use too) → [`cache`]
//! (tables, atomic relists) → [`translate`] (cache → model, a pure function) → [`source`]
//! (the watch task). [`cni`] is the chained CNI plugin (binary `pillion-cni`). See
//! `docs/kubernetes.md`.
#![forbid(unsafe_code)]

mod backoff;
pub mod ca_auth;
pub mod cache;
pub mod cni;
pub mod consent;
pub mod labels;
pub mod objects;
pub mod procfs;
pub mod source;
pub mod translate;
pub mod uninstall;
pub mod waypoints;

pub use ca_auth::KubeAuthorizer;
pub use source::{KubeSource, Options, SourceStatus};
pub use translate::{LocalPod, captured};
