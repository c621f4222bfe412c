//! The three endpoint sets: metrics (:15020), readiness (:15021), admin (127.0.0.1:15000).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;

use super::{get_only, method_not_allowed, not_found, query, text, with_type};
use crate::telemetry::dump::{ConfigDump, contains_key_material};
use crate::telemetry::{LogControl, Readiness, TelemetryError};

/// prometheus-client writes OpenMetrics 1.0 text (it ends with `# EOF` and declares counters
/// without `_total`), so this is the truthful content type; Prometheus negotiates and parses it
/// natively, as it does for ztunnel, which serves the same.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` (and `/stats/prometheus`, the path Istio's proxies also serve, so scrape
/// configs written for them keep working): the registry in OpenMetrics text.
pub struct MetricsEndpoint {
    registry: Arc<Registry>,
}

impl MetricsEndpoint {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl super::Endpoint for MetricsEndpoint {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn handle(&self, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        if !matches!(request.uri().path(), "/metrics" | "/stats/prometheus") {
            return not_found(request.uri().path());
        }
        get_only(request, || {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                Ok(()) => with_type(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, body.into_bytes()),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n"),
            }
        })
    }
}

/// `GET /healthz/ready`: 200 once every readiness condition holds, else 503 naming the rest.
pub struct ReadinessEndpoint {
    readiness: Readiness,
}

impl ReadinessEndpoint {
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

impl super::Endpoint for ReadinessEndpoint {
    fn name(&self) -> &'static str {
        "readiness"
    }

    fn handle(&self, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/healthz/ready" {
            return not_found(request.uri().path());
        }
        get_only(request, || {
            let pending = self.readiness.pending();
            if pending.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready; waiting for: {}\n", pending.join(", ")))
            }
        })
    }
}

/// The admin API: `GET /config_dump`, `GET|POST /logging`. [`HttpServer::bind`](super::HttpServer::bind)
/// refuses to put it on a non-loopback address.
pub struct AdminEndpoint {
    dump: Box<dyn ConfigDump>,
    logs: LogControl,
}

impl AdminEndpoint {
    pub fn new(dump: impl ConfigDump, logs: LogControl) -> Self {
        Self { dump: Box::new(dump), logs }
    }

    fn config_dump(&self) -> Response<Full<Bytes>> {
        let json = match serde_json::to_string_pretty(&self.dump.dump()) {
            Ok(json) => json,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the dump failed: {e}\n")),
        };
        // Last line of defence: whatever the application put in, a key never leaves.
        if contains_key_material(&json) {
            tracing::error!("config dump contains private key material; refusing to serve it");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the config dump contains private key material and was withheld; this is a bug: dump CertSummary, not keys\n",
            );
        }
        with_type(StatusCode::OK, "application/json", json.into_bytes())
    }

    fn logging(&self, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        match *request.method() {
            Method::GET => match self.logs.current() {
                Ok(filter) => text(StatusCode::OK, format!("{filter}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            Method::POST => {
                let level = match query::param(request.uri().query(), "level") {
                    Ok(Some(level)) => level,
                    Ok(None) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "missing ?level=<filter>, e.g. ?level=info,access=warn\n",
                        );
                    }
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad query: {e}\n")),
                };
                match self.logs.set(&level) {
                    Ok(filter) => text(StatusCode::OK, format!("{filter}\n")),
                    Err(e @ TelemetryError::LogFilter { .. }) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            _ => method_not_allowed("GET, POST"),
        }
    }
}

impl super::Endpoint for AdminEndpoint {
    fn name(&self) -> &'static str {
        "admin"
    }

    fn loopback_only(&self) -> bool {
        true
    }

    fn handle(&self, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/config_dump" => get_only(request, || self.config_dump()),
            "/logging" => self.logging(request),
            other => not_found(other),
        }
    }
}
