//! Conversions between std addresses and the kernel programs' layouts
//! (address words in network byte order, ports in host order).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pillion_common::{AF_INET, AF_INET6, IpKey, SockAddr};

pub fn ip_key(ip: IpAddr) -> IpKey {
    match canonical(ip) {
        IpAddr::V4(v4) => IpKey { family: AF_INET.into(), addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0] },
        IpAddr::V6(v6) => IpKey { family: AF_INET6.into(), addr: words(v6) },
    }
}

fn words(v6: Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// A v4-mapped IPv6 address becomes the IPv4 address it stands for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The socket address a kernel record holds, or `None` for an unknown family.
pub fn socket_addr(sa: &SockAddr) -> Option<SocketAddr> {
    let ip = if sa.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(sa.addr[0].to_ne_bytes()))
    } else if sa.family == AF_INET6 {
        let mut o = [0u8; 16];
        for (i, w) in sa.addr.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        return None;
    };
    Some(SocketAddr::new(ip, sa.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_words_are_network_order() {
        let key = ip_key("10.1.2.3".parse().unwrap());
        assert_eq!(key.addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(key.family, 2);
    }

    #[test]
    fn mapped_addresses_key_as_v4() {
        assert_eq!(ip_key("::ffff:10.1.2.3".parse().unwrap()), ip_key("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn records_round_trip() {
        for text in ["10.9.8.7:80", "[fd00:1:2::5]:8443"] {
            let addr: SocketAddr = text.parse().unwrap();
            let key = ip_key(addr.ip());
            let rec = SockAddr { addr: key.addr, port: addr.port(), family: key.family as u16 };
            assert_eq!(socket_addr(&rec), Some(addr));
        }
        assert_eq!(socket_addr(&SockAddr { family: 99, ..Default::default() }), None);
    }
}
