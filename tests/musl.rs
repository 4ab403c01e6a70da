//! A musl-linked fixture (`tests/fixtures/muslleak.c`, built with Debian's
//! musl-gcc) is profiled with exact heap numbers: musl's loader is its C
//! library, found and probed like glibc. When musl-gcc cannot be had (`cargo
//! xtask test` installs musl-tools where it can), the test says so loudly.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

const PROFILER: &str = env!("CARGO_BIN_EXE_profiler");

#[test]
fn musl_program_heap_is_attributed_exactly() {
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        eprintln!("SKIPPED musl_program_heap_is_attributed_exactly: musl-gcc is not installed (apt-get install musl-tools)");
        println!("SKIPPED: musl-gcc not available");
        return;
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = tmp.join("muslleak");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/muslleak.c");
    let st = Command::new("musl-gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o"])
        .arg(&exe)
        .arg(src)
        .status()
        .unwrap();
    assert!(st.success());
    let dir = tmp.join("musl");
    let _ = std::fs::remove_dir_all(&dir);
    let out =
        Command::new(PROFILER).args(["record", "-q", "-o"]).arg(&dir).arg("--").arg(&exe).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

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
