//! W3C trace context across the waypoint: the incoming `traceparent` keeps its trace id and
//! flags and gets a new parent (span) id for this hop; without a valid one a new trace starts.
//! `tracestate` and `baggage` are passed on untouched, as are `x-request-id` and B3 headers
//! (the proxy copies every request header it does not own).

use http::HeaderMap;
use mesh::parse::Traceparent;

use crate::rng::Rng;

pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// This hop's span id (the next hop's parent id).
    pub span_id: u64,
    /// The caller's span id, if it sent one.
    pub parent_id: Option<u64>,
    pub flags: u8,
}

impl TraceContext {
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn nonzero(mut f: impl FnMut() -> u64) -> u64 {
    loop {
        let v = f();
        if v != 0 {
            return v;
        }
    }
}

/// Rewrites `traceparent` for the next hop and returns the context for the access log.
pub fn next_hop(headers: &mut HeaderMap, rng: &Rng) -> TraceContext {
    let incoming = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(|s| Traceparent::parse(s).ok());
    let span_id = nonzero(|| rng.next_u64());
    let ctx = match incoming {
        Some(tp) => TraceContext { trace_id: tp.trace_id, span_id, parent_id: Some(tp.parent_id), flags: tp.flags },
        None => {
            let hi = u128::from(nonzero(|| rng.next_u64()));
            TraceContext { trace_id: (hi << 64) | u128::from(rng.next_u64()), span_id, parent_id: None, flags: 0 }
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&ctx.header()) {
        headers.insert(TRACEPARENT, v);
    }
    ctx
}
