//! Memory figures: the per-pod slope of the node agent against the sum of
//! per-pod sidecars, bytes per held idle connection, retention after load,
//! and the kernel maps' memory.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{
    Plan,
    scene::{Scenario, Scene},
};

const ECHO_PORT: u16 = 7000;

/// RSS (bytes) of every agent of a scene with `pods` pods per node enrolled.
fn rss_with_pods(scenario: Scenario, pods: usize) -> anyhow::Result<(u64, usize)> {
    let scene = Scene::build(scenario, pods.saturating_sub(1), &[]);
    // Let every pod's certificate be fetched and the runtime settle.
    std::thread::sleep(Duration::from_millis(300));
    Ok((scene.agent_rss(), scene.agents.len()))
}

/// Kernel memory of our maps (`bytes_memlock`, from bpftool) for one node.
fn kernel_map_bytes() -> anyhow::Result<u64> {
    let scene = Scene::build(Scenario::Hbone, 0, &[]);
    let pins = std::path::Path::new("/sys/fs/bpf/pillion").join(&scene.node_a.full).join("maps");
    let mut total = 0;
    for entry in std::fs::read_dir(&pins).with_context(|| format!("read {}", pins.display()))? {
        let path = entry?.path();
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
            .context("run bpftool (installed by `cargo xtask setup`)")?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool on {}", path.display()))?;
        total += v["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

pub fn measure(plan: &Plan) -> anyhow::Result<Value> {
    let mut slope = serde_json::Map::new();
    for scenario in [Scenario::Hbone, Scenario::Sidecar] {
        let mut points = Vec::new();
        for &n in plan.pods {
            let (rss, agents) = rss_with_pods(scenario, n)?;
            println!(
                "[bench]   {} with {n} pods per node: {} agents, {:.1} MB",
                scenario.name(),
                agents,
                rss as f64 / 1e6
            );
            points.push(json!({"pods_per_node": n, "agents": agents, "rss_mb_total": rss as f64 / 1e6}));
        }
        let first = &points[0];
        let last = &points[points.len() - 1];
        let per_pod = (last["rss_mb_total"].as_f64().unwrap_or(0.0) - first["rss_mb_total"].as_f64().unwrap_or(0.0))
            / ((last["pods_per_node"].as_f64().unwrap_or(1.0) - first["pods_per_node"].as_f64().unwrap_or(1.0)) * 2.0)
                .max(1.0);
        slope.insert(scenario.letter().into(), json!({"points": points, "rss_mb_per_pod": per_pod}));
    }

    let mut held = Vec::new();
    for &count in plan.held {
        let scene = Scene::build(Scenario::Hbone, 0, &[]);
        let _echo = scene.server.echo_server(format!("[::]:{ECHO_PORT}").parse()?, None);
        scene.client.run(&["client", &scene.server.addr4(ECHO_PORT).to_string(), "100"]);
        let before = scene.agent_rss();
        let mut holder = scene.client.spawn(&["hold", &scene.server.addr4(ECHO_PORT).to_string(), &count.to_string()]);
        let report = holder.wait_event("held", Duration::from_secs(300));
        let held_n = report["held"].as_u64().unwrap_or(0);
        if held_n == 0 {
            bail!("no connection could be held: {report}");
        }
        let after = scene.agent_rss();
        // Two agents each hold one side of every connection.
        let per_side = after.saturating_sub(before) as f64 / held_n as f64 / 2.0;
        println!("[bench]   {held_n} idle connections: {per_side:.0} bytes per connection per side");
        held.push(json!({"connections": held_n, "bytes_per_conn_per_side": per_side}));
        holder.write_line("release");
        holder.wait(Duration::from_secs(30));
    }

    // Retention: after bulk load, and `retention_secs` later.
    let scene = Scene::build(Scenario::Hbone, 0, &[]);
    let _echo = scene.server.echo_server(format!("[::]:{ECHO_PORT}").parse()?, None);
    let idle = scene.agent_rss();
    for _ in 0..20 {
        scene.client.run(&["client", &scene.server.addr4(ECHO_PORT).to_string(), &(4 << 20).to_string()]);
    }
    let loaded = scene.agent_rss();
    std::thread::sleep(Duration::from_secs(plan.retention_secs));
    let later = scene.agent_rss();
    drop(scene);

    Ok(json!({
        "per_pod": slope,
        "held_connections": held,
        "retention_mb": {"idle": idle as f64 / 2e6, "after_load": loaded as f64 / 2e6,
                          "later": later as f64 / 2e6, "later_secs": plan.retention_secs},
        "kernel_map_bytes": kernel_map_bytes()?,
    }))
}
