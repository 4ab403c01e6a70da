//! Helpers shared by the end-to-end tests: building C fixtures, fresh
//! output directories, reading reports.
#![allow(dead_code)] // each test crate uses a different subset

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

pub const PROFILER: &str = env!("CARGO_BIN_EXE_profiler");

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Builds `tests/fixtures/<name>.c` once per test binary, with frame
/// pointers and debug info, using `compiler` (`cc`, `musl-gcc`).
pub fn fixture_with(compiler: &str, name: &str, extra: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let key = format!("{compiler} {name} {}", extra.join(" "));
    let mut built = BUILT.lock().unwrap();
    if let Some(exe) = built.get_or_insert_with(HashMap::new).get(&key) {
        return exe.clone();
    }
    let suffix: String = extra.iter().map(|a| a.trim_start_matches('-')).collect::<Vec<_>>().join("-");
    let exe =
        tmp().join(format!("bin-{compiler}-{name}{}{suffix}", if suffix.is_empty() { "" } else { "-" }));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{name}.c"));
    let status = Command::new(compiler)
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-pthread"])
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "compiling {}", src.display());
    built.as_mut().unwrap().insert(key, exe.clone());
    exe
}

pub fn fixture(name: &str) -> PathBuf {
    fixture_with("cc", name, &[])
}

/// An empty output directory under the test temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = tmp().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn report_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json")).expect("valid JSON")
}

/// `profiler record -q -o DIR -- program args`, which must succeed.
pub fn record_launch(dir: &Path, program: &Path, args: &[&str]) {
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "-o"])
        .arg(dir)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "profiler failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sums a folded file by leaf function.
pub fn folded_by_leaf(dir: &Path, kind: &str) -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string(dir.join(format!("{kind}.folded"))).unwrap_or_default();
    let mut sums = std::collections::BTreeMap::new();
    for line in text.lines() {
        let (stack, value) = line.rsplit_once(' ').expect("folded line has a value");
        *sums.entry(stack.rsplit(';').next().unwrap().to_string()).or_default() +=
            value.parse::<u64>().expect("numeric");
    }
    sums
}
