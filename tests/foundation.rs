//! End-to-end tests of the foundation: real eBPF programs attached to real
//! processes (run as root, e.g. through `cargo xtask test`). The fixture
//! `tests/fixtures/leaky.c` leaks known amounts from known functions; every
//! number asserted here follows from its source.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{fixture_with, folded_by_leaf, report_json, tmp, LEAKY_HEAP_LEAKS, PROFILER};

const MMAP_LEAKS: [(&str, u64); 1] = [("leak_mmap", 5 * 4096)];
const SOCKET_LEAKS: [(&str, u64); 2] = [("leak_sockets", 3), ("leak_socketpair", 2)];
const CONTROLS: [&str; 3] = ["control_heap", "control_mmap", "control_sockets"];

fn require_root() {
    assert!(nix_is_root(), "these tests load eBPF programs and must run as root: use `cargo xtask test`");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

fn fixture() -> PathBuf {
    common::fixture("leaky")
}

fn out_dir(name: &str) -> PathBuf {
    let d = tmp().join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Blocks per leaf function of one kind, from report.json.
fn blocks_by_leaf(report: &serde_json::Value, kind: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in report["stacks"].as_array().unwrap() {
        if e["kind"] == kind {
            let leaf = e["frames"][0]["function"].as_str().unwrap_or("").to_string();
            *out.entry(leaf).or_default() += e["count"].as_u64().unwrap();
        }
    }
    out
}

fn assert_ground_truth(dir: &Path) {
    let heap = folded_by_leaf(dir, "heap");
    let report = report_json(dir);
    let blocks = blocks_by_leaf(&report, "heap");
    for (f, bytes, n) in LEAKY_HEAP_LEAKS {
        assert_eq!(heap.get(f), Some(&bytes), "heap bytes of {f}; heap.folded sums: {heap:?}");
        assert_eq!(blocks.get(f), Some(&n), "heap blocks of {f}");
    }
    let mmap = folded_by_leaf(dir, "mmap");
    for (f, bytes) in MMAP_LEAKS {
        assert_eq!(mmap.get(f), Some(&bytes), "mmap bytes of {f}; mmap.folded sums: {mmap:?}");
    }
    let sockets = folded_by_leaf(dir, "sockets");
    for (f, n) in SOCKET_LEAKS {
        assert_eq!(sockets.get(f), Some(&n), "open sockets of {f}; sockets.folded sums: {sockets:?}");
    }
    // Not brk: the heap's growth is charged to the allocation that grew it,
    // and a complete stack shows which call that was (here the control's
    // first malloc, which set up the thread's malloc cache).
    for kind in ["heap", "mmap", "file-mmap", "sockets"] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.folded"))).unwrap_or_default();
        for control in CONTROLS {
            assert!(!text.contains(control), "non-leaking {control} appears in {kind}.folded:\n{text}");
        }
    }
    let acc = &report["accuracy"];
    assert_eq!(acc["ringbuf_drops"], 0);
    assert_eq!(acc["stack_failures"], 0);
    assert!(acc["calls_seen"]["malloc"].as_u64().unwrap() >= 12, "malloc calls counted: {acc}");
    assert_eq!(report["schema_version"], 1);
}

fn record(args: &[&str]) -> Output {
    Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles"])
        .args(args)
        .output()
        .expect("running the profiler")
}

#[test]
fn launch_mode_attributes_exact_bytes_blocks_and_handles() {
    require_root();
    let dir = out_dir("launch");
    let out = record(&["-q", "-o", dir.to_str().unwrap(), "--", fixture().to_str().unwrap()]);
    assert!(out.status.success(), "profiler failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_ground_truth(&dir);
    let report = report_json(&dir);
    assert_eq!(report["target"]["mode"], "launch");
    assert!(report["end_reason"].as_str().unwrap().starts_with("target exited"));
    // Frames carry file:line from DWARF.
    let txt = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(txt.contains("leak_pvalloc (") && txt.contains("leaky.c:"), "{txt}");
}

/// Starts `leaky --wait`, returns it once it is waiting for SIGUSR1.
fn start_waiting_fixture() -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(fixture()).arg("--wait").stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, stdout)
}

/// Starts the profiler (precise lenses) and waits until it reports that it is attached.
fn start_profiler(args: &[&str]) -> (Child, std::thread::JoinHandle<String>) {
    common::start_profiler(&[&["--lens", "alloc,handles"], args].concat())
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success());
}

