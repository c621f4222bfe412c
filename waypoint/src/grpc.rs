//! What the waypoint knows of gRPC: status codes and their names (for retry policies and the
//! `grpc_response_status` label), the `grpc-timeout` header, and the status a local reply
//! carries (gRPC clients read `grpc-status`, not the HTTP code).

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// A gRPC status code (0–16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcStatus(pub u8);

/// Names as Envoy's `retry_on` and Linkerd's annotations spell them, by code.
const NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

impl GrpcStatus {
    pub const CANCELLED: Self = Self(1);
    pub const UNKNOWN: Self = Self(2);
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    pub const PERMISSION_DENIED: Self = Self(7);
    pub const UNIMPLEMENTED: Self = Self(12);
    pub const INTERNAL: Self = Self(13);
    pub const UNAVAILABLE: Self = Self(14);
    pub const UNAUTHENTICATED: Self = Self(16);

    /// `unavailable`, `deadline-exceeded`, … (also with `_`, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        NAMES.iter().position(|n| *n == name).map(|i| Self(i as u8))
    }

    /// The `grpc-status` of a header or trailer block.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let v: u8 = headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
        (usize::from(v) < NAMES.len()).then_some(Self(v))
    }

    /// The status a local reply with this HTTP code carries (gRPC's HTTP mapping); a timeout
    /// is `DEADLINE_EXCEEDED`.
    pub fn for_local_reply(code: StatusCode, timed_out: bool) -> Self {
        if timed_out {
            return Self::DEADLINE_EXCEEDED;
        }
        match code.as_u16() {
            400 => Self::INTERNAL,
            401 => Self::UNAUTHENTICATED,
            403 => Self::PERMISSION_DENIED,
            404 => Self::UNIMPLEMENTED,
            408 => Self::DEADLINE_EXCEEDED,
            429 | 502 | 503 | 504 => Self::UNAVAILABLE,
            _ => Self::UNKNOWN,
        }
    }
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|…]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc") && !v.starts_with("application/grpc-web"))
}

/// The client's `grpc-timeout` (`<1–8 digits><H|M|S|m|u|n>`); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_timeouts_read_as_the_grpc_spec_writes_them() {
        assert_eq!(GrpcStatus::from_name("unavailable"), Some(GrpcStatus::UNAVAILABLE));
        assert_eq!(GrpcStatus::from_name("DEADLINE_EXCEEDED"), Some(GrpcStatus::DEADLINE_EXCEEDED));
        assert_eq!(GrpcStatus::from_name("resource-exhausted"), Some(GrpcStatus(8)));
        assert_eq!(GrpcStatus::from_name("teapot"), None);
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(GrpcStatus::of(&h), Some(GrpcStatus::UNAVAILABLE));
        h.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(GrpcStatus::of(&h), None);
        for (v, d) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
        ] {
            h.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(timeout(&h), d, "{v}");
        }
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert("content-type", "application/grpc-web".parse().unwrap());
        assert!(!is_grpc(&h));
    }
}
