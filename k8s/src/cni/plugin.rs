//! One CNI call from start to finish, free of process globals so tests can drive it.

use std::time::Duration;

use serde_json::Value;

use super::agent::{self, AgentError};
use super::spec::{AgentPod, AgentRequest, CniError, Command, EnrolMode, Invocation, NetConf, version_result};

/// The version used for errors before the configuration is known.
const FALLBACK_VERSION: &str = "1.1.0";
const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a pod belongs in the mesh.
pub trait Decide {
    fn captured(&self, conf: &NetConf, namespace: &str, name: &str) -> Result<bool, CniError>;
}

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout; `None` prints nothing (DEL, CHECK, STATUS, GC on success).
    pub stdout: Option<Value>,
    pub success: bool,
    /// Lines for stderr (the runtime logs them).
    pub log: Vec<String>,
}

impl Outcome {
    fn ok(stdout: Option<Value>, log: Vec<String>) -> Self {
        Self { stdout, success: true, log }
    }

    fn err(e: &CniError, version: &str, mut log: Vec<String>) -> Self {
        log.push(format!("pillion-cni: {e}"));
        Self { stdout: Some(e.to_json(version)), success: false, log }
    }
}

pub fn run(inv: &Invocation, stdin: &[u8], decide: &dyn Decide) -> Outcome {
    if inv.command == Command::Version {
        let v = NetConf::parse(stdin).map_or_else(|_| FALLBACK_VERSION.to_owned(), |c| c.cni_version);
        return Outcome::ok(Some(version_result(&v)), Vec::new());
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::err(&e, FALLBACK_VERSION, Vec::new()),
    };
    let mut log = Vec::new();
    let result = match inv.command {
        Command::Add => add(inv, &conf, decide, &mut log).map(|()| Some(conf.result())),
        Command::Del => {
            del(inv, &conf, &mut log);
            Ok(None)
        }
        Command::Check => check(inv, &conf, decide).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc | Command::Version => Ok(None),
    };
    match result {
        Ok(stdout) => Outcome::ok(stdout, log),
        Err(e) => Outcome::err(&e, &conf.cni_version, log),
    }
}

fn timeout(conf: &NetConf) -> Duration {
    conf.agent_timeout_secs.map_or(DEFAULT_AGENT_TIMEOUT, Duration::from_secs)
}

fn wants(conf: &NetConf, decide: &dyn Decide, ns: &str, name: &str) -> Result<bool, CniError> {
    match conf.enrol {
        EnrolMode::All => Ok(true),
        EnrolMode::ByLabels => decide.captured(conf, ns, name),
    }
}

fn agent_error(e: AgentError) -> CniError {
    match e {
        // Kubelet retries a failed sandbox: the pod starts once the agent is back, and
        // never before (it would run uncaptured).
        AgentError::Unreachable { .. } => {
            CniError::new(CniError::TRY_AGAIN_LATER, "cannot enrol the pod in the mesh yet", e.to_string())
        }
        AgentError::BadReply { .. } => {
            CniError::new(CniError::IO_FAILURE, "bad reply from the Pillion agent", e.to_string())
        }
        AgentError::Refused(why) => CniError::new(CniError::AGENT_REFUSED, "the Pillion agent refused the pod", why),
    }
}

fn add(inv: &Invocation, conf: &NetConf, decide: &dyn Decide, log: &mut Vec<String>) -> Result<(), CniError> {
    let Some((ns, name)) = inv.pod() else {
        log.push("pillion-cni: not a Kubernetes pod (no K8S_POD_NAME in CNI_ARGS); passed through".into());
        return Ok(());
    };
    if !wants(conf, decide, ns, name)? {
        return Ok(());
    }
    let ips = conf.prev_ips();
    if ips.is_empty() {
        return Err(CniError::new(
            CniError::INVALID_CONFIG,
            "no pod addresses in prevResult",
            "list pillion-cni after the plugin that assigns addresses in the conflist".to_owned(),
        ));
    }
    let netns = inv.netns.clone().unwrap_or_default();
    let enrol = AgentRequest::Enrol {
        pod: AgentPod { name: name.into(), namespace: ns.into(), netns, ips, uid: inv.pod_uid().map(str::to_owned) },
    };
    let socket = conf.agent_socket();
    match agent::call(&socket, &enrol, timeout(conf)) {
        Ok(_) => Ok(()),
        // A re-created sandbox: the old enrolment points at a netns that is gone.
        Err(AgentError::Refused(why)) if why.contains("already enrolled") => {
            log.push(format!("pillion-cni: {ns}/{name} was enrolled with an older sandbox; re-enrolling"));
            let unenrol = AgentRequest::Unenrol { namespace: ns.into(), name: name.into(), netns: None };
            agent::call(&socket, &unenrol, timeout(conf)).map_err(agent_error)?;
            agent::call(&socket, &enrol, timeout(conf)).map(drop).map_err(agent_error)
        }
        Err(e) => Err(agent_error(e)),
    }
}

/// Never fails: pod deletion must not hang on the mesh. What is left behind (an agent
/// that was down) is cleaned up by the agent, which drops pods whose netns vanished.
fn del(inv: &Invocation, conf: &NetConf, log: &mut Vec<String>) {
    let Some((ns, name)) = inv.pod() else { return };
    // The sandbox's netns, when the runtime still names it: a late DEL of an old sandbox
    // must leave a newer one of the same pod alone.
    let netns = inv.netns.clone().filter(|n| !n.as_os_str().is_empty());
    let unenrol = AgentRequest::Unenrol { namespace: ns.into(), name: name.into(), netns };
    match agent::call(&conf.agent_socket(), &unenrol, timeout(conf)) {
        Ok(_) => {}
        Err(AgentError::Refused(why)) if why.contains("not enrolled") => {}
        Err(AgentError::Refused(why)) if why.contains("newer sandbox") => {
            log.push(format!("pillion-cni: DEL {ns}/{name}: {why}"));
        }
        Err(e) => log.push(format!("pillion-cni: DEL {ns}/{name}: {e}; the agent cleans up at its next start")),
    }
}

fn check(inv: &Invocation, conf: &NetConf, decide: &dyn Decide) -> Result<(), CniError> {
    let Some((ns, name)) = inv.pod() else { return Ok(()) };
    if !wants(conf, decide, ns, name)? {
        return Ok(());
    }
    let pods = agent::call(&conf.agent_socket(), &AgentRequest::List {}, timeout(conf)).map_err(agent_error)?;
    let listed = pods.as_array().into_iter().flatten().any(|p| {
        let pod = &p["pod"];
        pod["namespace"] == ns && pod["name"] == name
    });
    if listed {
        Ok(())
    } else {
        Err(CniError::new(CniError::NOT_ENROLLED, format!("pod {ns}/{name} is in the mesh but not enrolled"), None))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    agent::call(&conf.agent_socket(), &AgentRequest::List {}, timeout(conf)).map(drop).map_err(|e| {
        CniError::new(CniError::PLUGIN_NOT_AVAILABLE, "the Pillion agent is not ready for new pods", e.to_string())
    })
}
