//! PeerAuthentication: one translation of the spec into the model's form, for the file
//! source and the Kubernetes source alike.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{PortValue, Selector, SpecError, match_labels};
use crate::model::{MtlsMode, PeerAuthentication};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    /// Keys are ports: integers in YAML, strings in JSON.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<PortValue, MtlsSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// `UNSET` (default), `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
}

fn mode(m: Option<&MtlsSpec>, field: &str) -> Result<MtlsMode, SpecError> {
    let Some(mode) = m.and_then(|m| m.mode.as_ref()) else { return Ok(MtlsMode::Unset) };
    match mode.value.as_str() {
        "UNSET" => Ok(MtlsMode::Unset),
        "DISABLE" => Ok(MtlsMode::Disable),
        "PERMISSIVE" => Ok(MtlsMode::Permissive),
        "STRICT" => Ok(MtlsMode::Strict),
        other => Err(SpecError::at(
            mode,
            format!("{field}: unknown mTLS mode {other:?}: use UNSET, DISABLE, PERMISSIVE or STRICT"),
        )),
    }
}

/// Compiles a PeerAuthentication; `spec` absent means mode UNSET (inherit).
pub fn compile(
    namespace: &str,
    name: &str,
    spec: Option<&PeerAuthenticationSpec>,
) -> Result<PeerAuthentication, SpecError> {
    let empty = PeerAuthenticationSpec::default();
    let spec = spec.unwrap_or(&empty);
    let selector = match_labels(spec.selector.as_ref());
    let mut port_level = BTreeMap::new();
    for (port, m) in &spec.port_level_mtls {
        let p =
            port.0.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                SpecError::new(format!("portLevelMtls key {:?} is not a port number (1-65535)", port.0))
            })?;
        port_level.insert(p, mode(Some(m), &format!("portLevelMtls[{p}].mode"))?);
    }
    if selector.is_empty() && !port_level.is_empty() {
        return Err(SpecError::new(
            "portLevelMtls needs a selector: Istio only allows port-level modes on workload policies; add `selector: {matchLabels: …}` or move the ports to a workload policy",
        ));
    }
    Ok(PeerAuthentication {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector,
        mode: mode(spec.mtls.as_ref(), "mtls.mode")?,
        port_level,
        // The Kubernetes source sets the object's age; a file has none.
        created: None,
    })
}
