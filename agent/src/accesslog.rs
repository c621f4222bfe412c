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

/// Everything one access-log line says about a finished connection.
#[derive(Debug, Clone)]
pub struct ConnRecord<'a> {
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: Option<SocketAddr>,
    /// The enrolled pod this agent served (source for outbound, destination
    /// for inbound), as `namespace/name`.
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    /// Bytes from the source toward the destination, and back.
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

pub fn log(rec: &ConnRecord<'_>) {
    let dst = rec.dst.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into());
    let duration = format!("{}ms", rec.duration.as_millis());
    let (src_workload, src_namespace, dst_workload, dst_namespace) = match rec.direction {
        Direction::Outbound => (rec.pod_name, rec.pod_namespace, "", ""),
        Direction::Inbound => ("", "", rec.pod_name, rec.pod_namespace),
    };
    match &rec.error {
        None => tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = %rec.src,
            src.workload = src_workload,
            src.namespace = src_namespace,
            dst.addr = %dst,
            dst.workload = dst_workload,
            dst.namespace = dst_namespace,
            direction = rec.direction.as_str(),
            bytes_sent = rec.bytes_sent,
            bytes_recv = rec.bytes_recv,
            duration = %duration,
            "connection complete"
        ),
        Some(error) => tracing::event!(
            target: "access",
            tracing::Level::ERROR,
            src.addr = %rec.src,
            src.workload = src_workload,
            src.namespace = src_namespace,
            dst.addr = %dst,
            dst.workload = dst_workload,
            dst.namespace = dst_namespace,
            direction = rec.direction.as_str(),
            bytes_sent = rec.bytes_sent,
            bytes_recv = rec.bytes_recv,
            duration = %duration,
            error = %error,
            "connection failed"
        ),
    }
}
