//! The CNI wire format: environment variables, the network configuration on stdin, the
//! result and error JSON on stdout (CNI specification 1.1, compatible back to 0.3.0).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The versions whose result format this plugin can pass through unchanged.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where the agent listens when the configuration does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/pillion/node/agent.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// A CNI error: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    /// Well-known codes from the spec (1–11, 50) or ours (100+).
    pub code: u32,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The agent answered and refused.
    pub const AGENT_REFUSED: u32 = 100;
    /// The pod should be enrolled and is not (CHECK).
    pub const NOT_ENROLLED: u32 = 101;
    /// Pod labels could not be read from the API server.
    pub const LOOKUP_FAILED: u32 = 102;

    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<Option<String>>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if let Some(d) = &self.details {
            v["details"] = json!(d);
        }
        v
    }
}

/// How the plugin decides which pods to enrol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrolMode {
    /// By the pod's and its namespace's `istio.io/dataplane-mode` labels (production).
    #[default]
    ByLabels,
    /// Every pod (single-node setups and the network-namespace tests, which have no API
    /// server).
    All,
}

/// The network configuration on stdin: the fields every plugin gets, ours, and the
/// previous plugin's result.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The agent's API socket on this node (the installer writes the node's path).
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub enrol: EnrolMode,
    /// kubeconfig the plugin reads pod labels with (the installer writes one holding the
    /// agent's service-account token).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds to wait for the agent before failing the ADD.
    #[serde(default)]
    pub agent_timeout_secs: Option<u64>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(CniError::DECODE, "cannot decode the network configuration on stdin", e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Ok(conf)
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.agent_socket.clone().unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into())
    }

    /// The pod's addresses from the previous plugin's result (`ips[].address`, CIDR form).
    pub fn prev_ips(&self) -> Vec<IpAddr> {
        let Some(ips) = self.prev_result.as_ref().and_then(|r| r.get("ips")).and_then(Value::as_array) else {
            return Vec::new();
        };
        ips.iter()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect()
    }

    /// What ADD prints: the previous result unchanged (a chained plugin that changes no
    /// interface passes it on), in the configuration's version.
    pub fn result(&self) -> Value {
        match &self.prev_result {
            Some(r) => {
                let mut r = r.clone();
                if let Some(o) = r.as_object_mut() {
                    o.insert("cniVersion".into(), json!(self.cni_version));
                }
                r
            }
            None => json!({"cniVersion": self.cni_version, "interfaces": [], "ips": [], "dns": {}}),
        }
    }
}

/// One call: the command and what the environment says about the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, … from `CNI_ARGS`.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `get` (the process environment in the binary).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let missing = |v: &str| CniError::new(CniError::INVALID_ENV, format!("{v} is not set"), None);
        let command = match get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(CniError::INVALID_ENV, format!("unknown CNI_COMMAND {other:?}"), None));
            }
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").filter(|s| !s.is_empty());
        if needs_container && container_id.is_none() {
            return Err(missing("CNI_CONTAINERID"));
        }
        let netns = get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
        // DEL may come without a netns (already gone); ADD and CHECK need one.
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            command,
            container_id: container_id.unwrap_or_default(),
            netns,
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }

    /// `(namespace, name)` of a Kubernetes pod; `None` for a non-Kubernetes container.
    pub fn pod(&self) -> Option<(&str, &str)> {
        let ns = self.args.get("K8S_POD_NAMESPACE")?;
        let name = self.args.get("K8S_POD_NAME")?;
        (!ns.is_empty() && !name.is_empty()).then_some((ns.as_str(), name.as_str()))
    }

    /// `K8S_POD_UID`, when the runtime passes it.
    pub fn pod_uid(&self) -> Option<&str> {
        self.args.get("K8S_POD_UID").map(String::as_str).filter(|u| !u.is_empty())
    }
}

/// VERSION's answer.
pub fn version_result(cni_version: &str) -> Value {
    json!({"cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Serialized form of a request to the agent (its `agent/src/api.rs` wire shape).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AgentRequest {
    Enrol {
        pod: AgentPod,
    },
    Unenrol {
        namespace: String,
        name: String,
        /// DEL: only if enrolled with this sandbox's netns.
        #[serde(skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
    },
    List {},
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentPod {
    pub name: String,
    pub namespace: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// `K8S_POD_UID`: the agent checks it against the model's, so a re-created
    /// pod of the same name is not served as the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}
