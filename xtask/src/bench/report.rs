//! The summary (median, min, max, ratio to direct per figure and scenario),
//! the environment record, the Markdown report and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{Value, json};

use super::{Scenario, stats};

/// Figures every scenario with agents must produce (direct has no agent
/// figures).
const FIGURES: [&str; 22] = [
    "bulk_gbps_1stream",
    "bulk_gbps_4streams",
    "cpu_s_per_gb",
    "agent_page_faults_per_gb",
    "agent_ctx_switches_per_gb",
    "rtt_us_p50",
    "rtt_us_p90",
    "rtt_us_p99",
    "rtt_us_p999",
    "rtt_added_us_p50",
    "rtt_added_us_p99",
    "agent_cpu_us_per_rtt",
    "agent_ctx_switches_per_rtt",
    "http_added_ms_p99_c4",
    "vcpu_per_1000rps",
    "vcpu_per_1000rps_waypoint",
    "conn_per_s_pooled",
    "conn_per_s_fresh_mtls",
    "rss_idle_mb",
    "rss_settled_mb",
    "rss_mb_per_pod",
    "bytes_per_idle_conn",
];

fn needs_agent(figure: &str) -> bool {
    figure.starts_with("agent_")
        || matches!(
            figure,
            "cpu_s_per_gb"
                | "vcpu_per_1000rps"
                | "rss_idle_mb"
                | "rss_settled_mb"
                | "rss_mb_per_pod"
                | "bytes_per_idle_conn"
        )
}

fn applies(figure: &str, s: Scenario) -> bool {
    if s == Scenario::Waypoint {
        return matches!(figure, "http_added_ms_p99_c4" | "vcpu_per_1000rps" | "vcpu_per_1000rps_waypoint");
    }
    match figure {
        "vcpu_per_1000rps_waypoint" => false,
        "conn_per_s_fresh_mtls" => matches!(s, Scenario::Hbone | Scenario::Sidecar),
        "rss_mb_per_pod" => matches!(s, Scenario::Hbone | Scenario::Sidecar),
        "bytes_per_idle_conn" => s == Scenario::Hbone,
        f if needs_agent(f) => s != Scenario::Direct,
        _ => true,
    }
}

pub fn summarize(rounds: &[Value], memory: &Value, scenarios: &[Scenario]) -> Value {
    // Per round: figure → scenario → value, with the derived "added" figures.
    let mut by_round: BTreeMap<u64, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    for r in rounds {
        let round = r["round"].as_u64().unwrap_or(0);
        let scenario = r["scenario"].as_str().unwrap_or("?").to_string();
        for (k, v) in r["figures"].as_object().into_iter().flatten() {
            if let Some(v) = v.as_f64() {
                by_round.entry(round).or_default().entry(k.clone()).or_default().insert(scenario.clone(), v);
            }
        }
    }
    // Added latency, paired within each round: the scenario minus direct of that round.
    const ADDED: [(&str, &str); 4] = [
        ("http_ms_p99_c4", "http_added_ms_p99_c4"),
        ("rtt_us_p50", "rtt_added_us_p50"),
        ("rtt_us_p99", "rtt_added_us_p99"),
        ("rtt_us_p999", "rtt_added_us_p999"),
    ];
    for figures in by_round.values_mut() {
        for (from, to) in ADDED {
            if let Some(values) = figures.get(from).cloned()
                && let Some(direct) = values.get("A").copied()
            {
                let added = values.iter().map(|(s, v)| (s.clone(), v - direct)).collect();
                figures.insert(to.into(), added);
            }
        }
    }
    let mut summary = serde_json::Map::new();
    let names: std::collections::BTreeSet<String> = by_round.values().flat_map(|f| f.keys().cloned()).collect();
    for name in names {
        let mut per = serde_json::Map::new();
        for s in scenarios {
            let values: Vec<f64> = by_round.values().filter_map(|f| f.get(&name)?.get(s.letter()).copied()).collect();
            let ratios: Vec<f64> = by_round
                .values()
                .filter_map(|f| {
                    let m = f.get(&name)?;
                    let (v, d) = (m.get(s.letter())?, m.get("A")?);
                    (*d != 0.0).then(|| v / d)
                })
                .collect();
            if let Some((median, min, max)) = stats(&values) {
                per.insert(
                    s.letter().into(),
                    json!({"median": median, "min": min, "max": max, "ratio_to_direct": stats(&ratios).map(|r| r.0)}),
                );
            }
        }
        summary.insert(name, Value::Object(per));
    }
    for (s, v) in memory["per_pod"].as_object().into_iter().flatten() {
        let x = v["rss_mb_per_pod"].as_f64().unwrap_or(f64::NAN);
        summary.entry("rss_mb_per_pod").or_insert(json!({}))[s] =
            json!({"median": x, "min": x, "max": x, "ratio_to_direct": null});
    }
    if let Some(first) = memory["held_connections"].as_array().and_then(|a| a.first()) {
        let x = first["bytes_per_conn_per_side"].as_f64().unwrap_or(f64::NAN);
        summary.insert(
            "bytes_per_idle_conn".into(),
            json!({"C": {"median": x, "min": x, "max": x, "ratio_to_direct": null}}),
        );
    }
    Value::Object(summary)
}

