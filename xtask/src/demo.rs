//! `cargo xtask demo`: the main job on the embedded local configuration.
//! Two nodes, four pods, real agents with real kernel programs: captured
//! traffic carried over HBONE mutual TLS with workload identities, a denied
//! connection, a live policy change, STRICT mTLS against a plaintext client,
//! a node probe, the metrics — and everything removed again, also on Ctrl-C.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use pillion_e2e::{Agent, AgentOptions, Node, Pod, Topology, workload_yaml};
use serde_json::Value;

use crate::{run::run, setup};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails the demo (and so runs all cleanup) if Ctrl-C was pressed.
fn checkpoint() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn say(step: &str) {
    println!("\n── {step}");
}

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db-from-api, namespace: shop}\n\
spec:\n  selector: {matchLabels: {app: db}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [PRINCIPALS]}\n---\n";
const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n\
spec: {mtls: {mode: STRICT}}\n---\n";

struct Scene {
    // Drop order: agents before the topology.
    a: Agent,
    b: Agent,
    web: Pod,
    api: Pod,
    db: Pod,
    legacy: Pod,
    node_a: Node,
    node_b: Node,
    topo: Topology,
}

impl Scene {
    fn config(&self, principals: &str, strict: bool) -> String {
        let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n");
        y += &workload_yaml("web", "web", "shop", &self.web, &self.node_a, "app: web");
        y += &workload_yaml("api", "api", "shop", &self.api, &self.node_b, "app: api");
        y += &workload_yaml("db", "db", "shop", &self.db, &self.node_b, "app: db");
        y += &POLICY.replace("PRINCIPALS", principals);
        if strict {
            y += STRICT;
        }
        y
    }

