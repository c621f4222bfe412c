//! One access-log line per connection, with ztunnel's field names, on the
//! `access` target so operators can route or silence it separately.

use std::{net::SocketAddr, time::Duration};

/// Which way a proxied connection went, from the pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Everything one access-log line says about a finished connection. Empty
/// strings are unknown values.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    pub direction: Option<Direction>,
    pub src: Option<SocketAddr>,
    pub src_workload: String,
    pub src_namespace: String,
    pub src_identity: String,
    pub dst: Option<SocketAddr>,
    /// Where HBONE went (`podIP:15008` or a waypoint), when it was used.
    pub dst_hbone: Option<SocketAddr>,
    pub dst_service: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    pub dst_identity: String,
    /// Bytes from the source toward the destination, and back.
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

fn addr(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

pub fn log(rec: &ConnRecord) {
    let duration = format!("{}ms", rec.duration.as_millis());
    let direction = rec.direction.map(Direction::as_str).unwrap_or("unknown");
    macro_rules! emit {
        ($level:expr, $msg:literal $(, $k:ident = %$v:expr)*) => {
            tracing::event!(
                target: "access",
                $level,
                src.addr = %addr(rec.src),
                src.workload = %rec.src_workload,
                src.namespace = %rec.src_namespace,
                src.identity = %rec.src_identity,
                dst.addr = %addr(rec.dst),
                dst.hbone_addr = %addr(rec.dst_hbone),
                dst.service = %rec.dst_service,
                dst.workload = %rec.dst_workload,
                dst.namespace = %rec.dst_namespace,
                dst.identity = %rec.dst_identity,
                direction = direction,
                bytes_sent = rec.bytes_sent,
                bytes_recv = rec.bytes_recv,
                duration = %duration,
                $($k = %$v,)*
                $msg
            )
        };
    }
    match &rec.error {
        None => emit!(tracing::Level::INFO, "connection complete"),
        Some(error) => emit!(tracing::Level::ERROR, "connection failed", error = %error),
    }
}
