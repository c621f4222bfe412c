//! Fault injection (Pillion's `FaultInjection` resource, attached to a rule through an
//! HTTPRoute `ExtensionRef` filter): delay and/or abort a share of requests so users can test
//! how their clients cope.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct FaultInjection {
    /// `namespace/name` of the resource, for logs.
    pub name: String,
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    pub fixed: Duration,
    /// 0.0–100.0
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Abort {
    pub status: http::StatusCode,
    pub percentage: f64,
}

/// What to do to one request, decided up front from two random draws in `[0, 100)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<http::StatusCode>,
}

impl FaultInjection {
    pub fn decide(&self, draw_delay: f64, draw_abort: f64) -> Decision {
        Decision {
            delay: self.delay.as_ref().filter(|d| draw_delay < d.percentage).map(|d| d.fixed),
            abort: self.abort.as_ref().filter(|a| draw_abort < a.percentage).map(|a| a.status),
        }
    }
}
