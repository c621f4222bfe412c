//! Evaluating authorization for one connection, in Istio's order: any matching DENY denies;
//! otherwise, if no ALLOW policy applies to the destination, the connection is allowed;
//! otherwise some ALLOW rule must match.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};
use crate::model::{Model, Workload, labels_match};
use crate::parse::SpiffeId;

/// What the destination agent knows about an inbound connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo<'a> {
    /// The peer certificate's SPIFFE ID; `None` for plaintext.
    pub src_identity: Option<&'a SpiffeId>,
    /// The source address (the outer TCP peer, or what a trusted waypoint forwarded).
    pub src_ip: IpAddr,
    pub dst_workload: &'a Workload,
    /// The address and port the client asked for on the destination workload.
    pub dst: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A DENY policy matched.
    Denied,
    /// An ALLOW policy matched.
    Allowed,
    /// ALLOW policies apply to the destination and none matched.
    NoAllowMatch,
    /// No ALLOW policy applies to the destination, and no DENY matched.
    NoAllowPolicies,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Denied => "denied by a DENY policy",
            Self::Allowed => "allowed by an ALLOW policy",
            Self::NoAllowMatch => "no ALLOW policy matched",
            Self::NoAllowPolicies => "no ALLOW policy applies",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// `namespace/name` of the deciding policy, when one decided.
    pub policy: Option<String>,
    pub reason: Reason,
}

impl Model {
    /// The policies that bind to `w`, in model order (mesh-wide first, as they come first
    /// in the index).
    pub fn policies_for<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        let root = self.mesh.root_namespace.as_str();
        let idx = self.index.policies_by_ns.get(root).into_iter().flatten();
        let own = (w.namespace() != root).then(|| self.index.policies_by_ns.get(w.namespace())).flatten();
        idx.chain(own.into_iter().flatten())
            .map(|&i| &self.authorization_policies[i])
            .filter(move |p| applies(p, w, root))
    }

    /// Decides whether the connection is allowed. Pure: a reload re-evaluates open
    /// connections by calling this again on the new model.
    pub fn authorize(&self, conn: &ConnInfo<'_>) -> Verdict {
        let mut any_allow = false;
        let mut allowed_by = None;
        for p in self.policies_for(conn.dst_workload) {
            match p.action {
                Action::Deny if policy_matches(p, conn) => {
                    return Verdict { allowed: false, policy: Some(p.key()), reason: Reason::Denied };
                }
                Action::Allow => {
                    any_allow = true;
                    if allowed_by.is_none() && policy_matches(p, conn) {
                        allowed_by = Some(p.key());
                    }
                }
                _ => {}
            }
        }
        match (any_allow, allowed_by) {
            (false, _) => Verdict { allowed: true, policy: None, reason: Reason::NoAllowPolicies },
            (true, Some(key)) => Verdict { allowed: true, policy: Some(key), reason: Reason::Allowed },
            (true, None) => Verdict { allowed: false, policy: None, reason: Reason::NoAllowMatch },
        }
    }
}

/// Scope: root namespace without selector = mesh; no selector = its namespace; a selector
/// picks workloads of its namespace, or of every namespace when in the root namespace.
fn applies(p: &AuthorizationPolicy, w: &Workload, root: &str) -> bool {
    if p.targets_waypoint || p.dry_run || matches!(p.action, Action::Audit | Action::Custom) {
        return false;
    }
    let in_scope = p.namespace == root || p.namespace == w.namespace();
    in_scope && (p.selector.is_empty() || labels_match(&p.selector, &w.labels))
}

fn policy_matches(p: &AuthorizationPolicy, conn: &ConnInfo<'_>) -> bool {
    let deny = p.action == Action::Deny;
    p.rules.iter().any(|r| rule_matches(r, deny, conn))
}

/// The source's namespace and principal (the SPIFFE ID without `spiffe://`), empty when
/// absent, so that `*` (presence) fails and negations succeed on plaintext, as in Istio.
struct Peer<'a> {
    principal: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

fn peer<'a>(id: Option<&'a SpiffeId>) -> Peer<'a> {
    let Some(id) = id else { return Peer { principal: "", namespace: "", service_account: "" } };
    let principal = id.as_str().strip_prefix("spiffe://").unwrap_or_default();
    let mut segs = id.path().split('/').skip(1);
    match (segs.next(), segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Peer { principal, namespace: ns, service_account: sa },
        _ => Peer { principal, namespace: "", service_account: "" },
    }
}

fn rule_matches(r: &Rule, deny: bool, conn: &ConnInfo<'_>) -> bool {
    if !deny && !r.l7_fields.is_empty() {
        // L7 attributes cannot be checked at L4: in an ALLOW policy the rule never matches.
        return false;
    }
    let peer = peer(conn.src_identity);
    // Entries emptied by dropping L7 fields (only possible in DENY) match anything.
    let from_ok = r.from.is_empty() || r.from.iter().any(|s| source_matches(s, &peer, conn.src_ip));
    let to_ok = r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, conn.dst.port()));
    from_ok && to_ok && r.when.iter().all(|c| condition_matches(c, &peer, conn))
}

fn source_matches(s: &Source, peer: &Peer<'_>, src_ip: IpAddr) -> bool {
    s.principals.matches(|m| !peer.principal.is_empty() && m.matches(peer.principal))
        && s.namespaces.matches(|m| m.matches(peer.namespace))
        && s.service_accounts.matches(|m| {
            !peer.namespace.is_empty() && m.namespace == peer.namespace && m.service_account == peer.service_account
        })
        && s.ip_blocks.matches(|b| b.contains(src_ip))
}

fn operation_matches(o: &Operation, port: u16) -> bool {
    o.ports.matches(|&p| p == port)
}

fn condition_matches(c: &Condition, peer: &Peer<'_>, conn: &ConnInfo<'_>) -> bool {
    match c {
        Condition::SourceIp(m) => m.matches(|b| b.contains(conn.src_ip)),
        Condition::SourceNamespace(m) => m.matches(|s| s.matches(peer.namespace)),
        Condition::SourcePrincipal(m) => m.matches(|s| !peer.principal.is_empty() && s.matches(peer.principal)),
        Condition::DestinationIp(m) => m.matches(|b| b.contains(conn.dst.ip())),
        Condition::DestinationPort(m) => m.matches(|&p| p == conn.dst.port()),
    }
}
