//! IP blocks (`10.0.0.0/8`, `fd00::/64`, or a bare address meaning a single host), as used by
//! `ipBlocks` and the `source.ip`/`destination.ip` conditions of an AuthorizationPolicy.
//!
//! Written here rather than pulled from a crate because all we need is parse + contains.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network prefix. Host bits given in the input are cleared, as Istio does (`10.1.2.3/8`
/// means `10.0.0.0/8`), so two spellings of one block compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{0:?} is not an IP address or CIDR block: write `10.0.0.0/8`, `fd00::/64` or a single address")]
    Syntax(String),
    #[error("prefix length /{prefix} is too long for {addr}: at most /32 for IPv4 and /128 for IPv6")]
    PrefixTooLong { addr: IpAddr, prefix: u8 },
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(IpNetError::PrefixTooLong { addr, prefix });
        }
        Ok(Self { addr: mask(addr, prefix), prefix })
    }

    /// A block holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, prefix: max_prefix(addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this block. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, which a
    /// dual-stack socket reports for IPv4 peers) is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, self.prefix) == self.addr,
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || IpNetError::Syntax(s.chars().take(64).collect());
        match s.split_once('/') {
            None => s.parse::<IpAddr>().map(Self::host).map_err(|_| syntax()),
            Some((a, p)) => {
                let addr = a.parse::<IpAddr>().map_err(|_| syntax())?;
                // Digits only: `u8::from_str` would also take `+8`.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let prefix = p.parse::<u8>().map_err(|_| syntax())?;
                Self::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_blocks() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.200.1.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("fd00::/64", "fd00::1", true),
            ("fd00::/64", "fd00:0:0:1::1", false),
            ("::/0", "2001:db8::1", true),
            ("2001:db8::1", "2001:db8::1", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
        ];
        for (net, ip, want) in cases {
            let n: IpNet = net.parse().unwrap_or_else(|e| panic!("{net}: {e}"));
            assert_eq!(n.contains(ip.parse().unwrap()), *want, "{net} contains {ip}");
        }
    }

    #[test]
    fn refuses_bad_blocks() {
        for bad in ["", "10.0.0", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/+8", "x/8", "10.0.0.0/8/8"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!("10.1.2.3/8".parse::<IpNet>().unwrap().to_string(), "10.0.0.0/8");
    }
}
