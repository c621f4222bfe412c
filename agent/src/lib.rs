//! Pillion's per-node agent: loads the kernel programs, enrols pods, and
//! proxies their captured connections.
//!
//! Layering (dependencies point one way): `netns` and `kernel` know nothing of
//! pods; `pod`/`state` describe and persist enrolments; `enrol` ties a pod to
//! the kernel and to its listeners; `proxy` serves those listeners; `api` and
//! `run` are the application edges.

pub mod accesslog;
pub mod api;
pub mod attribution;
pub mod config;
pub mod conntrack;
pub mod drain;
pub mod enrol;
pub mod error;
pub mod kernel;
pub mod kubernetes;
pub mod listeners;
pub mod meshctx;
pub mod netlink;
pub mod netns;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod route;
pub mod run;
pub mod state;
pub mod stats;
