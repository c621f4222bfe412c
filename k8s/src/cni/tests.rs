//! The plugin's parsing, result shapes and agent conversation, against a scripted agent
//! on a Unix socket (no root, no netns: the lead's e2e covers the real agent).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::spec::{AgentRequest, CniError, Command, Invocation, NetConf};
use super::{Decide, run};

struct Fixed(Result<bool, CniError>);

impl Decide for Fixed {
    fn captured(&self, _: &NetConf, _: &str, _: &str) -> Result<bool, CniError> {
        self.0.clone()
    }
}

fn env(command: &str) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<&str, String> = [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", "abc123".into()),
        ("CNI_NETNS", "/var/run/netns/cni-1".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u1".into()),
    ]
    .into_iter()
    .collect();
    move |k| vars.get(k).cloned()
}

fn inv(command: &str) -> Invocation {
    Invocation::from_env(env(command)).unwrap()
}

fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0",
           "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
           "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0},
                   {"address": "fd00:10:244:1::5/64", "interface": 0}]})
}

fn conf(socket: &std::path::Path, extra: Value) -> Vec<u8> {
    let mut c = json!({"cniVersion": "1.0.0", "name": "kindnet", "type": "pillion-cni",
                       "agentSocket": socket, "agentTimeoutSecs": 2, "prevResult": prev_result()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

/// A scripted agent: answers each request line with the next reply, records requests.
struct FakeAgent {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
}

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "pillion-cni-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl FakeAgent {
    fn start(replies: Vec<Value>) -> Self {
        let path = socket_path();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut replies = replies.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                log.lock().unwrap().push(serde_json::from_str(&line).unwrap());
                let Some(reply) = replies.next() else { return };
                writeln!(stream, "{reply}").unwrap();
            }
        });
        Self { path, seen }
    }

    fn ops(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|r| r["op"].as_str().unwrap().to_owned()).collect()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn environment_and_cni_args_are_parsed() {
    let i = inv("ADD");
    assert_eq!(i.command, Command::Add);
    assert_eq!(i.pod(), Some(("shop", "cart-0")));
    assert_eq!(i.netns.as_deref(), Some(std::path::Path::new("/var/run/netns/cni-1")));
    let no_netns = |k: &str| if k == "CNI_NETNS" { None } else { env("ADD")(k) };
    assert_eq!(Invocation::from_env(no_netns).unwrap_err().code, CniError::INVALID_ENV);
    let del_no_netns = |k: &str| if k == "CNI_NETNS" { Some(String::new()) } else { env("DEL")(k) };
    assert_eq!(Invocation::from_env(del_no_netns).unwrap().netns, None, "DEL may come without a netns");
    let bad = |k: &str| if k == "CNI_COMMAND" { Some("FROB".into()) } else { None };
    assert_eq!(Invocation::from_env(bad).unwrap_err().code, CniError::INVALID_ENV);
    let version_only = |k: &str| (k == "CNI_COMMAND").then(|| "VERSION".to_owned());
    assert_eq!(Invocation::from_env(version_only).unwrap().command, Command::Version);
}

#[test]
fn network_config_versions_and_prev_result() {
    let c = NetConf::parse(&conf(std::path::Path::new("/x.sock"), json!({}))).unwrap();
    assert_eq!(c.prev_ips(), ["10.244.1.5".parse::<std::net::IpAddr>().unwrap(), "fd00:10:244:1::5".parse().unwrap()]);
    assert_eq!(c.result(), prev_result(), "prevResult passes through unchanged");
    let old = NetConf::parse(br#"{"cniVersion": "0.2.0", "name": "n", "type": "pillion-cni"}"#).unwrap_err();
    assert_eq!(old.code, CniError::INCOMPATIBLE_VERSION);
    assert_eq!(NetConf::parse(b"{").unwrap_err().code, CniError::DECODE);
    let e = CniError::new(CniError::TRY_AGAIN_LATER, "agent down", Some("details".to_owned()));
    assert_eq!(
        e.to_json("1.0.0"),
        json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent down", "details": "details"})
    );
}

#[test]
fn version_lists_what_it_supports() {
    let out = run(&inv("VERSION"), br#"{"cniVersion": "1.1.0"}"#, &Fixed(Ok(true)));
    assert!(out.success);
    let v = out.stdout.unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("0.4.0")));
}

