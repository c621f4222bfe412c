use serde_json::json;

use super::problems;

fn case(rate: f64, p99: serde_json::Value, alive: bool) -> serde_json::Value {
    json!({
        "case": "c",
        "processes": {"waypoint": {"rss_peak_delta_mb": 1.0, "cpu_s": 0.1, "peak_fds": 17, "alive": alive}},
        "victim": {"success_rate": rate, "p99_ms": p99, "sent": 100, "ok": (rate * 100.0).round() as u64},
    })
}

#[test]
fn a_complete_case_with_a_healthy_victim_passes() {
    assert!(problems(&[case(1.0, json!(5.0), true)]).is_empty());
}

#[test]
fn the_quick_run_fails_on_a_victim_under_99_percent_a_missing_figure_or_a_dead_process() {
    assert_eq!(problems(&[case(0.98, json!(5.0), true)]), ["c: victim success rate 98.00% < 99%"]);
    let mut one_miss = case(32.0 / 33.0, json!(5.0), true);
    (one_miss["victim"]["sent"], one_miss["victim"]["ok"]) = (json!(33), json!(32));
    assert!(problems(&[one_miss]).is_empty(), "one miss in a short case is forgiven");
    assert_eq!(problems(&[case(1.0, json!(null), true)]), ["c: victim p99 missing"]);
    assert_eq!(problems(&[case(1.0, json!(5.0), false)]), ["c: waypoint died"]);
    let mut no_cpu = case(1.0, json!(5.0), true);
    no_cpu["processes"]["waypoint"]["cpu_s"] = json!(null);
    assert_eq!(problems(&[no_cpu]), ["c: waypoint.cpu_s missing"]);
}
