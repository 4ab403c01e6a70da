//! Complete stacks on code built the way distributions build it (`-O2`, no
//! frame pointers), on C++ and Rust release builds and on a Debian package
//! run as shipped: the kernel walks call-frame tables, so every leak is
//! charged to the function that made it, with `main` below it; a stack that
//! stops short says so in the stack and in the accuracy counters.

mod common;

use std::{
    io::Write,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    built_fixture, folded_by_leaf, fresh_dir, record_launch, report_json, stacks_through, start_profiler,
    through, LEAKY_HEAP_LEAKS, PROFILER,
};

const NO_FRAME_POINTERS: &str = "-fomit-frame-pointer";

/// Every stack through `function` reaches `main` (and the program's entry).
fn assert_reaches_main(report: &serde_json::Value, kind: &str, function: &str) {
    let stacks = stacks_through(report, kind, function);
    assert!(!stacks.is_empty(), "no {kind} stack through {function}");
    for s in stacks {
        assert!(s.iter().any(|n| n == "main"), "{function}'s stack does not reach main: {s:?}");
        assert!(s.last().is_some_and(|n| n == "_start"), "{function}'s stack does not end at _start: {s:?}");
    }
}

fn incomplete(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["accuracy"]["incomplete_stacks"].as_array().cloned().unwrap_or_default()
}

fn leaky_at(flags: &[&str], name: &str) {
    let exe = built_fixture("cc", "leaky.c", flags);
    let dir = fresh_dir(name);
    record_launch(&dir, &exe, &[]);
    assert_leaky_ground_truth(&dir);
}

fn assert_leaky_ground_truth(dir: &Path) {
    let report = report_json(dir);
    let heap = folded_by_leaf(dir, "heap");
    for (f, bytes, n) in LEAKY_HEAP_LEAKS {
        assert_eq!(through(&report, "heap", f), (bytes, n), "heap through {f}; heap.folded: {heap:?}");
        assert_eq!(heap.get(f), Some(&bytes), "{f} is the leaf of its leak; heap.folded: {heap:?}");
        if f != "thread_main" {
            assert_reaches_main(&report, "heap", f);
        }
    }
    assert_eq!(through(&report, "heap", "control_heap"), (0, 0));
    assert_eq!(incomplete(&report), Vec::<serde_json::Value>::new(), "every stack complete");
}

#[test]
fn distribution_build_with_debug_info_has_complete_stacks() {
    leaky_at(&["-O2", "-g", NO_FRAME_POINTERS, "-pthread"], "unwind-leaky-O2-g");
}

#[test]
fn distribution_build_without_debug_info_has_complete_stacks() {
    leaky_at(&["-O2", NO_FRAME_POINTERS, "-pthread"], "unwind-leaky-O2");
}

/// Attached by pid to a running -O2 program: its tables are loaded before
/// the probes, so the first event's stack is already complete.
#[test]
fn attached_by_pid_to_a_distribution_build_stacks_are_complete() {
    let exe = built_fixture("cc", "leaky.c", &["-O2", "-g", NO_FRAME_POINTERS, "-pthread"]);
    let mut target = Command::new(&exe).arg("--wait").stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let dir = fresh_dir("unwind-leaky-O2-pid");
    let pid = target.id().to_string();
    let (mut profiler, stderr) = start_profiler(&[
        "--lens",
        "alloc,resident,handles",
        "-q",
        "-o",
        dir.to_str().unwrap(),
        "--pid",
        &pid,
    ]);
    assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    let status = profiler.wait().unwrap();
    let _ = target.kill();
    let _ = target.wait();
    assert!(status.success(), "{}", stderr.join().unwrap());
    assert_leaky_ground_truth(&dir);
    // The resident and syscall stacks of the same build are complete too.
    let report = report_json(&dir);
    for kind in ["resident", "mmap", "sockets"] {
        let stacks = stacks_through(&report, kind, "main");
        assert!(!stacks.is_empty(), "no {kind} stack reaches main");
    }
}

fn helpers() -> PathBuf {
    built_fixture("cc", "helpers.c", &["-O2", "-g", NO_FRAME_POINTERS])
}

#[test]
fn leaks_through_libc_helpers_stay_with_their_caller() {
    let dir = fresh_dir("unwind-helpers");
    record_launch(&dir, &helpers(), &[]);
    let report = report_json(&dir);
    for (function, bytes, blocks) in [
        ("leak_strdup", 33, 3),
        ("leak_getline", 120, 1),
        ("leak_asprintf", 8, 1),
        ("leak_fopen", 472, 1),
        ("leak_qsort", 16, 1),
        ("leak_xmalloc", 600, 2),
    ] {
        assert_eq!(through(&report, "heap", function), (bytes, blocks), "heap through {function}");
        assert_reaches_main(&report, "heap", function);
    }
    let heap = folded_by_leaf(&dir, "heap");
    assert_eq!(heap.get("compare_and_leak"), Some(&16), "the qsort comparator is the leaf: {heap:?}");
    assert_eq!(heap.get("xmalloc"), Some(&600), "the wrapper is the leaf: {heap:?}");
    assert_eq!(folded_by_leaf(&dir, "files").get("leak_fopen"), Some(&1), "fopen's fd under its caller");
}

