//! Lenses compose, in every target mode (as root): each of the seven lens
//! sets, launched, attached with `--pid`, with `--pid --follow` and as a
//! `--cgroup`, on the ground-truth fixture `tests/fixtures/leaky.c`. Every
//! lens in a set must give exactly the numbers it gives alone, which are the
//! fixture's ground truth. Also: attaching to two threads that churn the
//! allocator (caught mid-call) loses neither thread's leaks, with one
//! profiler or two at once.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use common::{
    folded_by_leaf, fresh_dir, report_json, start_profiler, through, TestCgroup, LEAKY_HEAP_LEAKS, PROFILER,
};
use serde_json::Value;

const RESIDENT_PAGES: u64 = 40;
const SOCKET_LEAKS: [(&str, u64); 2] = [("leak_sockets", 3), ("leak_socketpair", 2)];

const LENS_SETS: [&str; 7] = [
    "alloc",
    "resident",
    "handles",
    "alloc,resident",
    "alloc,handles",
    "resident,handles",
    "alloc,resident,handles",
];

#[derive(Clone, Copy, Debug)]
enum Mode {
    Launch,
    Pid,
    PidFollow,
    Cgroup,
}

fn leaky() -> PathBuf {
    common::fixture("leaky")
}

/// Heap blocks per leaf function.
fn blocks_by_leaf(report: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "heap") {
        *out.entry(e["frames"][0]["function"].as_str().unwrap_or("").to_string()).or_default() +=
            e["count"].as_u64().unwrap();
    }
    out
}

/// Checks every lens of `lenses` against the ground truth; returns what differs.
fn check(dir: &Path, lenses: &str) -> Vec<String> {
    let report = report_json(dir);
    let mut wrong = Vec::new();
    let acc = &report["accuracy"];
    for counter in ["ringbuf_drops", "stack_failures", "scratch_busy", "missed_returns"] {
        if acc[counter] != 0 {
            wrong.push(format!("{counter} = {}", acc[counter]));
        }
    }
    if lenses.contains("alloc") {
        let heap = folded_by_leaf(dir, "heap");
        let blocks = blocks_by_leaf(&report);
        for (f, bytes, n) in LEAKY_HEAP_LEAKS {
            if heap.get(f) != Some(&bytes) || blocks.get(f) != Some(&n) {
                wrong.push(format!(
                    "heap {f}: {:?} B in {:?} blocks, want {bytes} in {n}",
                    heap.get(f),
                    blocks.get(f)
                ));
            }
        }
        if through(&report, "heap", "control_heap") != (0, 0) {
            wrong.push("heap: control_heap holds memory".into());
        }
    } else if report["totals"]["heap"]["count"] != 0 {
        wrong.push("heap blocks without the alloc lens".into());
    }
    if lenses.contains("resident") {
        let pages = through(&report, "resident", "touch_resident");
        if pages != (RESIDENT_PAGES * 4096, RESIDENT_PAGES) {
            wrong.push(format!("resident touch_resident: {pages:?}, want {RESIDENT_PAGES} pages"));
        }
        if report["accuracy"]["repeated_faults"] != 0 {
            wrong.push(format!("repeated page faults {}", report["accuracy"]["repeated_faults"]));
        }
    }
    if lenses.contains("handles") {
        let sockets = folded_by_leaf(dir, "sockets");
        for (f, n) in SOCKET_LEAKS {
            if sockets.get(f) != Some(&n) {
                wrong.push(format!("sockets {f}: {:?}, want {n}", sockets.get(f)));
            }
        }
        if through(&report, "sockets", "control_sockets") != (0, 0) {
            wrong.push("sockets: control_sockets holds sockets".into());
        }
    }
    if folded_by_leaf(dir, "mmap").get("leak_mmap") != Some(&(5 * 4096)) {
        wrong.push(format!("mmap leak_mmap: {:?}", folded_by_leaf(dir, "mmap").get("leak_mmap")));
    }
    wrong
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success());
}

fn read_line(out: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), want);
}

fn stop_profiler(mut p: Child, stderr: JoinHandle<String>) {
    signal(p.id(), "INT");
    let status = p.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "profiler failed: {stderr}");
}

