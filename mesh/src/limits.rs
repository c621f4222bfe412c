//! Bounds on what peers can make a server hold: how fast a failing `accept` is retried
//! ([`AcceptBackoff`]), how many connections, handshakes or tunnels run at once
//! ([`ConnLimit`], and per source address [`PerSourceLimit`]), and how often one peer may ask for costly work ([`PeerRateLimit`]). Every server of both proxies uses these, so one limit behaves the same
//! everywhere: refused at once, counted in `pillion_limit_refusals_total`, and logged at most
//! once per [`LOG_INTERVAL`].
//!
//! Depends only on tokio, tracing and prometheus-client (no other module of this crate).

mod accept;
mod conn;
mod log_gate;
mod per_source;
mod rate;
#[cfg(test)]
mod tests;

pub use accept::{AcceptBackoff, BACKOFF_MAX, BACKOFF_MIN};
pub use conn::{ConnLimit, LimitMetrics};
pub use log_gate::{LOG_INTERVAL, LogGate};
pub use per_source::{PerSourceLimit, SourceSlot};
pub use rate::PeerRateLimit;
