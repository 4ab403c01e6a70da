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
    // Within each kind: the program's stacks largest first, then the runtime's, largest first.
    let typed =
        profiler::report::Report::from_json(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    use profiler::kind::Kind;
    for kind in [Kind::Heap, Kind::Mmap, Kind::Brk, Kind::Sockets] {
        let ranked: Vec<(bool, u64)> = typed
            .entries(kind)
            .map(|e| {
                (profiler::report::origin::is_runtime_stack(&e.frames), profiler::report::flame::value(e))
            })
            .collect();
        assert!(
            ranked
                .windows(2)
                .all(|w| (w[0].0, std::cmp::Reverse(w[0].1)) <= (w[1].0, std::cmp::Reverse(w[1].1))),
            "{kind} not program first, then largest first: {ranked:?}"
        );
    }
}

/// The live view: plain periodic lines when stderr is a pipe (CI logs), and
/// a table redrawn in place on a terminal (tmux), with the time left.
#[test]
fn live_view_prints_lines_when_piped_and_redraws_a_table_in_a_terminal() {
    let exe = common::fixture("trend");
    let dir = common::fresh_dir("trend-live-piped");
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc", "-q", "--interval", "0.5", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(&exe)
        .arg("3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[') && l.contains("status:")).collect();
    assert!(lines.len() >= 4, "a line per interval: {stderr}");
    let last = lines.last().unwrap();
    assert!(last.contains("status: slow leak") || last.contains("status: normal"), "a level: {last}");
    assert!(last.contains("heap ") && last.contains("/min)") && last.contains("lost 0"), "{last}");
    assert!(stderr.contains("writing the report"), "{stderr}");

    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED the terminal half: tmux is not installed (cargo xtask test installs it)");
        return;
    }
    let dir = common::fresh_dir("trend-live-tty");
    let session = format!("live-{}", std::process::id());
    let command = format!(
        "{PROFILER} record --lens alloc -q --interval 0.5 --duration 30 -o {} -- {} 30; sleep 30",
        dir.display(),
        exe.display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    assert!(tmux(&["new-session", "-d", "-s", &session, "-x", "160", "-y", "40", &command]).status.success());
    let capture =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    // The table appears once the probes are attached and a first sample is taken.
    let started = std::time::Instant::now();
    let mut first = capture();
    while !first.contains("leak_steady") && started.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        first = capture();
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = capture();
    tmux(&["kill-session", "-t", &session]);
    for screen in [&first, &second] {
        assert!(screen.contains("of 30s") && screen.contains("left"), "time left: {screen}");
        assert!(screen.contains("top stacks") && screen.contains("leak_steady"), "the table: {screen}");
    }
    assert_ne!(first, second, "the table is redrawn");
}

/// A one-time 60 MiB rise that stays, a sixth of the way into the run: the
/// whole-run slope of RSS is ~0, but the level is a leak (judged on the rise
/// that stayed), and ranked by growth the step's stack comes first.
#[test]
fn a_step_that_stays_is_a_leak_and_ranks_first() {
    let exe = common::fixture("stepleak");
    let dir = common::fresh_dir("trend-step");
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "--interval", "0.25", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(&exe)
        .arg("6")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = common::report_json(&dir);
    let status = &report["status"];
    assert_eq!(status["measured_on"], "rss", "{status}");
    let slope = status["growth_mib_per_min"].as_f64().unwrap();
    let retained = status["retained_mib_per_min"].as_f64().unwrap();
    assert!(slope < 10.0, "the slope misses the step: {status}");
    assert!(retained > 300.0, "60 MiB retained over ~5 s: {status}");
    assert!(status["level"] != "normal" && status["level"] != "unknown", "{status}");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("rose and stayed"), "{text}");

    let heap: Vec<&serde_json::Value> =
        report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "heap").collect();
    assert_eq!(heap[0]["frames"][0]["function"], "step_leak", "ranked by growth, the step first");
    assert_eq!(heap[0]["bytes"], 60 << 20);
    let trend = &heap[0]["trend"];
    assert_eq!(trend["verdict"], "plateaued", "kept, though younger than --min-age: {trend}");
    assert!(
        trend["retained_per_min"].as_f64().unwrap() > trend["growth_per_min"].as_f64().unwrap(),
        "{trend}"
    );
}