/// One recording of `leaky` with `lenses` in `mode`; returns its output directory.
fn record(mode: Mode, lenses: &str) -> PathBuf {
    let dir = fresh_dir(&format!("compose-{mode:?}-{}", lenses.replace(',', "+")));
    let mut args: Vec<String> = ["--lens", lenses, "-q", "-o"].iter().map(|s| s.to_string()).collect();
    args.push(dir.display().to_string());
    if let Mode::Launch = mode {
        let out = Command::new(PROFILER).arg("record").args(&args).arg("--").arg(leaky()).output().unwrap();
        assert!(out.status.success(), "profiler failed: {}", String::from_utf8_lossy(&out.stderr));
        return dir;
    }
    let cgroup = matches!(mode, Mode::Cgroup).then(|| TestCgroup::new("compose"));
    let mut target = match &cgroup {
        Some(cg) => {
            let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" --wait", cg.0.display());
            Command::new("sh").args(["-c", &script]).arg(leaky()).stdout(Stdio::piped()).spawn().unwrap()
        }
        None => Command::new(leaky()).arg("--wait").stdout(Stdio::piped()).spawn().unwrap(),
    };
    let mut out = BufReader::new(target.stdout.take().unwrap());
    read_line(&mut out, "ready");
    match (&cgroup, mode) {
        (Some(cg), _) => args.extend(["--cgroup".to_string(), cg.0.display().to_string()]),
        (None, Mode::PidFollow) => args.extend(["--follow".into(), "--pid".into(), target.id().to_string()]),
        (None, _) => args.extend(["--pid".into(), target.id().to_string()]),
    }
    let (profiler, stderr) = start_profiler(&args);
    signal(target.id(), "USR1");
    read_line(&mut out, "leaked");
    std::thread::sleep(Duration::from_millis(300));
    stop_profiler(profiler, stderr);
    let _ = target.kill();
    let _ = target.wait();
    dir
}

fn every_lens_set_exact(mode: Mode) {
    let mut failures = Vec::new();
    for lenses in LENS_SETS {
        let dir = record(mode, lenses);
        for what in check(&dir, lenses) {
            failures.push(format!("{mode:?} --lens {lenses}: {what}"));
        }
    }
    assert!(failures.is_empty(), "lens sets that differ from the ground truth:\n{}", failures.join("\n"));
}

#[test]
fn every_lens_set_is_exact_when_launched() {
    every_lens_set_exact(Mode::Launch);
}

#[test]
fn every_lens_set_is_exact_attached_by_pid() {
    every_lens_set_exact(Mode::Pid);
}

#[test]
fn every_lens_set_is_exact_attached_by_pid_following_children() {
    every_lens_set_exact(Mode::PidFollow);
}

#[test]
fn every_lens_set_is_exact_on_a_cgroup() {
    every_lens_set_exact(Mode::Cgroup);
}