    /// Rewrites the config and waits until both agents applied it.
    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let before = [self.version(&self.a)?, self.version(&self.b)?];
        self.topo.write_config("mesh.yaml", yaml);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.version(&self.a)? <= before[0] || self.version(&self.b)? <= before[1] {
            ensure!(Instant::now() < deadline, "the agents did not apply the new configuration");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn version(&self, agent: &Agent) -> anyhow::Result<u64> {
        let (_, body) = self.topo.http_get(&agent.node, "127.0.0.1:15000", "/config_dump");
        let dump: Value = serde_json::from_str(&body).context("config_dump")?;
        dump["model"]["version"].as_u64().context("model version in config_dump")
    }
}

fn connect(from: &Pod, to: std::net::SocketAddr) -> Value {
    from.client(to, 16 * 1024, &["--timeout-ms", "3000"])
}

fn show_result(what: &str, r: &Value) {
    if r["ok"] == Value::Bool(true) {
        println!(
            "   {what}: ok, {} bytes echoed (app says: {})",
            r["received"],
            r["banner"].as_str().unwrap_or_default()
        );
    } else {
        println!("   {what}: refused ({})", r["error"].as_str().unwrap_or_default());
    }
}

/// Prints the access-log lines of `agent` that `pick` selects, newest last.
fn show_logs(agent: &Agent, pick: impl Fn(&Value) -> bool) {
    // The agent logs when a connection ends, which can trail the client a little.
    std::thread::sleep(Duration::from_millis(200));
    for l in agent.access_logs().iter().filter(|l| pick(l)) {
        let err = l["error"].as_str().map(|e| format!(" error=\"{e}\"")).unwrap_or_default();
        println!(
            "   [{}] {} {} src.identity={} → dst.addr={} dst.identity={} bytes_sent={} bytes_recv={}{}",
            agent.node.name,
            l["message"].as_str().unwrap_or_default(),
            l["direction"].as_str().unwrap_or_default(),
            l["src.identity"].as_str().filter(|s| !s.is_empty()).unwrap_or("-"),
            l["dst.addr"].as_str().unwrap_or_default(),
            l["dst.identity"].as_str().filter(|s| !s.is_empty()).unwrap_or("-"),
            l["bytes_sent"],
            l["bytes_recv"],
            err
        );
    }
}

pub fn demo() -> anyhow::Result<()> {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    ensure!(
        pillion_e2e::is_root(),
        "the demo creates network namespaces and loads eBPF programs: run `sudo cargo xtask demo`"
    );
    if setup::needed() {
        setup::setup()?;
    }
    say("building the agent (with its kernel programs) and the pod workload tool");
    run(Command::new(env!("CARGO")).current_dir(crate::workspace()).args([
        "build",
        "-p",
        "pillion-agent",
        "-p",
        "pillion-e2e",
        "--bins",
    ]))?;
    checkpoint()?;

    say("two nodes joined by a link; pods web (node a), api and db (node b), legacy (node a, not in the mesh)");
    let topo = Topology::with_prefix("pd");
    let node_a = topo.add_node("a");
    let node_b = topo.add_node("b");
    topo.connect_nodes(&node_a, &node_b);
    let web = topo.add_pod(&node_a, "web");
    let legacy = topo.add_pod(&node_a, "legacy");
    let api = topo.add_pod(&node_b, "api");
    let db = topo.add_pod(&node_b, "db");
    for p in [&web, &legacy, &api, &db] {
        println!("   {:<7} {} / {}  (node {})", p.name, p.ip4, p.ip6, p.node);
    }
    checkpoint()?;

    say(
        "a shared CA (pillion-agent ca-init) and the local configuration: shop/web, shop/api, shop/db; db admits only api",
    );
    let ca = topo.ca_dir();
    // The agents start on a minimal file; the scene's model is applied live below.
    let config = topo.write_config("mesh.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    let opts = AgentOptions { config: Some(config.clone()), ca_dir: Some(ca), ..Default::default() };
    say("starting one agent per node (programs loaded, attached and pinned) and enrolling the pods");
    let a = Agent::start_with(&topo, &node_a, &opts);
    let b = Agent::start_with(&topo, &node_b, &opts);
    // As the model names them; legacy stays unenrolled: an enrolled pod the
    // model does not list is refused, and legacy is outside the mesh.
    for (agent, pod) in [(&a, &web), (&b, &api), (&b, &db)] {
        agent
            .enrol_as(pod, "shop", &pod.name)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("enrol {}", pod.name))?;
    }
    let scene = Scene { a, b, web, api, db, legacy, node_a, node_b, topo };
    scene.apply(&scene.config("\"cluster.local/ns/shop/sa/api\"", false))?;
    println!("   {} — applied by both agents without a restart", config.display());
    let _api_app = scene.api.echo_server("[::]:8080".parse()?, Some("api"));
    let _db_app = scene.db.echo_server("[::]:5432".parse()?, Some("db"));
    checkpoint()?;

    say("web → api across nodes: captured, carried over HBONE (mTLS) with each workload's identity");
    let r = connect(&scene.web, scene.api.addr4(8080));
    show_result("web → api:8080 (IPv4)", &r);
    ensure!(r["ok"] == Value::Bool(true), "web → api failed: {r}");
    let r6 = connect(&scene.web, scene.api.addr6(8080));
    show_result("web → api:8080 (IPv6)", &r6);
    ensure!(r6["ok"] == Value::Bool(true), "web → api over IPv6 failed: {r6}");
    // The app answers with the peer its accept() saw: web's own address, not api's.
    let seen = |r: &Value| r["banner"].as_str().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_string();
    println!(
        "   api's app saw the client as {} and {}; web's getpeername() said {} and {}",
        seen(&r),
        seen(&r6),
        r["peer"].as_str().unwrap_or_default(),
        r6["peer"].as_str().unwrap_or_default()
    );
    ensure!(seen(&r).starts_with(&format!("{}:", scene.web.ip4)), "api saw {} for web", seen(&r));
    ensure!(r["peer"] == Value::String(scene.api.addr4(8080).to_string()), "web's getpeername: {r}");
    show_logs(&scene.a, |l| l["direction"] == "outbound");
    show_logs(&scene.b, |l| l["direction"] == "inbound" && l["dst.workload"] == "api");
    checkpoint()?;

    say("api → db is allowed by policy; web → db is denied at db's node");
    let r = connect(&scene.api, scene.db.addr4(5432));
    show_result("api → db:5432", &r);
    ensure!(r["ok"] == Value::Bool(true), "api → db failed: {r}");
    let denied = connect(&scene.web, scene.db.addr4(5432));
    show_result("web → db:5432", &denied);
    ensure!(denied["ok"] == Value::Bool(false), "web → db should have been denied: {denied}");
    show_logs(&scene.b, |l| l["dst.workload"] == "db" && l["error"].is_string());
    checkpoint()?;

    say("live policy change: db now also admits web (config file rewritten, no restart)");
    scene.apply(&scene.config("\"cluster.local/ns/shop/sa/api\", \"cluster.local/ns/shop/sa/web\"", false))?;
    let r = connect(&scene.web, scene.db.addr4(5432));
    show_result("web → db:5432", &r);
    ensure!(r["ok"] == Value::Bool(true), "web → db still denied after the policy change: {r}");
    checkpoint()?;

    say("legacy (outside the mesh) → api in plaintext: allowed under PERMISSIVE, refused under STRICT");
    let r = connect(&scene.legacy, scene.api.addr4(8080));
    show_result("PERMISSIVE: legacy → api", &r);
    ensure!(r["ok"] == Value::Bool(true), "plaintext under PERMISSIVE failed: {r}");
    scene.apply(&scene.config("\"cluster.local/ns/shop/sa/api\", \"cluster.local/ns/shop/sa/web\"", true))?;
    let r = connect(&scene.legacy, scene.api.addr4(8080));
    show_result("STRICT: legacy → api", &r);
    ensure!(r["ok"] == Value::Bool(false), "plaintext accepted under STRICT: {r}");
    // Only the kubelet's cgroup gets the probe source; other host processes are captured.
    let probe = scene.topo.run_as_kubelet(&scene.node_b, &["client", &scene.api.addr4(8080).to_string(), "64"]);
    show_result("STRICT: a probe from node b's kubelet (from 169.254.7.127) → api", &probe);
    ensure!(probe["ok"] == Value::Bool(true), "the node probe failed: {probe}");
    let api = scene.api.addr4(8080).to_string();
    let host = scene.topo.run_on_node(&scene.node_b, &["client", &api, "64", "--timeout-ms", "3000"]);
    show_result("STRICT: any other process on node b (from the node's address) → api", &host);
    ensure!(host["ok"] == Value::Bool(false), "a host-network client bypassed STRICT: {host}");
    checkpoint()?;

    say("metrics on node b's :15020/metrics (Istio names and labels)");
    let (_, metrics) = scene.topo.http_get(&scene.node_b, "127.0.0.1:15020", "/metrics");
    let opened: Vec<&str> = metrics.lines().filter(|l| l.starts_with("istio_tcp_connections_opened_total{")).collect();
    for l in &opened {
        let pick =
            |k: &str| l.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
        println!(
            "   opened {:>3}  reporter={:<11} {} → {}  security={}",
            l.rsplit(' ').next().unwrap_or("?"),
            pick("reporter"),
            pick("source_principal"),
            pick("destination_principal"),
            pick("connection_security_policy"),
        );
    }
    ensure!(
        opened.iter().any(|l| l.contains("connection_security_policy=\"mutual_tls\"")),
        "no mTLS series in the metrics"
    );

    say("summary");
    for agent in [&scene.a, &scene.b] {
        let status = agent.status();
        let c = &status["counters"];
        println!(
            "   node {}: outbound {}  inbound plaintext {}  inbound HBONE {}  denied {}",
            agent.node.name, c["outbound_accepted"], c["inbound_accepted"], c["hbone_accepted"], c["denied"]
        );
    }
    say("cleaning up the L4 scene (agents, namespaces, cgroups, pins)");
    drop(scene);
    checkpoint()?;
    waypoint_scene()?;
    println!("\n   done: everything the demo created is removed");
    Ok(())
}

/// The L7 scene: a namespace behind a waypoint, a 90/10 split and a flaky
/// backend whose failures the waypoint retries away.
fn waypoint_scene() -> anyhow::Result<()> {
    say("the waypoint (L7): namespace shop behind waypoint-0; client (node a) → reviews and flaky (node b)");
    let topo = Topology::with_prefix("pd");
    let pillion_e2e::WaypointPods { a: na, b: nb, client, wp, v1, v2 } = pillion_e2e::WaypointPods::add(&topo);
    let flaky = topo.add_pod(&nb, "flaky");
    let yaml = pillion_e2e::waypoint_scene_yaml((&client, &na), (&wp, &nb), (&v1, &nb), (&v2, &nb), (&flaky, &nb));
    let cfg = topo.write_config("mesh.yaml", &yaml);
    let opts = AgentOptions { config: Some(cfg.clone()), ca_dir: Some(topo.ca_dir()), ..Default::default() };
    let a = Agent::start_with(&topo, &na, &opts);
    let b = Agent::start_with(&topo, &nb, &opts);
    a.enrol_as(&client, "web", "client").map_err(anyhow::Error::msg)?;
    for (p, name) in [(&v1, "reviews-v1-0"), (&v2, "reviews-v2-0"), (&flaky, "flaky-0")] {
        b.enrol_as(p, "shop", name).map_err(anyhow::Error::msg)?;
    }
    let mut backends = Vec::new();
    for (pod, name, extra) in [
        (&v1, "v1", "delay-ms=0".to_string()),
        (&v2, "v2", "delay-ms=0".to_string()),
        (&flaky, "flaky", "fail=7:30 fail-uploads-over=1048576".to_string()),
    ] {
        let args: Vec<&str> = ["http-backend", "[::]:8080", name].into_iter().chain(extra.split(' ')).collect();
        let s = pod.spawn(&args);
        s.wait_event("ready", Duration::from_secs(10));
        backends.push(s);
    }
    let waypoint = pillion_e2e::Waypoint::start(&topo, &wp, "waypoint-0", "shop", &cfg);
    println!("   waypoint-0 ready ({}); backends reviews-v1, reviews-v2 and flaky (fails 30% of attempts)", wp.ip4);
    checkpoint()?;

    say("200 requests to reviews (HTTPRoute: 90% v1, 10% v2)");
    let r = client.run(&["http-requests", "10.96.0.1:80", "200", "/reviews"]);
    println!("   statuses {}  backends {}", r["statuses"], r["backends"]);
    ensure!(r["statuses"] == serde_json::json!({"200": 200}), "the split scene failed: {r}");
    let denied = client.run(&["http-requests", "10.96.0.1:80", "1", "/admin"]);
    println!("   GET /admin → {} (L7 AuthorizationPolicy DENY at the waypoint)", denied["statuses"]);
    ensure!(denied["statuses"] == serde_json::json!({"403": 1}), "/admin was not denied: {denied}");
    // Other spellings of the same path meet the same policy: the waypoint normalises first.
    for spelling in ["/%61dmin", "/./admin", "/x/../admin", "//admin"] {
        let r = client.run(&["http-requests", "10.96.0.1:80", "1", spelling]);
        println!("   GET {spelling} → {} (normalised to /admin before the policy)", r["statuses"]);
        ensure!(r["statuses"] == serde_json::json!({"403": 1}), "{spelling} was not denied: {r}");
    }
    checkpoint()?;

    say("100 requests to flaky (retry: 3 attempts on 503, 60% retry budget)");
    let r = client.run(&["http-requests", "10.96.0.4:80", "100", "/item"]);
    let stats = flaky.run(&["http-requests", "127.0.0.1:8080", "1", "/__stats"]);
    println!("   client saw {}; the backend served {}", r["statuses"], stats["last_body"].as_str().unwrap_or_default());
    ensure!(r["statuses"] == serde_json::json!({"200": 100}), "retries did not hide the failures: {r}");
    // The waypoint writes its log in batches, up to 50 ms after a request.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&waypoint.log).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("attempts") && l.contains("flaky"))
        .filter(|l| !l.contains("attempts=1 "))
        .take(2)
    {
        println!("   waypoint access log: {}", l.trim());
    }
    let m = wp.run(&["http-get", "127.0.0.1:15020", "/metrics"]);
    for l in m["body"].as_str().unwrap_or_default().lines().filter(|l| l.starts_with("istio_requests_total{")) {
        let pick =
            |k: &str| l.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
        println!(
            "   istio_requests_total {:>4}  {} code={}",
            l.rsplit(' ').next().unwrap_or("?"),
            pick("destination_service"),
            pick("response_code")
        );
    }
    checkpoint()?;

    say("a WebSocket and large uploads through the waypoint (bodies stream; 64 KiB kept for retries)");
    let ws = client.run(&["ws-client", "10.96.0.1:80", "reviews.shop.svc.cluster.local", "/chat", "100"]);
    println!(
        "   WebSocket /chat: status {}, {} messages echoed, closed cleanly: {}",
        ws["status"], ws["echoed"], ws["clean_close"]
    );
    ensure!(ws["echoed"] == 100 && ws["clean_close"] == true, "the WebSocket failed: {ws}");
    let up = client.run(&["http-upload", "10.96.0.1:80", "/upload", &(64 << 20).to_string()]);
    println!(
        "   POST 64 MiB to reviews → {} at {:.0} MiB/s (was 413 past 4 MiB)",
        up["status"],
        up["mib_per_s"].as_f64().unwrap_or(0.0)
    );
    ensure!(up["status"] == 200, "the upload failed: {up}");
    let up = client.run(&["http-upload", "10.96.0.4:80", "/upload", &(16 << 20).to_string()]);
    println!("   POST 16 MiB to flaky (refuses uploads over 1 MiB) → {}, tried once:", up["status"]);
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&waypoint.log).unwrap_or_default();
    if let Some(l) = log.lines().find(|l| l.contains("response_flags=RBO")) {
        println!("   waypoint access log: {}", l.trim());
    }
    ensure!(up["status"] == 503, "the refused upload: {up}");
    drop(waypoint);
    drop(backends);
    drop((a, b));
    drop(topo);
    Ok(())
}
