//! Growth over time on `tests/fixtures/trend.c` (as root): a steady leak at a
//! known rate, a bounded cache that plateaus and churn are told apart, ranked
//! by growth, and the measured rate is within 10% of the true one.

mod common;

use std::{path::PathBuf, process::Command};

use common::PROFILER;

#[test]
fn steady_leak_cache_and_churn_get_the_right_verdicts_and_rate() {
    let exe = common::fixture("trend");
    let dir = common::fresh_dir("trend-report");
    let out = Command::new(PROFILER)
        .args([
            "record",
            "--lens",
            "alloc,handles",
            "-q",
            "--interval",
            "0.5",
            "--min-age",
            "1",
            "--snapshots",
            "-o",
        ])
        .arg(&dir)
        .arg("--")
        .arg(&exe)
        .arg("8")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let true_rate: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("true leak rate: "))
        .and_then(|r| r.trim_end_matches(" bytes/min").parse().ok())
        .unwrap_or_else(|| panic!("fixture output: {stdout}"));

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let heap: Vec<&serde_json::Value> =
        report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "heap").collect();
    let leaf = |e: &serde_json::Value| e["frames"][0]["function"].as_str().unwrap_or("").to_string();
    let find = |f: &str| *heap.iter().find(|e| leaf(e) == f).unwrap_or_else(|| panic!("no {f} entry"));

    assert_eq!(leaf(heap[0]), "leak_steady", "ranked by growth, the leak comes first");
    let leak = find("leak_steady");
    assert_eq!(leak["trend"]["verdict"], "growing");
    let rate = leak["trend"]["growth_per_min"].as_f64().unwrap();
    assert!(
        (rate - true_rate).abs() / true_rate < 0.10,
        "measured {rate:.0} B/min, true {true_rate:.0} B/min"
    );
    assert_eq!(find("fill_cache")["trend"]["verdict"], "plateaued");
    assert_eq!(find("churn")["trend"]["verdict"], "transient");

    let series = &report["series"];
    assert!(series["times"].as_array().unwrap().len() >= 12, "sampled every 0.5 s: {series}");
    assert_eq!(leak["series"].as_array().unwrap().len(), series["times"].as_array().unwrap().len());
    // --snapshots: a numbered full report at every sample, the leak rising through them.
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("snapshot-"))
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 12, "{snapshots:?}");
    let leaked = |d: &PathBuf| common::folded_by_leaf(d, "heap").get("leak_steady").copied().unwrap_or(0);
    assert!(leaked(&snapshots[2]) < leaked(snapshots.last().unwrap()));
    let status = &report["status"];
    assert_eq!(status["level"], "normal", "6 MiB/min is below the slow-leak threshold: {status}");
    assert!(status["growth_mib_per_min"].as_f64().unwrap() > 0.0);
}

/// A run too short for a trend (the leaky fixture ends within a second, two
/// samples): no level is claimed, and stacks are ranked by size, largest
/// first, in every kind.
#[test]
fn a_short_run_judges_no_level_and_ranks_by_size() {
    let dir = common::fresh_dir("short-run");
    common::record_launch(&dir, &common::fixture("leaky"), &[]);
    let report = common::report_json(&dir);
    let status = &report["status"];
    assert_eq!(status["level"], "unknown", "{status}");
    assert!(status["samples"].as_u64().unwrap() < 4, "{status}");
    assert!(!status.as_object().unwrap().contains_key("time_to_limit_s"), "{status}");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("Status: unknown, "), "{text}");
    let stacks = report["stacks"].as_array().unwrap();
    for kind in ["heap", "mmap", "brk", "sockets"] {
        let values: Vec<u64> =
            stacks
                .iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| {
                    if kind == "sockets" {
                        e["count"].as_u64().unwrap()
                    } else {
                        e["bytes"].as_u64().unwrap()
                    }
                })
                .collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{kind} not largest first: {values:?}");
    }
}