fn pid_mode(name: &str, end: &str) -> PathBuf {
    let dir = out_dir(name);
    let (mut target, mut stdout) = start_waiting_fixture();
    let pid = target.id().to_string();
    let mut args = vec!["-q", "-o", dir.to_str().unwrap(), "--pid", &pid];
    if end == "duration" {
        args.extend(["--duration", "2"]);
    }
    let (mut profiler, stderr) = start_profiler(&args);
    signal(target.id(), "USR1");
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    std::thread::sleep(Duration::from_millis(300));
    if end != "duration" {
        signal(profiler.id(), end);
    }
    let st = profiler.wait().unwrap();
    let stderr = stderr.join().unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    assert!(st.success(), "profiler failed: {stderr}");
    dir
}

#[test]
fn pid_mode_snapshot_while_target_sleeps_ended_by_sigint() {
    require_root();
    let dir = pid_mode("pid-sigint", "INT");
    assert_ground_truth(&dir);
    let report = report_json(&dir);
    assert_eq!(report["target"]["mode"], "attach");
    assert_eq!(report["end_reason"], "SIGINT");
}

#[test]
fn pid_mode_ended_by_sigterm_and_by_duration_write_complete_reports() {
    require_root();
    let dir = pid_mode("pid-sigterm", "TERM");
    assert_ground_truth(&dir);
    assert_eq!(report_json(&dir)["end_reason"], "SIGTERM");
    let dir = pid_mode("pid-duration", "duration");
    assert_ground_truth(&dir);
    assert_eq!(report_json(&dir)["end_reason"], "duration elapsed");
}

#[test]
fn pid_mode_reports_target_exit() {
    require_root();
    let dir = out_dir("pid-exit");
    let (mut target, _stdout) = start_waiting_fixture();
    let pid = target.id().to_string();
    let (mut profiler, stderr) = start_profiler(&["-q", "-o", dir.to_str().unwrap(), "--pid", &pid]);
    target.kill().unwrap();
    target.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while profiler.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "profiler did not notice the target exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(profiler.wait().unwrap().success(), "{}", stderr.join().unwrap());
    assert!(report_json(&dir)["end_reason"].as_str().unwrap().starts_with("target exited"));
}

#[test]
fn flamegraphs_are_valid_svg_naming_the_leaking_functions() {
    require_root();
    let dir = out_dir("svg");
    let out = record(&["-q", "-o", dir.to_str().unwrap(), "--", fixture().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (kind, names) in [
        ("heap", vec!["leak_malloc", "leak_calloc", "thread_main"]),
        ("mmap", vec!["leak_mmap"]),
        ("sockets", vec!["leak_sockets", "leak_socketpair"]),
    ] {
        let svg = std::fs::read_to_string(dir.join(format!("{kind}.svg"))).unwrap();
        let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
        let doc = roxmltree::Document::parse_with_options(&svg, options)
            .unwrap_or_else(|e| panic!("{kind}.svg is not valid XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        for n in names {
            assert!(svg.contains(n), "{kind}.svg does not name {n}");
        }
        assert!(svg.contains(kind), "{kind}.svg title names its kind");
    }
}

fn assert_fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn bad_input_fails_clearly_before_attaching() {
    require_root();
    let dir = out_dir("bad");
    let d = dir.to_str().unwrap();
    assert_fails(&record(&["-o", d, "--pid", "999999999"]), "no process with pid 999999999");

    let file = tmp().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("out");
    assert_fails(
        &record(&["-o", under_file.to_str().unwrap(), "--", "/bin/true"]),
        "cannot create output directory",
    );

    // A static binary with its symbols is probed in itself (tests/allocators.rs); stripped, it has
    // no allocator to probe.
    let static_exe = fixture_with("cc", "leaky", &["-static", "-s"]);
    assert_fails(&record(&["-o", d, "--", static_exe.to_str().unwrap()]), "no allocator found");
    let mut running = Command::new(&static_exe).arg("--wait").stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = record(&["-o", d, "--pid", &running.id().to_string()]);
    running.kill().unwrap();
    running.wait().unwrap();
    assert_fails(&out, "no allocator found");

    assert_fails(&record(&["-o", d, "--", "/nonexistent/program"]), "cannot run /nonexistent/program");

    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-o", d, "--pid", "1"])
        .env("PROFILER_BTF", "/nonexistent/btf")
        .output()
        .unwrap();
    assert_fails(&out, "no BTF");

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PROFILER, "record", "--pid", "1"])
        .output()
        .unwrap();
    assert_fails(&out, "must run as root");
}