/// Code built without unwind tables has its call-frame information only in
/// `.debug_frame`, which a distribution splits into a debug file found by
/// `.gnu_debuglink`: both give complete stacks, and without the debug file
/// the stack is marked, not silently short.
#[test]
fn debug_frame_and_split_debug_files_give_complete_stacks() {
    let flags = ["-O2", "-g", NO_FRAME_POINTERS, "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"];
    let exe = built_fixture("cc", "helpers.c", &flags);
    let run = |exe: &Path, name: &str| {
        let dir = fresh_dir(name);
        record_launch(&dir, exe, &["strdup"]);
        report_json(&dir)
    };
    let report = run(&exe, "unwind-debug-frame");
    assert_eq!(through(&report, "heap", "leak_strdup"), (33, 3));
    assert_reaches_main(&report, "heap", "leak_strdup");

    let split = fresh_dir("unwind-split");
    std::fs::create_dir_all(&split).unwrap();
    let stripped = split.join("helpers");
    std::fs::copy(&exe, &stripped).unwrap();
    let objcopy = |args: &[&str]| {
        assert!(
            Command::new("objcopy").args(args).arg(&stripped).status().unwrap().success(),
            "objcopy {args:?}"
        );
    };
    let debug = split.join("helpers.debug");
    objcopy(&["--only-keep-debug"]);
    std::fs::rename(&stripped, &debug).unwrap();
    std::fs::copy(&exe, &stripped).unwrap();
    objcopy(&["--strip-debug", "--add-gnu-debuglink", debug.to_str().unwrap()]);
    let report = run(&stripped, "unwind-split-out");
    assert_eq!(through(&report, "heap", "leak_strdup"), (33, 3));
    assert_reaches_main(&report, "heap", "leak_strdup");

    std::fs::remove_file(&debug).unwrap();
    let report = run(&stripped, "unwind-split-missing");
    let stacks = stacks_through(&report, "heap", "leak_strdup");
    assert!(
        stacks.iter().all(|s| s.last().is_some_and(|f| f.starts_with("[unwind failed"))),
        "without its debug file the stack is marked: {stacks:?}"
    );
    assert!(!incomplete(&report).is_empty(), "and counted");
}

/// 300 frames: the walk stops at 256, and the stack and the counters say so.
#[test]
fn a_stack_deeper_than_the_walker_is_marked_and_counted() {
    let dir = fresh_dir("unwind-deep");
    record_launch(&dir, &helpers(), &["deep"]);
    let report = report_json(&dir);
    let stacks = stacks_through(&report, "heap", "recurse");
    assert_eq!(stacks.len(), 1, "{stacks:?}");
    let s = &stacks[0];
    assert_eq!(s.len(), 257, "256 frames and the marker");
    assert!(s.last().unwrap().starts_with("[truncated: deeper than 256 frames]"), "{:?}", s.last());
    assert_eq!(through(&report, "heap", "recurse"), (777, 1));
    let cuts = incomplete(&report);
    assert!(
        cuts.iter().any(|c| c["reason"].as_str().unwrap().starts_with("[truncated")
            && c["captured_at"] == "allocator"
            && c["events"] == 1),
        "{cuts:?}"
    );
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    // The heap block and the brk calls its malloc made, all under recurse.
    assert!(
        text.lines().any(|l| l.starts_with("INCOMPLETE: ") && l.contains("stacks cut short")),
        "headline: {text}"
    );
}

#[test]
fn cpp_allocations_are_charged_to_the_function_that_calls_new() {
    let exe = built_fixture("g++", "cxxleak.cpp", &["-O2", "-g", NO_FRAME_POINTERS]);
    let dir = fresh_dir("unwind-cxx");
    record_launch(&dir, &exe, &[]);
    let report = report_json(&dir);
    for (function, bytes, blocks) in [
        ("make_array()", 100, 1),
        ("make_object()", 48, 1),
        ("make_string()", 32 + 101, 2),
        ("grow_vector()", 24 + 512, 2),
        ("fill_map()", 48 + 10 * 40, 11),
    ] {
        assert_eq!(through(&report, "heap", function), (bytes, blocks), "heap through {function}");
        assert_reaches_main(&report, "heap", function);
    }
    assert_eq!(through(&report, "heap", "control()"), (0, 0));
    assert_eq!(incomplete(&report), Vec::<serde_json::Value>::new());
}

