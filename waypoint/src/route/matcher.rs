//! HTTPRoute matches: path, headers, query parameters and method, and the precedence key
//! that orders them.

use http::request::Parts;
use regex::Regex;

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// Anchored at both ends, like Envoy's `safe_regex` (the whole path must match).
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Regex(r) => r.is_match(v),
        }
    }
}

/// One entry of a rule's `matches`: every present part must match.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Header names are lower-case (HTTP header names are case-insensitive).
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<http::Method>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self { path: PathMatch::Prefix("/".into()), headers: Vec::new(), query: Vec::new(), method: None }
    }
}

/// Gateway API precedence, compared as a tuple (greater wins): exact path, then the longest
/// prefix, then a method match, then more header matches, then more query matches. Regular
/// expressions rank below every prefix (the spec leaves them to the implementation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

impl RouteMatch {
    pub fn precedence(&self) -> Precedence {
        let (path_kind, path_len) = match &self.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Regex(_) => (1, 0),
        };
        Precedence {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }

    pub fn matches(&self, req: &Parts) -> bool {
        let path = req.uri.path();
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, m)| {
                // Repeated headers are matched on their comma-joined value, as Envoy does.
                let values: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                !values.is_empty() && m.matches(&values.join(","))
            })
            && self.query.iter().all(|(name, m)| query_value(req.uri.query(), name).is_some_and(|v| m.matches(&v)))
    }
}

/// Prefix on whole segments; a trailing `/` in the prefix is ignored.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first value of a query parameter (Gateway API: only the first counts), percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