#[test]
fn add_enrols_an_ambient_pod_and_passes_the_result_on() {
    let agent = FakeAgent::start(vec![json!({"ok": true, "result": {}})]);
    let out = run(&inv("ADD"), &conf(&agent.path, json!({})), &Fixed(Ok(true)));
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout.unwrap(), prev_result());
    let seen = agent.seen.lock().unwrap();
    let want = AgentRequest::Enrol {
        pod: super::spec::AgentPod {
            name: "cart-0".into(),
            namespace: "shop".into(),
            netns: "/var/run/netns/cni-1".into(),
            ips: vec!["10.244.1.5".parse().unwrap(), "fd00:10:244:1::5".parse().unwrap()],
            uid: Some("u1".into()),
        },
    };
    assert_eq!(seen[0], serde_json::to_value(want).unwrap(), "the agent's enrol wire shape");
}

#[test]
fn add_fails_when_the_agent_is_unreachable() {
    let missing = socket_path();
    let out = run(&inv("ADD"), &conf(&missing, json!({})), &Fixed(Ok(true)));
    assert!(!out.success, "an ambient pod must not start uncaptured");
    let err = out.stdout.unwrap();
    assert_eq!(err["code"], CniError::TRY_AGAIN_LATER);
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["details"].as_str().unwrap().contains("not reachable"), "{err}");
    // A pod outside the mesh does not need the agent at all.
    let out = run(&inv("ADD"), &conf(&missing, json!({})), &Fixed(Ok(false)));
    assert!(out.success);
    assert_eq!(out.stdout.unwrap(), prev_result());
    // Not knowing whether it is in the mesh fails closed too.
    let lookup = CniError::new(CniError::LOOKUP_FAILED, "API server unreachable", None);
    assert!(!run(&inv("ADD"), &conf(&missing, json!({})), &Fixed(Err(lookup))).success);
}

#[test]
fn add_reenrols_a_recreated_sandbox_and_reports_refusals() {
    let agent = FakeAgent::start(vec![
        json!({"ok": false, "error": "pod shop/cart-0 is already enrolled; unenrol it first to change it"}),
        json!({"ok": true}),
        json!({"ok": true}),
    ]);
    let out = run(&inv("ADD"), &conf(&agent.path, json!({})), &Fixed(Ok(true)));
    assert!(out.success, "{out:?}");
    assert_eq!(agent.ops(), ["enrol", "unenrol", "enrol"]);

    let agent = FakeAgent::start(vec![json!({"ok": false, "error": "netns is the host's"})]);
    let out = run(&inv("ADD"), &conf(&agent.path, json!({"enrol": "all"})), &Fixed(Ok(false)));
    assert!(!out.success);
    assert_eq!(out.stdout.unwrap()["code"], CniError::AGENT_REFUSED);
}

#[test]
fn del_never_blocks_pod_teardown() {
    let agent = FakeAgent::start(vec![json!({"ok": false, "error": "pod shop/cart-0 is not enrolled"})]);
    let out = run(&inv("DEL"), &conf(&agent.path, json!({})), &Fixed(Ok(true)));
    assert!(out.success && out.stdout.is_none() && out.log.is_empty(), "{out:?}");
    assert_eq!(agent.ops(), ["unenrol"]);
    let out = run(&inv("DEL"), &conf(&socket_path(), json!({})), &Fixed(Ok(true)));
    assert!(out.success, "agent down: DEL still succeeds");
    assert!(out.log[0].contains("cleans up"), "{:?}", out.log);
}

#[test]
fn del_names_its_sandbox_so_a_newer_one_stays() {
    let refusal = "pod shop/cart-0 is enrolled with network namespace /var/run/netns/cni-2, not /var/run/netns/cni-1: a newer sandbox of the same pod; left enrolled";
    let agent = FakeAgent::start(vec![json!({"ok": false, "error": refusal})]);
    let out = run(&inv("DEL"), &conf(&agent.path, json!({})), &Fixed(Ok(true)));
    assert!(out.success && out.log[0].contains("newer sandbox"), "{out:?}");
    let seen = agent.seen.lock().unwrap();
    assert_eq!(seen[0]["netns"], "/var/run/netns/cni-1", "the DEL's own netns is sent: {}", seen[0]);
}

#[test]
fn check_wants_ambient_pods_enrolled() {
    let listed = json!({"ok": true, "result": [{"pod": {"namespace": "shop", "name": "cart-0"}}]});
    let agent = FakeAgent::start(vec![listed, json!({"ok": true, "result": []})]);
    let c = conf(&agent.path, json!({}));
    assert!(run(&inv("CHECK"), &c, &Fixed(Ok(true))).success);
    let out = run(&inv("CHECK"), &c, &Fixed(Ok(true)));
    assert_eq!(out.stdout.unwrap()["code"], CniError::NOT_ENROLLED);
    assert!(run(&inv("STATUS"), &conf(&socket_path(), json!({})), &Fixed(Ok(true))).stdout.unwrap()["code"] == 50);
}
