//! The names the mesh answers itself: Services as `<svc>.<ns>.svc.<domain>`, their SRV
//! records per named port, and reverse lookups of their VIPs. Pure: a query and the
//! model in, an answer (or "not ours, forward it") out. The agent's DNS proxy
//! (`agent/src/dns`) carries the packets.
//!
//! As kube-dns does, a Service without a VIP (headless) is left to the cluster's
//! resolver, which knows its endpoints' records.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::model::{Model, PortProtocol, Service};

/// Seconds clients may cache the mesh's answers (the agent re-reads the model on change).
pub const TTL: u32 = 30;

/// What to do with a query.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The mesh knows the name: this is the reply.
    Local(Box<Message>),
    /// Not a mesh name: ask the pod's resolver.
    Forward,
}

/// The search list Kubernetes writes into a pod's resolv.conf: `<ns>.svc.<domain>`,
/// `svc.<domain>`, `<domain>`.
pub fn search_list(namespace: &str, domain: &str) -> [String; 3] {
    [format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_owned()]
}

/// Answers `query` from the model when it asks for a mesh name. `namespace`: the
/// asking pod's, whose search list a relative name is tried against.
pub fn answer(model: &Model, domain: &str, namespace: Option<&str>, query: &Message) -> Answer {
    let meta = &query.metadata;
    if meta.message_type != MessageType::Query || meta.op_code != OpCode::Query || query.queries.len() != 1 {
        return Answer::Forward;
    }
    let q = &query.queries[0];
    if q.query_class() != DNSClass::IN {
        return Answer::Forward;
    }
    let asked = q.name().to_lowercase().to_ascii();
    let asked = asked.trim_end_matches('.');
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let records = if q.query_type() == RecordType::PTR {
        match reverse(asked).and_then(|ip| service_with_vip(model, ip)) {
            Some(s) => {
                let Ok(target) = Name::from_ascii(format!("{}.{}.svc.{domain}.", s.name, s.namespace)) else {
                    return Answer::Forward;
                };
                vec![Record::from_rdata(q.name().clone(), TTL, RData::PTR(PTR(target)))]
            }
            None => return Answer::Forward,
        }
    } else {
        let search = namespace.map(|ns| search_list(ns, &domain));
        let candidates =
            std::iter::once(asked.to_owned()).chain(search.iter().flatten().map(|s| format!("{asked}.{s}")));
        let Some(found) = candidates.into_iter().find_map(|c| lookup(model, &domain, &c)) else {
            return Answer::Forward;
        };
        match found {
            Found::Service(s) if s.vips.is_empty() => return Answer::Forward,
            Found::Service(s) => address_records(q.name(), q.query_type(), &s.vips),
            Found::Srv(s, port_name, protocol) => {
                srv_records(q.name(), q.query_type(), s, port_name, protocol, &domain)
            }
        }
    };
    let mut reply = Message::response(meta.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = meta.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = ResponseCode::NoError;
    reply.queries = query.queries.clone();
    // An empty answer for a name that exists is NODATA: the name is there, the type not.
    reply.answers = records;
    Answer::Local(Box::new(reply))
}

enum Found<'a> {
    Service(&'a Service),
    /// `_<port>._<proto>.<svc>.<ns>.svc.<domain>`.
    Srv(&'a Service, String, PortProtocol),
}

/// The Service a lower-case, dot-free-at-the-end name is about.
fn lookup<'a>(model: &'a Model, domain: &str, name: &str) -> Option<Found<'a>> {
    let rest = name.strip_suffix(domain)?.strip_suffix('.')?.strip_suffix("svc")?.strip_suffix('.')?;
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [svc, ns] => model.service(ns, svc).map(Found::Service),
        [port, proto, svc, ns] => {
            let port = port.strip_prefix('_')?;
            let protocol = match proto.strip_prefix('_')? {
                "tcp" => PortProtocol::Tcp,
                "udp" => PortProtocol::Udp,
                "sctp" => PortProtocol::Sctp,
                _ => return None,
            };
            model.service(ns, svc).map(|s| Found::Srv(s, port.to_owned(), protocol))
        }
        _ => None,
    }
}

fn address_records(owner: &Name, qtype: RecordType, vips: &[IpAddr]) -> Vec<Record> {
    vips.iter()
        .filter_map(|ip| match (qtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(owner.clone(), TTL, data))
        .collect()
}

fn srv_records(
    owner: &Name,
    qtype: RecordType,
    service: &Service,
    port_name: String,
    protocol: PortProtocol,
    domain: &str,
) -> Vec<Record> {
    if qtype != RecordType::SRV {
        return Vec::new();
    }
    let Ok(target) = Name::from_ascii(format!("{}.{}.svc.{domain}.", service.name, service.namespace)) else {
        return Vec::new();
    };
    service
        .ports
        .iter()
        .filter(|p| p.name == port_name && p.protocol == protocol)
        .map(|p| Record::from_rdata(owner.clone(), TTL, RData::SRV(SRV::new(0, 100, p.port, target.clone()))))
        .collect()
}

fn service_with_vip(model: &Model, ip: IpAddr) -> Option<&Service> {
    let ip = ip.to_canonical();
    model.services().iter().find(|s| s.vips.iter().any(|v| v.to_canonical() == ip))
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa`, nibbles `.ip6.arpa`) stands for.
fn reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::from([octets[0], octets[1], octets[2], octets[3]]));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> =
        rest.split('.').map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1)).collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        // Reverse order: the last nibble of the name is the address's first.
        bytes[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::from(bytes))
}

#[cfg(test)]
mod tests;
