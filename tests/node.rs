//! Node.js fixtures reproducing the seeds' leaks (loopback only, bounded),
//! each printing its own ground truth. The profiler records the live
//! process and the report is taken while it still holds the leak (Node frees
//! its Buffers at exit).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use common::PROFILER;

/// Launches `node FLAGS script ARGS` under the profiler, waits for the line
/// starting with `truth_prefix`, ends recording with SIGINT while node is
/// still alive; returns the report and the number after the prefix.
fn record_node(
    name: &str,
    script: &str,
    args: &[&str],
    truth_prefix: &str,
) -> Option<(serde_json::Value, u64)> {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED {name}: node is not installed");
        return None;
    }
    let dir = common::fresh_dir(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node").join(script);
    let mut profiler = Command::new(PROFILER)
        .args(["record", "-q", "--interval", "1", "-o"])
        .arg(&dir)
        .args(["--", "node", "--expose-gc", "--perf-basic-prof", "--interpreted-frames-native-stack"])
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(profiler.stdout.take().unwrap());
    let mut truth = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix(truth_prefix) {
            truth = Some(n.trim().parse::<u64>().unwrap());
            break;
        }
    }
    let truth = truth.expect("the fixture printed its ground truth");
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let report = common::report_json(&dir);
    // The profiler detached; the fixture is still running.
    let _ = Command::new("kill").arg(report["target"]["pid"].to_string()).status();
    Some((report, truth))
}

fn bytes_where(report: &serde_json::Value, keep: impl Fn(&serde_json::Value) -> bool) -> u64 {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| keep(e))
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum()
}

fn has_frame(e: &serde_json::Value, needle: &str) -> bool {
    e["frames"].as_array().unwrap().iter().any(|f| f["function"].as_str().unwrap_or("").contains(needle))
}

#[test]
fn retained_response_bodies_are_attributed_to_the_js_function_that_keeps_them() {
    let Some((report, truth)) = record_node("node-responses", "responses.js", &["300"], "retained ") else {
        return;
    };
    assert_eq!(truth, 300 * 64 * 1024);
    let in_function = bytes_where(&report, |e| e["kind"] == "heap" && has_frame(e, "retainResponse"));
    assert!(
        in_function as f64 >= 0.9 * truth as f64,
        "only {in_function} of {truth} retained bytes are in stacks naming retainResponse"
    );
    let external = report["memory_split"]["external_bytes"].as_u64().unwrap();
    let error = (external as f64 - truth as f64).abs() / truth as f64;
    assert!(error <= 0.02, "external memory {external} vs ground truth {truth}");
    assert!(
        report["memory_split"]["v8_heap_bytes"].as_u64().unwrap() > 0,
        "V8's heap mappings are classified"
    );
    let txt = std::fs::read_to_string(common::tmp().join("node-responses/report.txt")).unwrap();
    assert!(txt.contains("Memory split: V8 heap"), "{txt}");
}
