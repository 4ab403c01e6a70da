//! Allocator detection (as root): the same ground-truth leaks
//! (`tests/fixtures/allocleak.c`) exact per function whatever serves them:
//! jemalloc, tcmalloc and mimalloc (Debian's packages) linked and
//! preloaded, jemalloc linked statically into the executable and through its
//! own mallocx/sdallocx API, a static glibc binary; and a clear refusal
//! (the gate's exit 2) where no allocator can be probed.

mod common;

use std::{path::PathBuf, process::Command};

use common::{folded_by_leaf, fresh_dir, report_json, tmp, PROFILER};

const LIB: &str = "/usr/lib/x86_64-linux-gnu";
const LEAKS: [(&str, u64); 4] =
    [("leak_malloc", 3000), ("leak_calloc", 2000), ("leak_realloc", 5000), ("leak_memalign", 4096)];

/// Builds allocleak.c with `extra` compiler arguments (after the source: libraries).
fn build(name: &str, extra: &[&str]) -> PathBuf {
    let exe = tmp().join(format!("allocleak-{name}"));
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/allocleak.c");
    let st = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "building {name}");
    exe
}

fn require(lib: &str) -> bool {
    let present = std::path::Path::new(&format!("{LIB}/{lib}")).exists();
    assert!(present || std::env::var_os("CI").is_none(), "{lib} is missing: `cargo xtask test` installs it");
    present
}

/// Records `argv` with the alloc lens and checks every leak is exact, the
/// control shows nothing and the probes name `family`.
fn assert_exact(name: &str, argv: &[&str], family: &str, extra_leaks: &[(&str, u64)]) {
    let dir = fresh_dir(&format!("alloc-{name}"));
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc", "-q", "-o", dir.to_str().unwrap(), "--"])
        .args(argv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let heap = folded_by_leaf(&dir, "heap");
    for (f, bytes) in LEAKS.iter().chain(extra_leaks) {
        assert_eq!(heap.get(*f), Some(bytes), "{name}: heap bytes of {f}: {heap:?}");
    }
    let report = report_json(&dir);
    assert_eq!(common::through(&report, "heap", "control"), (0, 0), "{name}: the control frees everything");
    let attached = report["accuracy"]["probes_attached"].to_string();
    assert!(attached.contains(&format!("({family})")), "{name}: probes on {family}: {attached}");
}

#[test]
fn jemalloc_linked_preloaded_static_and_its_own_api() {
    if !require("libjemalloc.so.2") {
        return;
    }
    let linked = build("jemalloc", &["-DJEMALLOC_API", "-ljemalloc"]);
    assert_exact("jemalloc-linked", &[linked.to_str().unwrap()], "jemalloc", &[("leak_mallocx", 2000)]);
    let plain = build("plain", &[]);
    let preload = format!("LD_PRELOAD={LIB}/libjemalloc.so.2");
    assert_exact("jemalloc-preloaded", &["env", &preload, plain.to_str().unwrap()], "jemalloc", &[]);
    let statically =
        build("jemalloc-static", &["-DJEMALLOC_API", &format!("{LIB}/libjemalloc_pic.a"), "-lm", "-ldl"]);
    assert_exact("jemalloc-static", &[statically.to_str().unwrap()], "jemalloc", &[("leak_mallocx", 2000)]);
}

#[test]
fn tcmalloc_linked_and_preloaded() {
    if !require("libtcmalloc.so.4") {
        return;
    }
    let linked = build("tcmalloc", &["-ltcmalloc"]);
    assert_exact("tcmalloc-linked", &[linked.to_str().unwrap()], "tcmalloc", &[]);
    let plain = build("plain", &[]);
    let preload = format!("LD_PRELOAD={LIB}/libtcmalloc.so.4");
    assert_exact("tcmalloc-preloaded", &["env", &preload, plain.to_str().unwrap()], "tcmalloc", &[]);
}

#[test]
fn mimalloc_linked_and_preloaded() {
    if !require("libmimalloc.so.2") {
        return;
    }
    let linked = build("mimalloc", &["-lmimalloc"]);
    assert_exact("mimalloc-linked", &[linked.to_str().unwrap()], "mimalloc", &[]);
    let plain = build("plain", &[]);
    let preload = format!("LD_PRELOAD={LIB}/libmimalloc.so.2");
    assert_exact("mimalloc-preloaded", &["env", &preload, plain.to_str().unwrap()], "mimalloc", &[]);
}

#[test]
fn a_static_glibc_binary_is_probed_in_itself() {
    let exe = build("static", &["-static"]);
    assert_exact("static-glibc", &[exe.to_str().unwrap()], "allocator", &[]);
}

#[test]
fn no_probeable_allocator_is_refused_and_the_gate_exits_2() {
    let exe = build("static-stripped", &["-static", "-s"]);
    let dir = fresh_dir("alloc-none");
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc", "-q", "-o", dir.to_str().unwrap(), "--"])
        .arg(&exe)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no allocator found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gate = Command::new(PROFILER)
        .args(["gate", "--output", fresh_dir("alloc-none-gate").to_str().unwrap(), "--"])
        .arg(&exe)
        .output()
        .unwrap();
    assert_eq!(gate.status.code(), Some(2), "{}", String::from_utf8_lossy(&gate.stderr));
    assert!(String::from_utf8_lossy(&gate.stderr).contains("no allocator found"));
}
