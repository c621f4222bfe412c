//! `:authority` of an HBONE CONNECT: `ip:port`, `[ipv6]:port` or `host:port`.
//!
//! This is untrusted input straight off the wire, so the parser is strict, allocation-light
//! and depends on nothing but `std` and `thiserror` (the fuzz crate compiles this file alone).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Longest authority accepted. A DNS name is at most 253 bytes; anything longer is abuse.
pub const MAX_AUTHORITY_LEN: usize = 300;

/// Why an authority was refused. Each maps to HTTP 400 on the HBONE server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("authority is empty: send the target as `ip:port`, `[ipv6]:port` or `host:port`")]
    Empty,
    #[error("authority is longer than {MAX_AUTHORITY_LEN} bytes: send `ip:port` or `host:port`")]
    TooLong,
    #[error("authority has no port: write the target as `ip:port` (IPv6 as `[addr]:port`)")]
    MissingPort,
    #[error("authority port {0:?} is not a number in 1..=65535: fix the target port")]
    BadPort(String),
    #[error("authority host {0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("IPv6 authority must be bracketed, as `[addr]:port`")]
    UnbracketedIpv6,
}

/// The host half of an authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal address: the normal HBONE case (`podIP:port`).
    Ip(IpAddr),
    /// A DNS-style name: only sent to waypoints (`service.ns.svc.cluster.local:80`).
    Name(String),
}

/// A validated `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

impl Authority {
    /// The socket address, when the host is a literal IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Parses untrusted input. See the module docs for the accepted forms.
    pub fn parse(input: &str) -> Result<Self, AuthorityError> {
        if input.is_empty() {
            return Err(AuthorityError::Empty);
        }
        if input.len() > MAX_AUTHORITY_LEN {
            return Err(AuthorityError::TooLong);
        }
        if let Some(rest) = input.strip_prefix('[') {
            // Bracketed IPv6: `[addr]:port`. Zone ids (`%eth0`) are meaningless across hosts.
            let (addr, after) = rest.split_once(']').ok_or_else(|| AuthorityError::BadHost(input.to_owned()))?;
            let ip: Ipv6Addr = addr.parse().map_err(|_| AuthorityError::BadHost(addr.to_owned()))?;
            let port = after.strip_prefix(':').ok_or(AuthorityError::MissingPort)?;
            return Ok(Self { host: Host::Ip(IpAddr::V6(ip)), port: parse_port(port)? });
        }
        let (host, port) = input.rsplit_once(':').ok_or(AuthorityError::MissingPort)?;
        if host.contains(':') {
            return Err(AuthorityError::UnbracketedIpv6);
        }
        let port = parse_port(port)?;
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Self { host: Host::Ip(IpAddr::V4(ip)), port });
        }
        if is_dns_name(host) {
            // Names are case-insensitive; store them canonical so policy compares equal.
            return Ok(Self { host: Host::Name(host.to_ascii_lowercase()), port });
        }
        Err(AuthorityError::BadHost(host.to_owned()))
    }
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        Self { host: Host::Ip(addr.ip()), port: addr.port() }
    }
}

impl fmt::Display for Authority {
    /// Writes the wire form: IPv6 in brackets, as HBONE requires.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, AuthorityError> {
    // `u16::from_str` accepts a leading `+`; the wire form must be plain digits.
    let bad = || AuthorityError::BadPort(s.chars().take(16).collect());
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_forms() {
        let a = Authority::parse("10.0.2.5:80").unwrap();
        assert_eq!(a.socket_addr(), Some("10.0.2.5:80".parse().unwrap()));
        let a = Authority::parse("[fd00::5]:8080").unwrap();
        assert_eq!(a.to_string(), "[fd00::5]:8080");
        let a = Authority::parse("Reviews.Default.svc.cluster.local:9080").unwrap();
        assert_eq!(a.host, Host::Name("reviews.default.svc.cluster.local".into()));
    }

    #[test]
    fn refuses_bad_ports_and_hosts() {
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:+80",
            "10.0.0.1:8o",
            "fd00::5:80",
            "[fd00::5]",
            "[fd00::5]80",
            "[zz]:80",
            "-a:80",
            "a_b:80",
            "[fe80::1%eth0]:80",
            ":80",
            "10.0.0.1:080000",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Authority::parse("x:99999"), Err(AuthorityError::BadPort("99999".into())));
    }

    #[test]
    fn display_round_trips() {
        for s in ["1.2.3.4:1", "[::1]:15008", "a.b:65535"] {
            assert_eq!(Authority::parse(s).unwrap().to_string(), s);
        }
    }
}
