//! `cargo xtask bench`: Pillion against direct traffic and against per-pod
//! sidecars, following `shared/bench.md`: scenarios interleaved in every
//! round, ratios computed within a round, medians and spread reported.
//!
//! Scenarios: A direct (no agents), B L4 passthrough (capture through both
//! agents, plain TCP between them), C HBONE (the product's path), D per-pod
//! sidecars (the same agent run once per pod, sharing one loaded set of
//! kernel programs per node, HBONE between them), W the service's waypoint
//! in the path (HTTP figures).

mod figures;
mod memory;
pub mod report;
pub mod scene;

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::ensure;
use serde_json::{Value, json};

use crate::{run::run, setup};

pub use scene::Scenario;

/// Durations and counts for one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub bulk_secs: u64,
    pub rtt_count: usize,
    pub http_secs: u64,
    pub http_conns: &'static [u64],
    pub conn_secs: u64,
    pub pods: &'static [usize],
    pub held: &'static [usize],
    pub retention_secs: u64,
    /// W: one upload of this many MiB through the waypoint.
    pub upload_mib: usize,
    /// How long after the bulk load the agents' memory is read again.
    pub settle_secs: u64,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            rounds: 5,
            bulk_secs: 3,
            rtt_count: 20_000,
            http_secs: 3,
            http_conns: &[1, 4, 16, 64],
            conn_secs: 3,
            pods: &[1, 10, 50, 100],
            held: &[1000, 5000, 10000],
            retention_secs: 30,
            upload_mib: 1024,
            settle_secs: 10,
        }
    }

    /// About a minute: keeps the harness working; asserts nothing about speed.
    pub fn quick() -> Plan {
        Plan {
            rounds: 1,
            bulk_secs: 1,
            rtt_count: 200,
            http_secs: 1,
            http_conns: &[4],
            conn_secs: 1,
            pods: &[1, 4],
            held: &[200],
            retention_secs: 1,
            upload_mib: 32,
            settle_secs: 1,
        }
    }
}

pub fn bench(quick: bool, out: Option<PathBuf>, rounds: Option<usize>, only: Option<&str>) -> anyhow::Result<()> {
    ensure!(
        pillion_e2e::is_root(),
        "the benchmark builds network namespaces and loads eBPF programs: run `sudo cargo xtask bench`"
    );
    if setup::needed() {
        setup::setup()?;
    }
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    if let Some(r) = rounds {
        plan.rounds = r.max(1);
    }
    // Quick runs use the test profile (CI builds one profile); full runs
    // measure the release build users would run.
    let profile = if quick { "debug" } else { "release" };
    println!("[bench] building the agent and the load tools ({profile})");
    build_for_harness(&["-p", "pillion-agent", "-p", "pillion-waypoint", "-p", "pillion-e2e"], !quick)?;

    let all = [Scenario::Direct, Scenario::Passthrough, Scenario::Hbone, Scenario::Sidecar, Scenario::Waypoint];
    let scenarios: Vec<Scenario> = match only {
        None => all.to_vec(),
        Some(letters) => {
            let letters = letters.to_ascii_uppercase();
            for c in letters.chars() {
                ensure!(
                    all.iter().any(|s| s.letter().starts_with(c)),
                    "--only: no scenario {c:?} (letters: A B C D W)"
                );
            }
            all.into_iter().filter(|s| *s == Scenario::Direct || letters.contains(s.letter())).collect()
        }
    };
    let mut rounds: Vec<Value> = Vec::new();
    for round in 1..=plan.rounds {
        for &scenario in &scenarios {
            println!("[bench] round {round}/{}: scenario {}", plan.rounds, scenario.name());
            let figures = figures::measure(scenario, &plan)?;
            println!("[bench]   {}", serde_json::to_string(&figures)?);
            rounds.push(json!({"round": round, "scenario": scenario.letter(), "figures": figures}));
        }
    }
    let memory = if only.is_none() {
        println!("[bench] memory: agent per pod, node agent against the sum of sidecars, held connections");
        memory::measure(&plan)?
    } else {
        println!("[bench] memory runs skipped (--only)");
        Value::Null
    };
    let summary = report::summarize(&rounds, &memory, &scenarios);
    let result = json!({
        "environment": report::environment(),
        "plan": format!("{plan:?}"),
        "profile": profile,
        "rounds": rounds,
        "memory": memory,
        "summary": summary,
    });
    let missing = report::missing_figures(&summary, &scenarios);
    let dir = out.unwrap_or_else(|| crate::workspace().join("target/bench"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&result)?)?;
    std::fs::write(dir.join("report.md"), report::markdown(&result))?;
    std::fs::write(dir.join("chart.svg"), report::svg(&summary))?;
    println!("[bench] wrote {}/bench.json, report.md, chart.svg", dir.display());
    if only.is_some() && !missing.is_empty() {
        println!("[bench] not measured with --only: {missing:?}");
        return Ok(());
    }
    ensure!(missing.is_empty(), "figures without numbers: {missing:?}");
    Ok(())
}

/// Builds `selection`'s binaries (`cargo build <selection> --bins`, release
/// or debug) and points the harness at the agent, waypoint and pod tool built.
pub fn build_for_harness(selection: &[&str], release: bool) -> anyhow::Result<()> {
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(crate::workspace()).arg("build").args(selection).arg("--bins");
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let bin = crate::target_dir()?.join(if release { "release" } else { "debug" });
    for (var, name) in [
        ("PILLION_AGENT_BIN", "pillion-agent"),
        ("PILLION_WAYPOINT_BIN", "pillion-waypoint"),
        ("PILLION_POD_TOOL", "pillion-pod-tool"),
    ] {
        // Already set: another build under test (A/B of two binaries in one harness).
        if std::env::var_os(var).is_some() {
            println!("[bench] {var} from the environment: {}", std::env::var(var).unwrap_or_default());
            continue;
        }
        // SAFETY: set before any thread is started.
        unsafe { std::env::set_var(var, bin.join(name)) };
    }
    Ok(())
}

/// `median/min/max` of a list.
pub fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    Some((median, v[0], v[v.len() - 1]))
}

pub type Figures = BTreeMap<String, f64>;
