//! A musl-linked fixture (`tests/fixtures/muslleak.c`, built with Debian's
//! musl-gcc) is profiled with exact heap numbers: musl's loader is its C
//! library, found and probed like glibc. When musl-gcc cannot be had (`cargo
//! xtask test` installs musl-tools where it can), the test says so loudly.

mod common;

use std::{collections::BTreeMap, process::Command};

#[test]
fn musl_program_heap_is_attributed_exactly() {
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        eprintln!("SKIPPED musl_program_heap_is_attributed_exactly: musl-gcc is not installed (apt-get install musl-tools)");
        println!("SKIPPED: musl-gcc not available");
        return;
    }
    let exe = common::fixture_with("musl-gcc", "muslleak", &[]);
    let dir = common::fresh_dir("musl");
    common::record_launch(&dir, &exe, &[]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert!(report["target"]["libc"].as_str().unwrap().contains("musl"), "{}", report["target"]);
    let mut heap: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "heap") {
        let leaf = e["frames"][0]["function"].as_str().unwrap_or("").to_string();
        let v = heap.entry(leaf).or_default();
        v.0 += e["bytes"].as_u64().unwrap();
        v.1 += e["count"].as_u64().unwrap();
    }
    let expected = [
        ("musl_malloc", (3000, 3)),
        ("musl_calloc", (2000, 2)),
        ("musl_realloc", (5000, 1)),
        ("musl_posix_memalign", (4096, 1)),
        ("musl_aligned_alloc", (2560, 1)),
    ];
    for (f, want) in expected {
        assert_eq!(heap.get(f), Some(&want), "{f}: {heap:?}");
    }
    assert!(!heap.contains_key("musl_control"), "{heap:?}");
}
