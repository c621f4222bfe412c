//! `target/abuse/report.md`: one table row per case and process, the
//! victim's figures, and what each attack did.

use std::fmt::Write;

use serde_json::Value;

/// Today's date (UTC, `YYYY-MM-DD`), from `date`.
pub fn today() -> String {
    crate::run::output(std::process::Command::new("date").args(["-u", "+%F"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

pub fn markdown(result: &Value) -> String {
    let env = &result["environment"];
    let mut md = String::from("# Pillion hostile-peer run (`cargo xtask abuse`)\n\n");
    let _ = writeln!(
        md,
        "{}, {} mode, **{} build**. Machine: kernel {}, {} cores ({}), the attackers, the victim and the mesh sharing them. \
         The agents' open-file limit: {}. Plan: `{}`. Total {:.0} s.\n",
        result["date"].as_str().unwrap_or("?"),
        result["mode"].as_str().unwrap_or("?"),
        result["profile"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        env["cores"],
        env["cpu"].as_str().unwrap_or("?"),
        result["agent_nofile_soft"].as_str().unwrap_or("?"),
        result["plan"].as_str().unwrap_or(""),
        result["total_secs"].as_f64().unwrap_or(0.0),
    );
    md += "The attacker is an enrolled pod (`evil/attacker`, on node a): its plain connections to the \
           waypoint's Service reach the waypoint over HBONE with its SVID. The outsider is a pod outside \
           the mesh on node a. The victim (`tenant/victim`, node a) sends GETs at a fixed rate through \
           agent a, the waypoint and agent b (latency from each request's scheduled time) during every case.\n\n";
    md += "| case | target | secs | process | RSS before → peak (Δ) MB | after MB | CPU s | peak fds | alive | victim ok/sent | victim p99 ms |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for c in result["cases"].as_array().into_iter().flatten() {
        let v = &c["victim"];
        for (name, p) in c["processes"].as_object().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {name} | {} → {} ({}) | {} | {} | {} | {} | {}/{} ({}%) | {} |",
                c["case"].as_str().unwrap_or("?"),
                c["target"].as_str().unwrap_or("?"),
                num(&c["secs"], 1),
                num(&p["rss_before_mb"], 1),
                num(&p["rss_peak_mb"], 1),
                num(&p["rss_peak_delta_mb"], 1),
                num(&p["rss_after_mb"], 1),
                num(&p["cpu_s"], 2),
                p["peak_fds"],
                p["alive"],
                v["ok"],
                v["sent"],
                num(&(v["success_rate"].as_f64().map(|r| r * 100.0).into()), 1),
                num(&v["p99_ms"], 1),
            );
        }
    }
    md += "\n## How to read it\n\n\
- RSS is `VmRSS` sampled every 100 ms; Δ is peak minus the value when the case began; \"after\" is \
  taken as the attack ends (its connections just closed). CPU s is utime + stime of the process \
  over the case. Timings are those of a debug build on a shared 2-core VM: compare cases with \
  each other, not with other machines.\n\
- Rapid reset and CONTINUATION flood count what the attacker *wrote*: frames sit in the socket \
  buffers of the attacker, agent a and the HBONE tunnel, and whatever is in flight when the \
  waypoint sends GOAWAY (code 0xb = ENHANCE_YOUR_CALM, 0x1 = PROTOCOL_ERROR) and closes is never \
  processed. Each new connection is a new tunnel from the same identity. Rapid reset follows every \
  batch of 10 streams with a PING and waits for its answer, so its `streams` were processed by \
  the waypoint; the CONTINUATION floods' `frames` were only written.\n\
- CONTINUATION flood on 15008: the outsider connects straight to the open pod's 15008 with a \
  certificate for `evil/attacker` issued from the mesh CA (what a compromised workload holds) \
  and floods the agent's own HTTP/2 layer, under the tunnels.\n\
- Slow bodies: request bodies stream to the backend, so every upload is accepted; `open` = \
  still uploading when the case ended (each trickles its last bytes, past the case's end); \
  `reset` = the connection was closed while writing; `408` would be the 60 s body idle timeout \
  (a trickle is progress), `503` a full breaker.\n\
- Idle connections: the outsider is outside the mesh. On 15008 it never starts TLS; \
  `still_open_after_hold` counts those the agent has not closed. To the PERMISSIVE pod each \
  connection echoes one byte first, so the agent's inbound relay is really set up; the agent \
  caps proxied connections per pod (`--max-pod-connections`), past which new ones are reset \
  and the holder stops after 11 refusals.\n";
    md += "\n## What each attack did\n\n";
    for c in result["cases"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "- **{}**: `{}`; victim statuses `{}`",
            c["case"].as_str().unwrap_or("?"),
            c["attack"],
            c["victim"]["statuses"]
        );
    }
    md
}
