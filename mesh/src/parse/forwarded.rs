//! The `Forwarded` header (RFC 7239) a waypoint adds to say who the original client was.
//!
//! The HBONE server hands it to the authorization hook, which trusts it only when the outer
//! peer is a waypoint. It is untrusted input: strict grammar, bounded size, `std` only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest header value accepted; the hook never needs more than a few hops.
pub const MAX_FORWARDED_LEN: usize = 8 * 1024;
/// Most comma-separated elements (hops) accepted.
pub const MAX_FORWARDED_ELEMENTS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("Forwarded header is longer than {MAX_FORWARDED_LEN} bytes")]
    TooLong,
    #[error("Forwarded header has more than {MAX_FORWARDED_ELEMENTS} elements")]
    TooManyElements,
    #[error("Forwarded header is malformed at byte {0}: expected `key=value` pairs (RFC 7239)")]
    Syntax(usize),
    #[error("Forwarded parameter {0:?} appears twice in one element")]
    Duplicate(String),
    #[error("Forwarded node {0:?} is not an IP, `[IPv6]`, `unknown` or an `_obfuscated` name")]
    BadNode(String),
}

/// One hop: the `key=value` pairs between two commas. Keys are lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedElement {
    pub pairs: Vec<(String, String)>,
}

impl ForwardedElement {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// The `for=` node: who sent the request to the hop that wrote this element.
    pub fn for_node(&self) -> Option<Result<Node, ForwardedError>> {
        self.get("for").map(Node::parse)
    }
}

/// A `for=`/`by=` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Ip { ip: IpAddr, port: Option<u16> },
    Unknown,
    Obfuscated(String),
}

impl Node {
    pub fn parse(s: &str) -> Result<Self, ForwardedError> {
        let bad = || ForwardedError::BadNode(s.chars().take(64).collect());
        let (name, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip: Ipv6Addr = v6.parse().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            return Ok(Node::Ip { ip: IpAddr::V6(ip), port: port.map(|p| parse_port(p).ok_or_else(bad)).transpose()? });
        } else {
            match s.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            }
        };
        // Obfuscated ports (`_abc`) carry no information the hook can use: drop them.
        let port = match port {
            Some(p) if p.starts_with('_') && is_obfuscated(p) => None,
            Some(p) => Some(parse_port(p).ok_or_else(bad)?),
            None => None,
        };
        if name.eq_ignore_ascii_case("unknown") {
            return Ok(Node::Unknown);
        }
        if is_obfuscated(name) {
            return Ok(Node::Obfuscated(name.to_owned()));
        }
        let ip: Ipv4Addr = name.parse().map_err(|_| bad())?;
        Ok(Node::Ip { ip: IpAddr::V4(ip), port })
    }
}

/// Parses a whole header value into its elements, nearest hop last (as written).
pub fn parse_forwarded(input: &str) -> Result<Vec<ForwardedElement>, ForwardedError> {
    if input.len() > MAX_FORWARDED_LEN {
        return Err(ForwardedError::TooLong);
    }
    let b = input.as_bytes();
    let mut i = 0;
    let mut out = vec![ForwardedElement::default()];
    loop {
        skip_ows(b, &mut i);
        if i == b.len() {
            break;
        }
        match b[i] {
            b',' => {
                i += 1;
                if out.len() == MAX_FORWARDED_ELEMENTS {
                    return Err(ForwardedError::TooManyElements);
                }
                out.push(ForwardedElement::default());
                continue;
            }
            b';' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let key_start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == key_start || i == b.len() || b[i] != b'=' {
            return Err(ForwardedError::Syntax(i));
        }
        let key = input[key_start..i].to_ascii_lowercase();
        i += 1;
        let value = if b.get(i) == Some(&b'"') {
            quoted(b, &mut i)?
        } else {
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(ForwardedError::Syntax(i));
            }
            input[start..i].to_owned()
        };
        let element = out.last_mut().expect("out starts non-empty");
        if element.get(&key).is_some() {
            return Err(ForwardedError::Duplicate(key));
        }
        element.pairs.push((key, value));
        skip_ows(b, &mut i);
        if i < b.len() && b[i] != b';' && b[i] != b',' {
            return Err(ForwardedError::Syntax(i));
        }
    }
    Ok(out)
}

fn quoted(b: &[u8], i: &mut usize) -> Result<String, ForwardedError> {
    *i += 1; // opening quote
    let mut v = Vec::new();
    while *i < b.len() {
        match b[*i] {
            b'"' => {
                *i += 1;
                // Only ASCII bytes were pushed, so this cannot fail.
                return String::from_utf8(v).map_err(|_| ForwardedError::Syntax(*i));
            }
            b'\\' if *i + 1 < b.len() && is_qd_or_escaped(b[*i + 1]) => {
                v.push(b[*i + 1]);
                *i += 2;
            }
            c if c != b'\\' && is_qd_or_escaped(c) => {
                v.push(c);
                *i += 1;
            }
            _ => return Err(ForwardedError::Syntax(*i)),
        }
    }
    Err(ForwardedError::Syntax(*i))
}

fn skip_ows(b: &[u8], i: &mut usize) {
    while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
        *i += 1;
    }
}

/// RFC 7230 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Printable ASCII, space and tab: what a quoted string may hold. Non-ASCII is refused
/// rather than interpreted, since no valid node needs it.
fn is_qd_or_escaped(c: u8) -> bool {
    c == b'\t' || (0x20..0x7f).contains(&c)
}

fn is_obfuscated(s: &str) -> bool {
    s.len() > 1 && s.starts_with('_') && s[1..].bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_examples() {
        let els = parse_forwarded(r#"for="_gazonk""#).unwrap();
        assert_eq!(els[0].for_node(), Some(Ok(Node::Obfuscated("_gazonk".into()))));
        let els = parse_forwarded(r#"For="[2001:db8:cafe::17]:4711""#).unwrap();
        assert_eq!(
            els[0].for_node(),
            Some(Ok(Node::Ip { ip: "2001:db8:cafe::17".parse().unwrap(), port: Some(4711) }))
        );
        let els = parse_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43, for=unknown").unwrap();
        assert_eq!(els.len(), 2);
        assert_eq!(els[0].get("proto"), Some("http"));
        assert_eq!(els[1].for_node(), Some(Ok(Node::Unknown)));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in ["for", "for=", "=x", r#"for="unterminated"#, "for=1.2.3.4 x", "for=a;for=b", "for=\"a\u{e9}\""] {
            assert!(parse_forwarded(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(Node::parse("[::1").is_err());
        assert!(Node::parse("1.2.3.4:99999").is_err());
        assert!(parse_forwarded(&",".repeat(40)).is_err());
    }
}
