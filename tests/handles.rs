//! End-to-end tests of handle tracking and process-tree following on
//! `tests/fixtures/fdtree.c` (as root): exact open fds per function for every
//! kind, dup chains, close_range, fork inheritance, close-on-exec at exec,
//! and a fork+exec child image.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use common::folded_by_leaf as by_leaf;

fn fixture() -> PathBuf {
    common::fixture("fdtree")
}

fn record() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fresh_dir("handles");
        common::record_launch(&dir, &fixture(), &[]);
        dir
    })
    .clone()
}

fn expect(dir: &Path, kind: &str, expected: &[(&str, u64)]) {
    let got = by_leaf(dir, kind);
    let want: BTreeMap<String, u64> = expected.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert_eq!(got, want, "{kind}.folded by function");
}

#[test]
fn every_handle_kind_is_attributed_exactly() {
    let dir = record();
    expect(
        &dir,
        "sockets",
        &[
            ("leak_tcp", 2),
            ("leak_udp", 1),
            ("leak_unix", 2),
            ("leak_accept", 1),
            // socket, dup, dup2 over an open file, F_DUPFD, dup3; the original closed.
            ("leak_dup_chain", 4),
            // Open in the parent and, inherited, in the child (no close-on-exec).
            ("open_before_fork", 2),
        ],
    );
    expect(
        &dir,
        "files",
        &[
            ("leak_open", 2),
            ("leak_openat", 1),
            ("leak_openat2", 1),
            ("leak_creat", 1),
            ("leak_memfd", 1),
            // The forked child's fd without close-on-exec survives its exec.
            ("child_open_plain", 1),
            // Opened by the exec'd child image.
            ("child_image_leak", 1),
        ],
    );
    expect(&dir, "pipes", &[("leak_pipes", 4)]);
    expect(&dir, "events", &[("leak_events", 7)]);
}

#[test]
fn controls_dup_targets_and_cloexec_fds_are_not_leaks() {
    let dir = record();
    for kind in ["sockets", "files", "pipes", "events"] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.folded"))).unwrap_or_default();
        for f in [
            "control_fds",
            "control_close_range",
            "victim_open",
            "child_open_cloexec",
            "child_mark_range_cloexec",
        ] {
            assert!(!text.contains(f), "{f} in {kind}.folded:\n{text}");
        }
    }
}

#[test]
fn handle_types_and_pre_existing_fds_are_reported() {
    let dir = record();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let handles = &report["handles"];
    let open = |kind: &str, detail: &str| handles[kind][detail]["open"].as_u64().unwrap_or(0);
    assert_eq!(open("sockets", "tcp"), 5, "{handles}");
    assert_eq!(open("sockets", "udp"), 1);
    assert_eq!(open("sockets", "unix"), 6);
    assert_eq!(open("files", "memfd"), 1);
    for event in ["eventfd", "timerfd", "signalfd", "epoll", "inotify", "pidfd", "io_uring"] {
        assert_eq!(open("events", event), 1, "{event}");
    }
    let pre_existing: u64 = handles
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d.as_object().unwrap().values())
        .map(|c| c["pre_existing"].as_u64().unwrap())
        .sum();
    assert!(pre_existing >= 3, "stdin, stdout and stderr are pre-existing: {handles}");
    let acc = &report["accuracy"];
    assert_eq!(acc["unknown_dups"], 0);
    assert_eq!(acc["reused_fds"], 0);
}

#[test]
fn fork_exec_child_is_followed_and_its_old_image_forgotten() {
    let dir = record();
    let heap = by_leaf(&dir, "heap");
    assert_eq!(heap.get("child_image_leak"), Some(&1234), "{heap:?}");
    assert!(
        !heap.contains_key("child_heap_before_exec"),
        "the pre-exec heap belongs to the old image: {heap:?}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let child = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["frames"][0]["function"] == "child_image_leak" && e["kind"] == "heap")
        .expect("child's heap entry");
    assert_ne!(child["pid"], report["target"]["pid"], "the child's entry carries the child's pid");
    assert!(child["command"].as_str().unwrap().contains("--child"), "{}", child["command"]);
}
