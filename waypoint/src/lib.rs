//! Pillion's waypoint: a per-namespace L7 proxy (design.md §5). It terminates HBONE with its
//! own identity, serves HTTP/1.1 and HTTP/2 on each tunnel, routes with Gateway API
//! `HTTPRoute`, applies resilience (timeouts, retries with a budget, circuit breaking,
//! outlier ejection), fault injection and L7 authorization, reports Istio's HTTP metrics,
//! and forwards to the chosen endpoint over HBONE. Services without routes or L7 policy are
//! passed through at L4.
//!
//! Layering, lowest first: [`rng`], [`normalize`], [`grpc`], [`route`], [`fault`], [`resilience`], [`authz`] (pure
//! types and decisions) → [`config`] (YAML into those types) → [`telemetry`] →
//! [`upstream`] (where requests go) → [`proxy`] (the request pipeline) → [`hbone`] (tunnels
//! in and out) → [`source`] (file or Kubernetes) → [`run`] (the binary's wiring).
#![forbid(unsafe_code)]

pub mod authz;
pub mod balance;
pub mod config;
pub mod fault;
pub mod grpc;
pub mod hbone;
pub mod normalize;
pub mod proxy;
pub mod resilience;
pub mod rng;
pub mod route;
pub mod run;
pub mod source;
pub mod telemetry;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testing;

pub use config::{L7Config, L7ConfigError};
pub use proxy::{Downstream, Proxy, ProxyConfig, Snapshot};
pub use upstream::{HboneUpstream, Target, Upstream, UpstreamError};
