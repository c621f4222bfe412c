//! Runtime log levels: a reloadable `EnvFilter` the admin server can read and replace.
//!
//! The filter is a `reload::Layer` directly on `tracing_subscriber::Registry` (the first layer),
//! so a new filter governs every layer above it — the text or JSON formatter and the `access`
//! target alike. The agent builds its subscriber like this (`init` also routes the `log`
//! crate, i.e. aya-log, into tracing, as `fmt().init()` did):
//!
//! ```no_run
//! use mesh::telemetry::LogControl;
//! use tracing_subscriber::prelude::*;
//!
//! # fn main() -> Result<(), mesh::telemetry::TelemetryError> {
//! # let json = false;
//! let (filter, logs) = LogControl::from_env("PILLION_LOG", "info")?;
//! let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
//! let subscriber = tracing_subscriber::registry().with(filter);
//! if json {
//!     subscriber.with(fmt.json().flatten_event(true).with_current_span(false)).init();
//! } else {
//!     subscriber.with(fmt).init();
//! }
//! // Hand `logs` to `AdminEndpoint::new`; `POST /logging?level=debug` then calls:
//! logs.set("debug,h2=info")?;
//! assert_eq!(logs.current()?, "h2=info,debug");
//! # Ok(()) }
//! ```

use tracing_subscriber::{EnvFilter, Registry, reload};

use super::TelemetryError;

/// The reloadable layer to put first on the `Registry`.
pub type FilterLayer = reload::Layer<EnvFilter, Registry>;

/// Reads and replaces the process's log filter. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    /// A filter layer starting at `initial` (e.g. from `RUST_LOG` or a flag), and its control.
    pub fn new(initial: &str) -> Result<(FilterLayer, LogControl), TelemetryError> {
        let (layer, handle) = reload::Layer::new(parse(initial)?);
        Ok((layer, LogControl { handle }))
    }

    /// Starts from the environment variable `var` (e.g. `PILLION_LOG`) when set, else `default`.
    /// A set but invalid variable is an error rather than silently ignored.
    pub fn from_env(var: &str, default: &str) -> Result<(FilterLayer, LogControl), TelemetryError> {
        match std::env::var(var) {
            Ok(directives) => Self::new(&directives),
            Err(_) => Self::new(default),
        }
    }

    /// For a subscriber built elsewhere around its own reload layer.
    pub fn from_handle(handle: reload::Handle<EnvFilter, Registry>) -> Self {
        Self { handle }
    }

    /// The filter in force, in `EnvFilter`'s directive syntax.
    pub fn current(&self) -> Result<String, TelemetryError> {
        self.handle.with_current(|f| f.to_string()).map_err(|_| TelemetryError::LogSubscriberGone)
    }

    /// Replaces the filter; on a parse error nothing changes. Returns the filter now in force.
    pub fn set(&self, directives: &str) -> Result<String, TelemetryError> {
        let filter = parse(directives)?;
        self.handle.reload(filter).map_err(|_| TelemetryError::LogSubscriberGone)?;
        tracing::info!(filter = directives, "log filter changed");
        self.current()
    }
}

/// Strict parsing: unlike `EnvFilter::new`, a bad directive is an error, not silently dropped,
/// so an operator's typo is reported instead of quietly logging nothing.
fn parse(directives: &str) -> Result<EnvFilter, TelemetryError> {
    let bad = |reason: String| TelemetryError::LogFilter { filter: directives.to_owned(), reason };
    if directives.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    // Regexes off: field-value patterns arriving over HTTP are matched literally, never compiled.
    EnvFilter::builder().with_regex(false).parse(directives).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_bad_filter_keeps_old() {
        use tracing_subscriber::prelude::*;
        let (filter, logs) = LogControl::new("info").unwrap();
        let subscriber = tracing_subscriber::registry().with(filter);
        assert_eq!(logs.current().unwrap(), "info");
        assert_eq!(logs.set("warn,access=debug").unwrap(), "access=debug,warn");
        let err = logs.set("access=loud").unwrap_err();
        assert!(matches!(err, TelemetryError::LogFilter { .. }), "{err}");
        assert!(logs.set("  ").is_err());
        assert_eq!(logs.current().unwrap(), "access=debug,warn");
        drop(subscriber);
        assert!(matches!(logs.current(), Err(TelemetryError::LogSubscriberGone)));
    }

    #[test]
    fn from_env_falls_back_to_the_default() {
        use tracing_subscriber::prelude::*;
        let (filter, logs) = LogControl::from_env("PILLION_TEST_UNSET_LOG_VARIABLE", "warn").unwrap();
        let _subscriber = tracing_subscriber::registry().with(filter);
        assert_eq!(logs.current().unwrap(), "warn");
        assert!(LogControl::from_env("PILLION_TEST_UNSET_LOG_VARIABLE", "access=loud").is_err());
    }
}
