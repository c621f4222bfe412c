//! HTTPRoute filters, compiled: header modifiers, mirroring, rewrites, redirects and
//! (through `ExtensionRef`) fault injection.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::BackendRef;
use super::matcher::prefix_matches;
use crate::fault::FaultInjection;

#[derive(Debug, Clone)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Mirror(Mirror),
    Rewrite(Rewrite),
    Redirect(Redirect),
    Fault(FaultInjection),
}

/// `set` replaces, `add` appends, `remove` deletes, applied in that order (Gateway API).
#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub backend: BackendRef,
    /// Share of requests mirrored, 0.0–100.0.
    pub percent: f64,
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    Full(String),
    /// Replaces the part of the path the rule's `PathPrefix` matched.
    Prefix(String),
}

#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
    pub port: Option<u16>,
    pub status: http::StatusCode,
}

/// Applies a path rewrite; `matched_prefix` is the rule's `PathPrefix` value, if any.
pub fn rewrite_path(rewrite: &PathRewrite, path: &str, matched_prefix: Option<&str>) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => {
            let Some(prefix) = matched_prefix.filter(|p| prefix_matches(p, path)) else {
                return path.to_owned();
            };
            let rest = &path[prefix.trim_end_matches('/').len()..];
            let base = replacement.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{base}{rest}"),
            }
        }
    }
}

/// Rebuilds a URI's path-and-query with a new path, keeping the query.
pub fn with_path(uri: &http::Uri, path: &str) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}