/// cargo's release profile: opt-level 3, no frame pointers, no debug info.
#[test]
fn rust_release_build_has_the_full_chain_from_main() {
    let exe = built_fixture("rustc", "rustleak.rs", &["-C", "opt-level=3"]);
    let dir = fresh_dir("unwind-rust");
    record_launch(&dir, &exe, &[]);
    let report = report_json(&dir);
    for function in ["rustleak::leak_box_leak", "rustleak::leak_vec_forget"] {
        assert_eq!(through(&report, "heap", function), (4096, 1), "heap through {function}");
        assert_reaches_main(&report, "heap", function);
        for s in stacks_through(&report, "heap", function) {
            assert!(s.iter().any(|n| n.starts_with("std::rt::lang_start")), "std's frames kept: {s:?}");
        }
    }
    assert_eq!(incomplete(&report), Vec::<serde_json::Value>::new());
}

/// Debian's sqlite3 as shipped (-O2, no frame pointers, its library
/// stripped): while it holds an in-memory table, the table's memory is
/// under `sqlite3_step`, as memcheck shows it.
#[test]
fn debian_sqlite3_stacks_reach_sqlite3_step() {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("SKIPPED: sqlite3 is not installed (cargo xtask test installs it)");
        return;
    }
    let dir = fresh_dir("unwind-sqlite3");
    let mut profiler = Command::new(PROFILER)
        .args(["record", "--lens", "alloc", "-q", "--duration", "3", "-o"])
        .arg(&dir)
        .args(["--", "sqlite3", ":memory:"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = profiler.stdin.take().unwrap();
    stdin
        .write_all(
            b"CREATE TABLE t(x);\n\
              WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<20000)\n\
              INSERT INTO t SELECT randomblob(100) FROM c;\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    // The report is taken while sqlite3 waits for more input, holding the table.
    let status = profiler.wait().unwrap();
    drop(stdin);
    assert!(status.success());
    let report = report_json(&dir);
    let (bytes, _) = through(&report, "heap", "sqlite3_step");
    assert!(bytes > 1 << 20, "heap under sqlite3_step: {bytes} B");
    // The executable is stripped (main is unnamed): the stack goes on
    // through it to the C library's start-up code that called main.
    for s in stacks_through(&report, "heap", "sqlite3_step") {
        assert!(s.iter().any(|n| n == "__libc_start_call_main"), "stack stops short: {s:?}");
    }
}

fn gate(program: &Path, args: &[&str], name: &str) -> std::process::Output {
    let dir = fresh_dir(name);
    Command::new(PROFILER)
        .args(["gate", "--output"])
        .arg(&dir)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap()
}

/// Zero configuration: libstdc++'s emergency pool and glibc's one-time
/// structures are the runtime's; a strdup made by the program is its leak.
#[test]
fn gate_passes_a_clean_cpp_program_and_fails_a_strdup_leak() {
    let cxx = built_fixture("g++", "cxxleak.cpp", &["-O2", "-g", NO_FRAME_POINTERS]);
    let clean = gate(&cxx, &["--clean"], "unwind-gate-cxx");
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stdout));
    let leak = gate(&helpers(), &["strdup"], "unwind-gate-strdup");
    let out = String::from_utf8_lossy(&leak.stdout);
    assert_eq!(leak.status.code(), Some(1), "{out}");
    assert!(out.contains("leak_strdup"), "the failing stack names the caller: {out}");
}

/// The gate's failing stacks start at the program's own frame: the C++ and
/// Rust standard-library frames at their allocating end are collapsed, and
/// Rust's own start-up allocations (before the program's main) are runtime.
#[test]
fn gate_shows_the_programs_frame_first_for_cpp_and_rust_leaks() {
    let cxx = built_fixture("g++", "cxxleak.cpp", &["-O2", "-g", NO_FRAME_POINTERS]);
    let out = gate(&cxx, &[], "unwind-gate-cxx-leak");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for user in ["grow_vector()", "fill_map()", "make_string()"] {
        assert!(text.contains(&format!("library frames] <- {user}")), "{user} shown first: {text}");
    }
    let rust = built_fixture("rustc", "unrolled.rs", &["-C", "opt-level=3", "-g"]);
    let out = gate(&rust, &[], "unwind-gate-rust");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("library frames] <- unrolled::leak_unrolled"), "{text}");
    let decision: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::tmp().join("unwind-gate-rust/gate.json")).unwrap())
            .unwrap();
    let heap = decision["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("heap"))
        .unwrap();
    assert_eq!(heap["actual"], 40 * 65536, "only the program's leak, not std's start-up: {heap:#}");
}