/// Figures with no number for a scenario they apply to.
pub fn missing_figures(summary: &Value, scenarios: &[Scenario]) -> Vec<String> {
    let mut missing = Vec::new();
    for f in FIGURES {
        for s in scenarios.iter().filter(|s| applies(f, **s)) {
            if !summary[f][s.letter()]["median"].as_f64().is_some_and(f64::is_finite) {
                missing.push(format!("{f}/{}", s.letter()));
            }
        }
    }
    missing
}

pub fn environment() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "note": "2-core shared VM: compare ratios within a round, not absolute numbers across machines",
    })
}

pub fn markdown(result: &Value) -> String {
    let summary = &result["summary"];
    let mut md = String::from("# Pillion benchmark\n\n");
    let env = &result["environment"];
    let _ = writeln!(
        md,
        "Kernel {}, {} cores ({}). Plan: `{}`.\n",
        env["kernel"],
        env["cores"],
        env["cpu"],
        result["plan"].as_str().unwrap_or("")
    );
    md += "Median over rounds (min–max); in brackets the median ratio to direct (A) measured within each round.\n\n";
    md += "| figure | A direct | B L4 passthrough | C HBONE | D per-pod sidecar | W waypoint |\n|---|---|---|---|---|---|\n";
    for (name, per) in summary.as_object().into_iter().flatten() {
        let _ = write!(md, "| `{name}` |");
        for s in ["A", "B", "C", "D", "W"] {
            let c = &per[s];
            match c["median"].as_f64() {
                Some(m) => {
                    let ratio = c["ratio_to_direct"].as_f64().map(|r| format!(" [{r:.2}]")).unwrap_or_default();
                    let _ = write!(
                        md,
                        " {} ({}–{}){ratio} |",
                        fmt(m),
                        fmt(c["min"].as_f64().unwrap_or(m)),
                        fmt(c["max"].as_f64().unwrap_or(m))
                    );
                }
                None => md += " – |",
            }
        }
        md += "\n";
    }
    md += "\n`rtt_*`: 1 KiB ping-pong on one `TCP_NODELAY` connection (as sockperf's ping-pong), every \
           round trip timed in ns (the plan's `rtt_count` per round); `rtt_added_*`: the scenario minus \
           direct within the same round, then the median over rounds. `agent_*`: both nodes' agents \
           together — CPU µs and context switches (all threads) per round trip, page faults and \
           context switches per GB of the one-stream bulk transfer.\n";
    md += "\n`vcpu_per_1000rps` is CPU per proxy in the path at 4 connections (the agents, and for W the \
           waypoint too, averaged); `vcpu_per_1000rps_waypoint` is the waypoint alone (the figure Istio \
           publishes for its Envoy waypoint, 0.25) and `vcpu_per_1000rps_per_agent` each agent beside it.\n";
    let mem = &result["memory"];
    let _ = writeln!(md, "\nKernel map memory (one node's pinned maps): {} bytes.", mem["kernel_map_bytes"]);
    let _ = writeln!(md, "Retention (MB per agent): {}.", mem["retention_mb"]);
    md += "\nPer-pod memory (sum over all agents of the scene, two nodes):\n\n| scenario | points |\n|---|---|\n";
    for (s, v) in mem["per_pod"].as_object().into_iter().flatten() {
        let pts: Vec<String> = v["points"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/node → {:.1} MB ({} agents)",
                    p["pods_per_node"],
                    p["rss_mb_total"].as_f64().unwrap_or(0.0),
                    p["agents"]
                )
            })
            .collect();
        let _ = writeln!(md, "| {s} | {} |", pts.join("; "));
    }
    md
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Ratio to direct of the throughput and latency figures, one bar per
/// scenario: readable at a glance.
pub fn svg(summary: &Value) -> String {
    let figures = ["bulk_gbps_1stream", "bulk_gbps_4streams", "rtt_us_p50", "rtt_us_p99", "conn_per_s_pooled"];
    let colors = [("B", "#6baed6"), ("C", "#2171b5"), ("D", "#fd8d3c")];
    let (w, h, left, top, row) = (760.0, 60.0 + figures.len() as f64 * 70.0, 190.0, 40.0, 70.0);
    let max_ratio = figures
        .iter()
        .flat_map(|f| colors.iter().filter_map(move |(s, _)| summary[*f][*s]["ratio_to_direct"].as_f64()))
        .fold(1.0f64, f64::max)
        .max(1.0);
    let scale = (w - left - 60.0) / max_ratio;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">Pillion: ratio to direct (A = 1.0), median of rounds</text>\n"
    );
    let x1 = left + scale;
    let _ = writeln!(
        svg,
        "<line x1=\"{x1}\" y1=\"{top}\" x2=\"{x1}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4\"/>",
        h - 20.0
    );
    for (i, f) in figures.iter().enumerate() {
        let y = top + i as f64 * row;
        let _ = writeln!(svg, "<text x=\"10\" y=\"{}\">{f}</text>", y + 30.0);
        for (j, (s, color)) in colors.iter().enumerate() {
            let r = summary[*f][*s]["ratio_to_direct"].as_f64().unwrap_or(0.0);
            let by = y + 8.0 + j as f64 * 18.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{left}\" y=\"{by}\" width=\"{:.1}\" height=\"14\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{s} {r:.2}</text>",
                r * scale,
                left + r * scale + 4.0,
                by + 11.0
            );
        }
    }
    svg += "</svg>\n";
    svg
}
