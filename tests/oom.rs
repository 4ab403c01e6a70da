//! A target killed by the OOM killer inside a memory cgroup with a small
//! limit (v1 on hybrid machines, v2 `memory.max` where that is the layout)
//! leaves a complete report that says it was OOM-killed, with the growing
//! function and the limit it ran into.

mod common;

use std::{path::PathBuf, process::Command};

use common::PROFILER;
use profiler::process::cgroup::CgroupMounts;
const LIMIT: u64 = 64 << 20;

/// A memory cgroup with the limit set, and the file a process writes its pid
/// to to join it; removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    join_file: &'static str,
}

impl MemoryCgroup {
    fn new() -> Option<Self> {
        let mounts = CgroupMounts::read().ok()?;
        let name = format!("leakprof-oom-{}", std::process::id());
        if let Some(v1) = mounts.v1_memory {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::write(dir.join("memory.limit_in_bytes"), LIMIT.to_string()).ok()?;
            return Some(Self { dir, join_file: "tasks" });
        }
        let v2 = mounts.v2?;
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
        let dir = v2.join(name);
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("memory.max"), LIMIT.to_string()).ok()?;
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Some(Self { dir, join_file: "cgroup.procs" })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn oom_killed_target_leaves_a_complete_report_saying_so() {
    let Some(cgroup) = MemoryCgroup::new() else {
        eprintln!("SKIPPED oom_killed_target_leaves_a_complete_report_saying_so: no memory cgroup controller available");
        return;
    };
    let exe = common::fixture("oomer");
    let dir = common::fresh_dir("oom-report");
    // The shell joins the cgroup, then becomes the fixture: only it is limited.
    let script = format!("echo $$ > {}/{} && exec \"$0\"", cgroup.dir.display(), cgroup.join_file);
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "--interval", "0.05", "--snapshot-at", "16M", "-o"])
        .arg(&dir)
        .args(["--", "sh", "-c", &script])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let reason = report["end_reason"].as_str().unwrap();
    assert!(reason.contains("OOM-killed"), "end reason: {reason}");
    let grow = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "heap" && e["frames"][0]["function"] == "grow_forever")
        .expect("the growing function is in the report");
    assert!(
        grow["bytes"].as_u64().unwrap() >= 32 << 20,
        "most of the limit was leaked by it: {}",
        grow["bytes"]
    );
    assert_eq!(report["status"]["limit_bytes"], LIMIT, "the cgroup's limit is known: {}", report["status"]);
    assert!(dir.join("heap.svg").exists());
    let snapshot = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("snapshot-001"));
    let snapshot = snapshot.expect("a snapshot at 16 MiB").path();
    assert!(snapshot.join("report.json").exists() && snapshot.join("heap.folded").exists());
}

#[test]
fn sigkilled_target_leaves_a_complete_report_saying_so() {
    let dir = common::fresh_dir("sigkill-report");
    let mut profiler = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "-o"])
        .arg(&dir)
        .args(["--", "sleep", "30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(profiler.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.starts_with("profiling pid"), "{line}");
    let pid: String = line["profiling pid ".len()..].chars().take_while(char::is_ascii_digit).collect();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["end_reason"], "target exited (killed by SIGKILL)");
}
