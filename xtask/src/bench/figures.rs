//! The per-round figures of one scenario: bulk throughput (iperf3) and agent
//! CPU per GB, round-trip latency, HTTP at a fixed rate, vCPU per 1000 rps,
//! connection rates, and the agents' idle and post-load memory.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{
    Figures, Plan,
    scene::{Scenario, Scene},
};

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const HTTP_RPS: u64 = 1000;

fn number(v: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().with_context(|| format!("no {} in {v}", path.join(".")))
}

/// iperf3 client in the client pod against the server pod: (Gbit/s, bytes).
/// Retries briefly while the server is still starting.
fn iperf(scene: &Scene, streams: u32, secs: u64) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match iperf_once(scene, streams, secs) {
            Err(e) if Instant::now() < deadline && e.to_string().contains("unable to connect") => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn iperf_once(scene: &Scene, streams: u32, secs: u64) -> anyhow::Result<(f64, f64)> {
    let target = scene.server.ip4.to_string();
    let out = scene
        .client
        .command("iperf3")
        .args(["-c", &target, "-p", &IPERF_PORT.to_string(), "-J", "-t", &secs.to_string(), "-P", &streams.to_string()])
        .stderr(Stdio::null())
        .output()
        .context("run iperf3 (installed by `cargo xtask setup`)")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = number(&v, &["end", "sum_received", "bits_per_second"])?;
    let bytes = number(&v, &["end", "sum_received", "bytes"])?;
    Ok((bps / 1e9, bytes))
}

fn tool(scene: &Scene, args: &[&str]) -> anyhow::Result<Value> {
    let v = scene.client.run(args);
    if v["ok"] != Value::Bool(true) {
        bail!("{args:?}: {v}");
    }
    Ok(v)
}

pub fn measure(scenario: Scenario, plan: &Plan) -> anyhow::Result<Figures> {
    if scenario == Scenario::Waypoint {
        return measure_waypoint(plan);
    }
    let scene = Scene::build(scenario, 0, &[]);
    let mut f = Figures::new();
    let agents = !scene.agents.is_empty();
    let _iperf = ServerProc::spawn(scene.server.command("iperf3").args(["-s", "-p", &IPERF_PORT.to_string()]));
    let _echo = scene.server.echo_server(format!("[::]:{ECHO_PORT}").parse()?, None);
    let http = scene.server.spawn(&["http-server", &format!("[::]:{HTTP_PORT}"), "1024"]);
    http.wait_event("ready", Duration::from_secs(10));
    // Warm up: first connections pay for certificates and pool set-up.
    tool(&scene, &["client", &scene.server.addr4(ECHO_PORT).to_string(), "1000"])?;
    if agents {
        f.insert("rss_idle_mb".into(), scene.agent_rss() as f64 / scene.agents.len() as f64 / 1e6);
    }

    for (streams, name) in [(1, "bulk_gbps_1stream"), (4, "bulk_gbps_4streams")] {
        let cpu0 = scene.agent_cpu_us();
        let sw0 = scene.agent_switches();
        let (gbps, bytes) = iperf(&scene, streams, plan.bulk_secs)?;
        let cpu = (scene.agent_cpu_us() - cpu0) as f64 / 1e6;
        let sw = scene.agent_switches();
        f.insert(name.into(), gbps);
        if streams == 1 && agents {
            f.insert("cpu_s_per_gb".into(), cpu / (bytes / 1e9));
            // Both nodes' agents: faults are allocation churn, switches are wake-ups.
            f.insert("agent_page_faults_per_gb".into(), (sw.page_faults - sw0.page_faults) as f64 / (bytes / 1e9));
            f.insert(
                "agent_ctx_switches_per_gb".into(),
                (sw.context_switches - sw0.context_switches) as f64 / (bytes / 1e9),
            );
        }
    }
    if agents {
        f.insert("rss_after_load_mb".into(), scene.agent_rss() as f64 / scene.agents.len() as f64 / 1e6);
        // What the agent keeps once the load is over (the review's "10 s after load").
        std::thread::sleep(Duration::from_secs(plan.settle_secs));
        f.insert("rss_settled_mb".into(), scene.agent_rss() as f64 / scene.agents.len() as f64 / 1e6);
    }

    // sockperf-like ping-pong: 1 KiB each way on one TCP_NODELAY connection, timed in ns.
    let (cpu0, sw0) = (scene.agent_cpu_us(), scene.agent_switches());
    let rtt = tool(&scene, &["rtt", &scene.server.addr4(ECHO_PORT).to_string(), &plan.rtt_count.to_string(), "1024"])?;
    let (cpu, sw) = (scene.agent_cpu_us() - cpu0, scene.agent_switches());
    for q in ["p50", "p90", "p99", "p999"] {
        f.insert(format!("rtt_us_{q}"), number(&rtt, &["rtt", &format!("{q}_us")])?);
    }
    if agents {
        let trips = number(&rtt, &["rtt", "count"])?;
        // Both nodes' agents, per round trip (the review's "agent CPU per round trip").
        f.insert("agent_cpu_us_per_rtt".into(), cpu as f64 / trips);
        f.insert("agent_ctx_switches_per_rtt".into(), (sw.context_switches - sw0.context_switches) as f64 / trips);
    }

    for &conns in plan.http_conns {
        let cpu0 = scene.agent_cpu_us();
        let started = Instant::now();
        let v = tool(
            &scene,
            &[
                "http-load",
                &scene.server.addr4(HTTP_PORT).to_string(),
                &HTTP_RPS.to_string(),
                &conns.to_string(),
                &plan.http_secs.to_string(),
            ],
        )?;
        let wall = started.elapsed().as_secs_f64();
        for q in ["p50", "p90", "p99"] {
            f.insert(format!("http_ms_{q}_c{conns}"), number(&v, &["latency", &format!("{q}_us")])? / 1000.0);
        }
        if conns == 4 && agents {
            let cpu = (scene.agent_cpu_us() - cpu0) as f64 / 1e6;
            let rps = number(&v, &["achieved_rps"])?;
            // Per agent: CPU-seconds per second, per 1000 requests per second.
            f.insert("vcpu_per_1000rps".into(), cpu / wall / (rps / 1000.0) / scene.agents.len() as f64);
        }
    }

    let v = tool(&scene, &["conn-rate", &scene.server.addr4(ECHO_PORT).to_string(), &plan.conn_secs.to_string()])?;
    f.insert("conn_per_s_pooled".into(), number(&v, &["per_second"])?);
    drop(http);
    drop(scene);

    if matches!(scenario, Scenario::Hbone | Scenario::Sidecar) {
        // Every tunnel over a fresh connection: a full mutual-TLS handshake each.
        let scene = Scene::build(scenario, 0, &["--no-hbone-pooling"]);
        let _echo = scene.server.echo_server(format!("[::]:{ECHO_PORT}").parse()?, None);
        let v = tool(&scene, &["conn-rate", &scene.server.addr4(ECHO_PORT).to_string(), &plan.conn_secs.to_string()])?;
        f.insert("conn_per_s_fresh_mtls".into(), number(&v, &["per_second"])?);
    }
    Ok(f)
}

/// W: HTTP at a fixed rate through the service VIP, so every request crosses
/// the client's agent, the waypoint and the server's agent.
fn measure_waypoint(plan: &Plan) -> anyhow::Result<Figures> {
    let scene = Scene::build(Scenario::Waypoint, 0, &[]);
    let mut f = Figures::new();
    let http = scene.server.spawn(&["http-server", &format!("[::]:{HTTP_PORT}"), "1024"]);
    http.wait_event("ready", Duration::from_secs(10));
    tool(&scene, &["http-requests", super::scene::WAYPOINT_VIP, "20", "/"])?;
    for &conns in plan.http_conns {
        let cpu0 = scene.agent_cpu_us();
        let wp_cpu0 = scene.waypoint_cpu_us();
        let started = Instant::now();
        let v = tool(
            &scene,
            &[
                "http-load",
                super::scene::WAYPOINT_VIP,
                &HTTP_RPS.to_string(),
                &conns.to_string(),
                &plan.http_secs.to_string(),
            ],
        )?;
        let wall = started.elapsed().as_secs_f64();
        for q in ["p50", "p90", "p99"] {
            f.insert(format!("http_ms_{q}_c{conns}"), number(&v, &["latency", &format!("{q}_us")])? / 1000.0);
        }
        if conns == 4 {
            let cpu = (scene.agent_cpu_us() - cpu0) as f64 / 1e6;
            let wp_cpu = (scene.waypoint_cpu_us() - wp_cpu0) as f64 / 1e6;
            let rps = number(&v, &["achieved_rps"])?;
            let per_1000rps = |cpu_s: f64| cpu_s / wall / (rps / 1000.0);
            // Per proxy: two agents and the waypoint, averaged.
            f.insert("vcpu_per_1000rps".into(), per_1000rps(cpu) / 3.0);
            // The waypoint alone: the figure Istio publishes for its Envoy waypoint.
            f.insert("vcpu_per_1000rps_waypoint".into(), per_1000rps(wp_cpu));
            f.insert("vcpu_per_1000rps_per_agent".into(), per_1000rps(cpu - wp_cpu) / 2.0);
        }
    }
    if let Some((wp, _)) = &scene.waypoint {
        f.insert("rss_waypoint_mb".into(), super::scene::rss_bytes(wp.pid()) as f64 / 1e6);
        // One large upload through the route: the body streams, so the waypoint's peak
        // memory during it stays near where it was.
        let before = super::scene::rss_bytes(wp.pid());
        super::scene::reset_peak_rss(wp.pid())?;
        let bytes = plan.upload_mib << 20;
        let v = tool(&scene, &["http-upload", super::scene::WAYPOINT_VIP, "/upload", &bytes.to_string()])?;
        if v["status"] != 200 {
            bail!("upload of {} MiB through the waypoint: {v}", plan.upload_mib);
        }
        f.insert("upload_mib_per_s".into(), number(&v, &["mib_per_s"])?);
        let peak = super::scene::peak_rss_bytes(wp.pid());
        f.insert("upload_waypoint_rss_growth_mb".into(), peak.saturating_sub(before) as f64 / 1e6);
    }
    Ok(f)
}

/// A server process killed on drop.
struct ServerProc(std::process::Child);

impl ServerProc {
    fn spawn(cmd: &mut std::process::Command) -> ServerProc {
        ServerProc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn server"))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
