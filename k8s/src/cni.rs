//! The chained CNI plugin (`pillion-cni`): the container runtime calls it after the
//! primary plugin has given a pod its addresses and before any container of the pod
//! starts, so an ambient pod is captured before it can send a byte.
//!
//! - ADD: decide whether the pod is in the mesh (its and its namespace's
//!   `istio.io/dataplane-mode` labels, read from the API server — the same rule as the
//!   configuration source, [`crate::captured`]); if so, ask the node agent to enrol it
//!   over its Unix socket. An unreachable agent **fails** the ADD (the runtime retries), so
//!   an ambient pod never starts uncaptured. The previous plugin's result is passed on.
//! - DEL: ask the agent to unenrol; never fails for a missing agent (a restarted agent
//!   drops pods whose netns vanished) or a pod it does not know.
//! - CHECK: an ambient pod must be enrolled. VERSION, STATUS and GC as the spec says.
//!
//! [`spec`] parses and formats the CNI wire shapes, [`agent`] talks to the agent,
//! [`plugin`] puts them together behind a [`plugin::Decide`] trait the binary fills with
//! a Kubernetes lookup and tests fill with a fixed answer.

pub mod agent;
pub mod install;
pub mod plugin;
pub mod spec;
#[cfg(test)]
mod tests;

pub use plugin::{Decide, Outcome, run};
pub use spec::{CniError, Command, Invocation, NetConf};
