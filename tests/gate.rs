//! End-to-end tests of `profiler gate` on `tests/fixtures/gatework.c` (as
//! root): exit codes, naming the leaking function, warm-up exclusion,
//! baseline round trip, and the JUnit / JSON / Markdown outputs.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::PROFILER;

fn work_dir(name: &str) -> PathBuf {
    let d = common::fresh_dir(&format!("gate/{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture() -> PathBuf {
    common::fixture("gatework")
}

/// Runs the gate in `dir` (so no config or baseline is picked up from elsewhere).
fn gate(dir: &Path, options: &[&str], program_args: &[&str]) -> Output {
    Command::new(PROFILER)
        .current_dir(dir)
        .arg("gate")
        .args(options)
        .arg("--")
        .arg(fixture())
        .args(program_args)
        .env_remove("GITHUB_STEP_SUMMARY")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn failing_leaves(dir: &Path) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("leak-gate/gate.json")).unwrap()).unwrap();
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .flat_map(|c| c["offenders"].as_array().unwrap().clone())
        .map(|o| o["stack"].as_str().unwrap().rsplit(';').next().unwrap().to_string())
        .collect()
}

const MARKER: [&str; 2] = ["--warmup-marker", "warmup done"];

#[test]
fn a_leaked_file_descriptor_fails_with_zero_configuration() {
    let dir = work_dir("file-fd");
    let o = gate(&dir, &MARKER, &["--leak-file"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let out = stdout(&o);
    assert!(
        out.contains("[FAIL] files budget (all stacks): 1 handles outstanding, budget 0 handles"),
        "{out}"
    );
    assert_eq!(failing_leaves(&dir), vec!["leak_file"]);
}

#[test]
fn leak_free_passes_and_a_switched_on_leak_fails_naming_the_function() {
    let dir = work_dir("pass-fail");
    let ok = gate(&dir, &MARKER, &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", explain(&ok));
    assert!(stdout(&ok).contains("leak gate: PASS"));

    let leak = gate(&dir, &MARKER, &["--leak", "10"]);
    assert_eq!(leak.status.code(), Some(1), "{}", explain(&leak));
    let out = stdout(&leak);
    assert!(out.contains("leak gate: FAIL") && out.contains("leaky_request (gatework.c:"), "{out}");
    assert!(out.contains("1000 B outstanding, budget 0 B"), "{out}");
    assert_eq!(failing_leaves(&dir), vec!["leaky_request"]);

    let junit = std::fs::read_to_string(dir.join("leak-gate/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&junit).expect("junit.xml is XML");
    let failures: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("failure")).collect();
    assert_eq!(failures.len(), 1, "{junit}");
    assert!(junit.contains("leaky_request"));
    let md = std::fs::read_to_string(dir.join("leak-gate/summary.md")).unwrap();
    assert!(md.contains("Leak gate: FAILED") && md.contains("leaky_request"), "{md}");
    assert!(dir.join("leak-gate/run-1/heap.svg").exists(), "the run's flamegraph is kept");
}

#[test]
fn warmup_excludes_one_time_startup_allocations() {
    let dir = work_dir("warmup");
    let none = gate(&dir, &[], &[]);
    assert_eq!(none.status.code(), Some(1), "without warm-up the start-up cache counts: {}", explain(&none));
    assert_eq!(failing_leaves(&dir), vec!["init_cache"]);
    for options in [&MARKER[..], &["--warmup-function", "warmup_done"][..]] {
        let o = gate(&dir, options, &[]);
        assert_eq!(o.status.code(), Some(0), "{options:?}: {}", explain(&o));
    }
    // Leaks after the warm-up still fail with a function marker.
    let o = gate(&dir, &["--warmup-function", "warmup_done"], &["--leak", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert_eq!(failing_leaves(&dir), vec!["leaky_request"]);
}

#[test]
fn baseline_round_trip_fails_exactly_the_stack_that_grew() {
    let dir = work_dir("baseline");
    let base = ["--warmup-marker", "warmup done", "--baseline", "base.json"];
    let update: Vec<&str> = base.iter().copied().chain(["--update-baseline"]).collect();
    let o = gate(&dir, &update, &["--leak", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert!(dir.join("base.json").exists());

    let same = gate(&dir, &base, &["--leak", "10"]);
    assert_eq!(same.status.code(), Some(0), "unchanged leak passes against its baseline: {}", explain(&same));

    let grown = gate(&dir, &base, &["--leak", "11"]);
    assert_eq!(grown.status.code(), Some(1), "{}", explain(&grown));
    assert_eq!(failing_leaves(&dir), vec!["leaky_request"]);
    assert!(stdout(&grown).contains("baseline allows 1000 B"), "{}", stdout(&grown));

    let new_stack = gate(&dir, &base, &["--leak", "10", "--extra"]);
    assert_eq!(new_stack.status.code(), Some(1), "{}", explain(&new_stack));
    assert_eq!(failing_leaves(&dir), vec!["extra_leak"]);
}

#[test]
fn config_budgets_and_allow_lists_apply() {
    let dir = work_dir("config");
    std::fs::write(dir.join("leakgate.toml"), "[[stack]]\nfunction = \"leaky_*\"\nmax = 1000\n").unwrap();
    let o = gate(&dir, &MARKER, &["--leak", "10"]);
    assert_eq!(o.status.code(), Some(0), "within the per-stack budget: {}", explain(&o));
    let o = gate(&dir, &MARKER, &["--leak", "11"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(
        stdout(&o).contains("stacks matching leaky_*: 1.1 KiB outstanding, budget 1000 B"),
        "{}",
        stdout(&o)
    );

    std::fs::write(
        dir.join("leakgate.toml"),
        "[[allow]]\nfunction = \"init_cache\"\nreason = \"one-time\"\n",
    )
    .unwrap();
    let o = gate(&dir, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert!(stdout(&o).contains("allowed by rule (one-time)"));
}

#[test]
fn a_broken_gate_exits_2() {
    let dir = work_dir("broken");
    std::fs::write(dir.join("bad.toml"), "[budget]\nheep = 1\n").unwrap();
    let o = gate(&dir, &["--config", "bad.toml"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid gate config"));

    let o = gate(&dir, &["--config", "missing.toml"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));

    let o = Command::new(PROFILER)
        .current_dir(&dir)
        .args(["gate", "--", "/nonexistent/tests-binary"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot run /nonexistent/tests-binary"));

    let o = Command::new(PROFILER).current_dir(&dir).args(["gate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "no command is a usage error: {}", explain(&o));

    let o = gate(&dir, &["--baseline", "none.json"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
}
