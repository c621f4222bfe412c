//! Shared library of Pillion's proxies: workload identity and TLS, certificate sources and
//! rotation, and HBONE (HTTP/2 CONNECT over mutual TLS 1.3) as server and pooled client.
//!
//! Layering, lowest first; each module depends only on those above it:
//! - [`parse`]: untrusted-input parsers, `std` only (fuzzed on their own).
//! - [`clock`]: injectable time.
//! - [`limits`]: accept back-off and connection caps (tokio only).
//! - [`buffer`]: read sizes for the byte relays.
//! - [`tls`]: the crypto provider, X.509-SVID rules, verifiers, trust bundles, TLS configs.
//! - [`ca`]: certificate sources (embedded CA, Istio CA client) and the CA server.
//! - [`certs`]: per-workload certificates and their rotation.
//! - [`hbone`]: the tunnel protocol, server and client pool.
//! - [`model`]: the workload model and L4 policy evaluation (uses only [`parse`]).
//! - [`istio`]: Istio's security kinds (AuthorizationPolicy, PeerAuthentication), read once
//!   for the file source, the Kubernetes source and the waypoint (uses [`model`]).
//! - [`config`]: the local YAML config source and its reloading watcher (uses [`model`], [`istio`]).
#![forbid(unsafe_code)]

pub mod buffer;
pub mod ca;
pub mod certs;
pub mod clock;
pub mod config;
pub mod dns;
pub mod hbone;
pub mod istio;
pub mod limits;
pub mod model;
pub mod parse;
pub mod telemetry;
pub mod tls;

pub use parse::{Authority, Identity, SpiffeId};
