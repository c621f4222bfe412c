//! Request normalisation before any decision: routes, L7 policy and the backend all see the
//! same path and host, so a request cannot be spelled one way for the policy and be read
//! another way by the application (`/%61dmin`, `/./admin`, `/x/../admin`, `//admin`,
//! `Host: ADMIN.shop:80` against a DENY on `/admin*` or on a host).
//!
//! The path follows Istio's default (`BASE`, RFC 3986 section 6.2.2): percent-encoded
//! unreserved characters are decoded, other escapes get upper-case hex, and dot segments are
//! removed; backslashes become slashes (as Envoy's canonicaliser does). Runs of slashes are
//! merged as well, which `BASE` leaves to `MERGE_SLASHES`: many backends merge them, so a
//! policy on `/admin` must see `//admin` as `/admin`. An encoded slash (`%2F`) stays encoded,
//! as in `BASE`: decoding it would change which segment a character belongs to.

/// Why a path cannot be normalised: the request gets 400, as Envoy answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path has a malformed percent-encoding (`%` must be followed by two hex digits)")]
    BadEscape,
    #[error("the path does not start with `/`")]
    NotAbsolute,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters, upper-cases the others and turns `\` into `/`.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let digit = |at: usize| bytes.get(at).copied().and_then(mesh::parse::hex_digit);
                let (h, l) = match (digit(i + 1), digit(i + 2)) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let b = h << 4 | l;
                if unreserved(b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                // Multi-byte UTF-8 is copied whole: `http::Uri` only holds ASCII anyway.
                let ch = path[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// The normalised form of an absolute request path (without its query).
pub fn path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') && !raw.starts_with('\\') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            // Empty segments are merged slashes; `.` is the segment itself.
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

/// The host as policies compare it: lower-case, without a port (Istio ignores both).
pub fn host(raw: &str) -> String {
    let raw = raw.trim();
    let no_port = if let Some(rest) = raw.strip_prefix('[') {
        // `[v6]:port` → `[v6]`
        rest.split_once(']').map_or(raw, |(addr, _)| &raw[..addr.len() + 2])
    } else if raw.matches(':').count() == 1 {
        raw.split_once(':').map_or(raw, |(h, _)| h)
    } else {
        raw
    };
    no_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_spell_admin_differently_all_normalise_to_admin() {
        for raw in [
            "/admin/x",
            "/%61dmin/x",
            "/%61%64%6D%69%6E/x",
            "/./admin/x",
            "/x/../admin/x",
            "//admin/x",
            "/admin//x",
            "/a/b/../../admin/./x",
            "/../admin/x",
            "\\admin\\x",
            "/admin/x/.",
        ] {
            let want = if raw.ends_with('.') { "/admin/x/" } else { "/admin/x" };
            assert_eq!(path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn reserved_escapes_stay_encoded_and_get_upper_case_hex() {
        assert_eq!(path("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(path("/a%2Fb/../c").unwrap(), "/c");
        assert_eq!(path("/q%3fx").unwrap(), "/q%3Fx");
        assert_eq!(path("/%7euser").unwrap(), "/~user");
        assert_eq!(path("/").unwrap(), "/");
        assert_eq!(path("/a/").unwrap(), "/a/");
        assert_eq!(path("/a/..").unwrap(), "/");
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(path("/a%2"), Err(PathError::BadEscape));
        assert_eq!(path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(path("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(path("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn hosts_compare_without_case_or_port() {
        assert_eq!(host("ADMIN.shop.svc.cluster.local:80"), "admin.shop.svc.cluster.local");
        assert_eq!(host("Admin.Shop"), "admin.shop");
        assert_eq!(host("admin.shop.svc.cluster.local.:8080"), "admin.shop.svc.cluster.local");
        assert_eq!(host("[FD00::1]:80"), "[fd00::1]");
        assert_eq!(host("fd00::1"), "fd00::1");
        assert_eq!(host("10.0.0.1:80"), "10.0.0.1");
    }
}