/// Attaches `profilers` profilers to the two-thread churn fixture, makes it
/// leak, and checks each profiler saw both threads' leaks exactly.
fn attach_to_churning_threads(run: usize, profilers: usize) -> Vec<String> {
    let exe = common::fixture("churn2");
    let mut target = Command::new(exe).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(target.stdout.take().unwrap());
    read_line(&mut out, "ready");
    let pid = target.id().to_string();
    let started: Vec<_> = (0..profilers)
        .map(|i| {
            let dir = fresh_dir(&format!("churn2-{run}-{i}"));
            let args: Vec<String> = ["--lens", "alloc", "-q", "-o", dir.to_str().unwrap(), "--pid", &pid]
                .iter()
                .map(|s| s.to_string())
                .collect();
            (dir, start_profiler(&args))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    signal(target.id(), "USR1");
    read_line(&mut out, "leaked");
    std::thread::sleep(Duration::from_millis(200));
    let mut wrong = Vec::new();
    for (i, (dir, (p, stderr))) in started.into_iter().enumerate() {
        stop_profiler(p, stderr);
        let report = report_json(&dir);
        let acc = &report["accuracy"];
        for (f, want) in [("leak_in_a", (100_000, 100)), ("leak_in_b", (300_000, 100))] {
            let got = through(&report, "heap", f);
            if got != want {
                wrong.push(format!(
                    "run {run}, profiler {i} of {profilers}: {f} {got:?}, want {want:?} (ring drops {}, missed returns {}, nested {})",
                    acc["ringbuf_drops"], acc["missed_returns"], acc["nested_calls"]
                ));
            }
        }
        let churn = through(&report, "heap", "churn");
        if churn.1 > 2 {
            wrong.push(format!(
                "run {run}, profiler {i}: {} churn blocks outstanding (at most one per thread)",
                churn.1
            ));
        }
    }
    let _ = target.kill();
    let _ = target.wait();
    wrong
}

#[test]
fn attaching_to_threads_inside_allocator_calls_loses_no_thread() {
    let mut wrong = Vec::new();
    for run in 0..10 {
        wrong.extend(attach_to_churning_threads(run, 1));
    }
    wrong.extend(attach_to_churning_threads(10, 2));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `forker N` under `ulimit -n 1024`: the report is complete, exited children
/// hold nothing, and the profiler's memory does not grow with N.
fn fork_children(n: usize) -> Value {
    let dir = fresh_dir(&format!("forker-{n}"));
    let script = format!(
        "ulimit -n 1024 && exec {} record --lens alloc,handles -q -o {} -- {} {n}",
        PROFILER,
        dir.display(),
        common::fixture("forker").display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{n} children: {}", String::from_utf8_lossy(&out.stderr));
    let report = report_json(&dir);
    assert_eq!(through(&report, "heap", "parent_leak"), (500, 1), "{n} children");
    assert_eq!(through(&report, "heap", "child_work"), (0, 0), "{n} children: exited processes hold nothing");
    report
}

#[test]
fn five_hundred_short_lived_children_under_ulimit_1024() {
    let peak = |r: &Value| r["accuracy"]["profiler_cost"]["peak_rss_bytes"].as_u64().unwrap();
    let (few, many) = (fork_children(50), fork_children(500));
    let grown = peak(&many).saturating_sub(peak(&few));
    assert!(grown < 16 << 20, "profiler memory grew {} MiB from 50 to 500 children", grown >> 20);
}

const FORKLEAK_FUNCTIONS: [&str; 7] = [
    "before_fork_a",
    "before_fork_b",
    "parent_thread",
    "parent_after_fork",
    "child_first",
    "child_thread",
    "child_after_parent_exit",
];

/// (bytes, blocks) on the heap per leaking function of `forkleak.c`, in the
/// stacks of process `pid` (or of every other process when `others`).
fn heap_by_function(report: &Value, pid: u64, others: bool) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in report["stacks"].as_array().unwrap() {
        if e["kind"] != "heap" || (e["pid"].as_u64() == Some(pid)) == others {
            continue;
        }
        let leaf = e["frames"][0]["function"].as_str().unwrap_or("?").to_string();
        if !FORKLEAK_FUNCTIONS.contains(&leaf.as_str()) {
            continue; // the C library's own (thread descriptors)
        }
        let v = out.entry(leaf).or_default();
        v.0 += e["bytes"].as_u64().unwrap();
        v.1 += e["count"].as_u64().unwrap();
    }
    out
}

/// A child outliving its launched parent is recorded until it exits (the
/// recording ends with it, not with the parent), and holds the blocks it
/// inherited at the fork as well as its own: exact per process.
#[test]
fn a_child_outliving_its_parent_is_recorded_to_its_exit_with_inherited_blocks() {
    let dir = fresh_dir("forkleak");
    common::record_launch(&dir, &common::fixture("forkleak"), &[]);
    let report = report_json(&dir);
    let parent = report["target"]["pid"].as_u64().unwrap();
    let expect = |pairs: &[(&str, u64)]| -> BTreeMap<String, (u64, u64)> {
        pairs.iter().map(|(f, b)| (f.to_string(), (*b, 1))).collect()
    };
    let inherited = [("before_fork_a", 10001), ("parent_thread", 20001), ("before_fork_b", 10002)];
    let mut parent_leaks = expect(&inherited);
    parent_leaks.extend(expect(&[("parent_after_fork", 10003)]));
    let mut child_leaks = expect(&inherited);
    child_leaks.extend(expect(&[
        ("child_first", 30000),
        ("child_thread", 20002),
        ("child_after_parent_exit", 30001),
    ]));
    assert_eq!(heap_by_function(&report, parent, false), parent_leaks, "the parent, at its exit");
    assert_eq!(
        heap_by_function(&report, parent, true),
        child_leaks,
        "the child, at its exit after the parent's"
    );
    let end = report["end_reason"].as_str().unwrap();
    assert!(end.starts_with("last process of the tree exited (pid "), "{end}");
    assert!(end.contains(&format!("the launched process {parent} ended earlier, exit code 0")), "{end}");
    assert_eq!(report["target_exit"]["code"], 0);
    // Each thread's exit hands glibc's thread cache back with frees of its own.
    let accuracy = &report["accuracy"];
    assert_eq!(accuracy["unknown_frees"], 0, "the C library's own frees are not the program's");
    assert!(accuracy["c_library_frees"].as_u64().unwrap() >= 2, "{}", accuracy["c_library_frees"]);
}

/// A launched program returning from main while its threads still run: the
/// tracer lets every exiting thread go in the order the kernel reports them
/// (it used to wait for the zombie leader first and hang), and the report
/// is complete, within seconds.
#[test]
fn a_program_exiting_with_running_threads_ends_the_recording_promptly() {
    let dir = fresh_dir("threadexit");
    let mut p = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(common::fixture("threadexit"))
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = p.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = p.kill();
            panic!("the profiler did not exit within 20 s of a program exiting with running threads");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let report = report_json(&dir);
    assert_eq!(through(&report, "heap", "leak_at_exit"), (777, 1));
    assert_eq!(report["target_exit"]["code"], 0);
}
