//! Pillion's own kinds (`pillion.dev/v1alpha1`): Workload, Service, MeshConfig.
//! The schema is documented in `docs/config.md`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Problem;
use crate::istio::PortValue;
use crate::model::{
    Endpoints, MeshSettings, PortProtocol, Protocol, Service, ServicePort, Workload, authz::parse_port,
};

/// The Istio label that takes a pod out of the ambient mesh.
const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct WorkloadSpec {
    #[serde(default)]
    pub service_account: Option<Spanned<String>>,
    #[serde(default)]
    pub ips: Vec<Spanned<String>>,
    pub node: String,
    #[serde(default)]
    pub protocol: Option<ProtocolSpec>,
    /// `region/zone/subzone`, as Istio writes a locality.
    #[serde(default)]
    pub locality: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ProtocolSpec {
    Hbone,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceSpec {
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<Spanned<String>>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<ServicePortSpec>>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Explicit backends: `name` (same namespace) or `namespace/name`.
    #[serde(default)]
    pub endpoints: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub traffic_distribution: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServicePortSpec {
    #[serde(default)]
    pub name: String,
    pub port: PortValue,
    #[serde(default)]
    pub target_port: Option<Spanned<PortValue>>,
    #[serde(default)]
    pub protocol: Option<PortProtocolSpec>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum PortProtocolSpec {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MeshConfigSpec {
    #[serde(default)]
    pub trust_domain: Option<Spanned<String>>,
    #[serde(default)]
    pub root_namespace: Option<Spanned<String>>,
}

pub(crate) fn mesh_settings(spec: &MeshConfigSpec) -> Result<MeshSettings, Problem> {
    let mut m = MeshSettings::default();
    if let Some(td) = &spec.trust_domain {
        if crate::parse::SpiffeId::parse(&format!("spiffe://{}", td.value)).is_err() || td.value.contains('/') {
            return Err(Problem::at(
                td,
                format!(
                    "trustDomain {:?} is not a valid SPIFFE trust domain: use lower-case letters, digits, `.`, `-`, `_`",
                    td.value
                ),
            ));
        }
        m.trust_domain = td.value.clone();
    }
    if let Some(ns) = &spec.root_namespace {
        super::check_name(ns, "rootNamespace")?;
        m.root_namespace = ns.value.clone();
    }
    Ok(m)
}

fn ip(s: &Spanned<String>, what: &str) -> Result<IpAddr, Problem> {
    s.value.parse().map_err(|_| {
        Problem::at(s, format!("{what} {:?} is not an IP address: write e.g. `10.0.0.5` or `fd00::5`", s.value))
    })
}

pub(crate) fn workload(
    mesh: &MeshSettings,
    namespace: &str,
    name: &Spanned<String>,
    labels: &BTreeMap<String, String>,
    spec: &WorkloadSpec,
) -> Result<Workload, Problem> {
    let sa = spec.service_account.as_ref().map(|s| s.value.as_str()).unwrap_or("default");
    let mut w = Workload::new(&mesh.trust_domain, namespace, &name.value, sa).map_err(|e| {
        let at = spec.service_account.as_ref().map(|s| (s.referenced.line(), s.referenced.column()));
        let (line, column) = at.unwrap_or((name.referenced.line(), name.referenced.column()));
        Problem { at: Some((line, column)), msg: e.to_string() }
    })?;
    w.ips = spec.ips.iter().map(|s| ip(s, "workload IP")).collect::<Result<_, _>>()?;
    if w.ips.is_empty() {
        return Err(Problem::at(name, "a Workload needs at least one address in `spec.ips`".into()));
    }
    w.node = spec.node.clone();
    w.locality = spec.locality.as_deref().map(crate::model::Locality::parse).unwrap_or_default();
    w.labels = labels.clone();
    // `protocol` wins; otherwise Istio's opt-out label decides, as for a pod.
    w.protocol = match spec.protocol {
        Some(ProtocolSpec::Hbone) => Protocol::Hbone,
        Some(ProtocolSpec::None) => Protocol::None,
        None if labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("none") => Protocol::None,
        None => Protocol::Hbone,
    };
    Ok(w)
}

pub(crate) fn service(
    namespace: &str,
    name: &Spanned<String>,
    labels: &BTreeMap<String, String>,
    spec: &ServiceSpec,
) -> Result<Service, Problem> {
    let mut vips: Vec<IpAddr> = Vec::new();
    for s in spec.cluster_ip.iter().chain(&spec.cluster_ips) {
        // Kubernetes writes the first of clusterIPs again as clusterIP; and headless is "None".
        if s.value == "None" {
            continue;
        }
        let a = ip(s, "cluster IP")?;
        if !vips.contains(&a) {
            vips.push(a);
        }
    }
    let mut ports = Vec::new();
    for p in &spec.ports {
        let port = parse_port(&p.value.port.0).ok().filter(|&n| n != 0).ok_or_else(|| {
            Problem::at(p, format!("service port {:?} is not a port number (1-65535)", p.value.port.0))
        })?;
        let target_port = match &p.value.target_port {
            None => port,
            Some(t) => parse_port(&t.value.0).ok().filter(|&n| n != 0).ok_or_else(|| {
                Problem::at(t, format!(
                    "targetPort {:?} is not a port number (1-65535); named target ports are not supported, write the number",
                    t.value.0
                ))
            })?,
        };
        if ports.iter().any(|q: &ServicePort| q.port == port) {
            return Err(Problem::at(p, format!("port {port} is listed twice in this Service")));
        }
        let protocol = match p.value.protocol {
            None | Some(PortProtocolSpec::Tcp) => PortProtocol::Tcp,
            Some(PortProtocolSpec::Udp) => PortProtocol::Udp,
            Some(PortProtocolSpec::Sctp) => PortProtocol::Sctp,
        };
        ports.push(ServicePort {
            name: p.value.name.clone(),
            port,
            target_port,
            protocol,
            app_protocol: p.value.app_protocol.clone(),
        });
    }
    let endpoints = match (&spec.selector, &spec.endpoints) {
        (Some(_), Some(e)) if !e.is_empty() => {
            return Err(Problem::at(&e[0], "a Service takes either `selector` or `endpoints`, not both".into()));
        }
        (Some(sel), _) => Endpoints::Selector(sel.clone()),
        (None, Some(list)) => Endpoints::Workloads(
            list.iter()
                .map(|e| {
                    let (ns, n) = e.value.split_once('/').unwrap_or((namespace, &e.value));
                    if n.is_empty() || ns.is_empty() || n.contains('/') {
                        return Err(Problem::at(
                            e,
                            format!("endpoint {:?} is not `name` or `namespace/name`", e.value),
                        ));
                    }
                    Ok((ns.to_owned(), n.to_owned()))
                })
                .collect::<Result<_, _>>()?,
        ),
        (None, None) => Endpoints::Workloads(Vec::new()),
    };
    let traffic_distribution = match &spec.traffic_distribution {
        None => None,
        Some(t) => Some(crate::model::TrafficDistribution::parse(&t.value).ok_or_else(|| {
            Problem::at(
                t,
                format!("trafficDistribution {:?}: use PreferClose, PreferSameZone or PreferSameNode", t.value),
            )
        })?),
    };
    Ok(Service {
        name: name.value.clone(),
        namespace: namespace.to_owned(),
        vips,
        ports,
        endpoints,
        labels: labels.clone(),
        waypoint: None,
        traffic_distribution,
    })
}
