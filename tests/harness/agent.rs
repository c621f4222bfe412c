//! A real `pillion-agent` process running in a node's netns.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    process::enter,
    topology::{Node, Pod, Topology},
};

#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra `run` flags (or replacements, e.g. a bad `--cgroup-root`).
    pub extra_args: Vec<String>,
    /// Replace the default `--cgroup-root` (the node's cgroup).
    pub cgroup_root: Option<PathBuf>,
    /// `--config` (the mesh model file).
    pub config: Option<PathBuf>,
    /// `--ca-dir` (the shared embedded CA).
    pub ca_dir: Option<PathBuf>,
    /// Run as this unprivileged uid (outside the node's netns, which an
    /// unprivileged process could not enter).
    pub uid: Option<u32>,
    /// Extra environment (e.g. `KUBECONFIG` for `--kubernetes`).
    pub env: Vec<(String, String)>,
}

pub struct Agent {
    child: Child,
    pub node: Node,
    pub log: PathBuf,
    state_root: PathBuf,
    bin: PathBuf,
}

fn agent_bin() -> PathBuf {
    crate::locate_binary("pillion-agent", "PILLION_AGENT_BIN")
}

impl Agent {
    fn spawn(topo: &Topology, node: &Node, opts: &AgentOptions, seq: &str) -> (Child, PathBuf) {
        let log = topo.tmp.join(format!("{}-agent-{seq}.log", node.name));
        let out = File::create(&log).expect("create agent log");
        let err = out.try_clone().expect("dup log fd");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("run")
            .args(["--node", &node.full, "--log-format", "json", "--drain-secs", "5"])
            .arg("--state-root")
            .arg(topo.state_root())
            .arg("--cgroup-root")
            .arg(opts.cgroup_root.as_ref().unwrap_or(&node.cgroup_root))
            .arg("--agent-cgroup")
            .arg(&node.agent_cgroup)
            // The harness runs in the machine's root netns; pid 1 may not be readable.
            .arg("--host-netns")
            .arg(format!("/proc/{}/ns/net", std::process::id()))
            .args(opts.config.iter().flat_map(|c| [std::ffi::OsStr::new("--config"), c.as_os_str()]))
            .args(opts.ca_dir.iter().flat_map(|c| [std::ffi::OsStr::new("--ca-dir"), c.as_os_str()]))
            .args(&opts.extra_args)
            // `--probe-cgroup` as env, which an older agent binary
            // (PILLION_AGENT_BIN) ignores: the suite can run against one.
            .env("PILLION_PROBE_CGROUPS", &node.kubelet_cgroup)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env("PILLION_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match opts.uid {
            Some(uid) => {
                std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            }
            None => enter(&mut cmd, &node.netns_path(), None),
        }
        (cmd.spawn().expect("spawn pillion-agent"), log)
    }

    /// Starts an agent for `node` and waits until its API answers as this
    /// process (so a handoff waits for the new agent, not the old one).
    pub fn start(topo: &Topology, node: &Node) -> Agent {
        Self::start_with(topo, node, &AgentOptions::default())
    }

    pub fn start_with(topo: &Topology, node: &Node, opts: &AgentOptions) -> Agent {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
        let (child, log) = Self::spawn(topo, node, opts, &seq);
        let mut agent = Agent { child, node: node.clone(), log, state_root: topo.state_root(), bin: agent_bin() };
        agent.wait_ready(Duration::from_secs(60));
        agent
    }

    /// Starts an agent that is expected to fail; returns its exit status and
    /// output.
    pub fn start_expecting_failure(topo: &Topology, node: &Node, opts: &AgentOptions) -> (ExitStatus, String) {
        let (mut child, log) = Self::spawn(topo, node, opts, "fail");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not exit; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    fn socket(&self) -> PathBuf {
        self.state_root.join(&self.node.full).join("agent.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("agent exited during start-up ({status}); log:\n{}", self.log_text());
            }
            if let Ok(reply) = self.try_call_raw(&json!({"op": "status"}).to_string())
                && reply["result"]["pid"] == json!(self.pid())
            {
                return;
            }
            assert!(Instant::now() < deadline, "agent not ready within {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn try_call_raw(&self, line: &str) -> std::io::Result<Value> {
        let stream = UnixStream::connect(self.socket())?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut w = stream.try_clone()?;
        w.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        serde_json::from_str(&reply).map_err(std::io::Error::other)
    }

    /// Sends one raw API line; returns the reply object (`ok`, `error`, `result`).
    pub fn call_raw(&self, line: &str) -> Value {
        self.try_call_raw(line).unwrap_or_else(|e| panic!("agent API: {e}"))
    }

    pub fn status(&self) -> Value {
        let reply = self.call_raw(&json!({"op": "status"}).to_string());
        assert_eq!(reply["ok"], json!(true), "status failed: {reply}");
        reply["result"].clone()
    }

    /// Enrols through the CLI, as an operator would, as `default/<pod name>`.
    /// `Err` carries stderr.
    pub fn enrol(&self, pod: &Pod) -> Result<Value, String> {
        self.enrol_as(pod, "default", &pod.name)
    }

    /// Enrols `pod` as the model's `namespace/name`: the agent serves a pod as
    /// the workload of its own name, never as whatever owns its address.
    pub fn enrol_as(&self, pod: &Pod, namespace: &str, name: &str) -> Result<Value, String> {
        let mut args: Vec<String> =
            vec!["enrol".into(), "--namespace".into(), namespace.into(), "--name".into(), name.into()];
        args.extend(["--netns".into(), pod.netns_path().display().to_string()]);
        for ip in pod.ips() {
            args.extend(["--ip".into(), ip.to_string()]);
        }
        args.extend(["--cgroup".into(), pod.cgroup.display().to_string()]);
        self.cli(&args)
    }

    pub fn unenrol(&self, pod: &Pod) -> Result<Value, String> {
        self.cli(&["unenrol".into(), "--name".into(), pod.name.clone()])
    }

    pub fn cli(&self, args: &[String]) -> Result<Value, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--node", &self.node.full, "--state-root"])
            .arg(&self.state_root)
            .output()
            .expect("run pillion-agent CLI");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The pod's counters from `status`.
    pub fn pod_counters(&self, pod: &Pod) -> Value {
        let status = self.status();
        let pods = status["pods"].as_array().cloned().unwrap_or_default();
        pods.into_iter()
            .find(|p| p["pod"]["name"] == json!(pod.name))
            .map(|p| p["counters"].clone())
            .unwrap_or_else(|| panic!("pod {} not enrolled; status: {status}", pod.name))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn access_logs(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    }

    /// Waits (bounded) for an access-log line matching `pred`: the agent logs
    /// when the connection ends, which can be just after the client returns,
    /// and writes its log in batches (up to 50 ms later).
    pub fn wait_access_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_access_logs(what, 1, pred).swap_remove(0)
    }

    /// Waits (bounded) until at least `n` access-log lines match `pred`; returns them all.
    pub fn wait_access_logs(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Value> = self.access_logs().into_iter().filter(&pred).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} access-log lines for {what}; log:\n{}",
                found.len(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "agent did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
