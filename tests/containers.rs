//! End-to-end tests of cgroup and container targeting (as root): a cgroup v2
//! directory made under the v2 mount found at run time, two leaking
//! processes inside it (one started after recording began) reported exactly,
//! one outside not at all; and the errors for bad cgroup / container input.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use common::{TestCgroup, PROFILER};
use profiler::process::cgroup::CgroupMounts;

fn leaky() -> PathBuf {
    common::fixture("leaky")
}

fn leak(child: &Child, out: &mut BufReader<ChildStdout>) {
    assert!(Command::new("kill").args(["-USR1", &child.id().to_string()]).status().unwrap().success());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
}

/// (pid, leaf function) -> bytes or handles, for one kind.
fn by_pid_and_leaf(report: &serde_json::Value, kind: &str) -> BTreeMap<(u64, String), u64> {
    let mut out = BTreeMap::new();
    for e in report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == kind) {
        let leaf = e["frames"][0]["function"].as_str().unwrap_or("").to_string();
        let value =
            if kind == "sockets" { e["count"].as_u64().unwrap() } else { e["bytes"].as_u64().unwrap() };
        *out.entry((e["pid"].as_u64().unwrap(), leaf)).or_default() += value;
    }
    out
}

#[test]
fn cgroup_processes_inside_are_reported_exactly_and_outside_not_at_all() {
    let cgroup = TestCgroup::new("leakprof-test");
    let dir = common::fresh_dir("cgroup-report");

    let (mut early, mut early_out) = cgroup.start_waiting();
    let mut profiler = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "-o"])
        .arg(&dir)
        .arg("--cgroup")
        .arg(&cgroup.0)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(profiler.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("profiling"), "{line}");

    // Started after recording began; and one outside the cgroup.
    let (mut late, mut late_out) = cgroup.start_waiting();
    let mut outside = Command::new(leaky()).arg("--wait").stdout(Stdio::piped()).spawn().unwrap();
    let mut outside_out = BufReader::new(outside.stdout.take().unwrap());
    let mut ready = String::new();
    outside_out.read_line(&mut ready).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // let the periodic scan see the late process
    leak(&early, &mut early_out);
    leak(&late, &mut late_out);
    leak(&outside, &mut outside_out);
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    let status = profiler.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert!(status.success(), "{rest}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let heap = by_pid_and_leaf(&report, "heap");
    let sockets = by_pid_and_leaf(&report, "sockets");
    for child in [&early, &late] {
        let pid = child.id() as u64;
        for (f, bytes) in
            [("leak_malloc", 3000), ("leak_calloc", 2000), ("leak_pvalloc", 8192), ("thread_main", 2048)]
        {
            assert_eq!(heap.get(&(pid, f.to_string())), Some(&bytes), "pid {pid} {f}: {heap:?}");
        }
        assert_eq!(sockets.get(&(pid, "leak_sockets".to_string())), Some(&3), "pid {pid}: {sockets:?}");
    }
    let outside_pid = outside.id() as u64;
    assert!(
        report["stacks"].as_array().unwrap().iter().all(|e| e["pid"] != outside_pid),
        "the process outside the cgroup must not appear"
    );
    assert_eq!(report["target"]["mode"], "cgroup");
    let memory = &report["cgroup"]["memory"];
    assert!(memory["usage"].as_u64().unwrap() > 0, "memory controller read: {}", report["cgroup"]);
    for c in [&mut early, &mut late, &mut outside] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Records an empty cgroup while `exec_leaky` (a shell command ending in an
/// exec of `leaky --stay`, with the program as `$0`) is started in it; once
/// the program says it leaked, stops the recording. Returns the report, the
/// program's pid and the profiler's stderr. The leak comes at once, long
/// before the periodic cgroup scan can find the process.
fn record_started_in_empty_cgroup(
    name: &str,
    exec_leaky: &str,
    program: &std::path::Path,
) -> (serde_json::Value, u64, String) {
    let cgroup = TestCgroup::new(&format!("leakprof-{name}"));
    let dir = common::fresh_dir(&format!("cgroup-{name}"));
    let (mut profiler, stderr) = common::start_profiler(&[
        "--lens",
        "alloc,handles",
        "-q",
        "-o",
        dir.to_str().unwrap(),
        "--cgroup",
        cgroup.0.to_str().unwrap(),
    ]);
    let script = format!("echo $$ > {}/cgroup.procs && {exec_leaky}", cgroup.0.display());
    let mut child =
        Command::new("sh").args(["-c", &script]).arg(program).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    let stderr = stderr.join().unwrap();
    assert!(profiler.wait().unwrap().success(), "{stderr}");
    let _ = child.kill();
    let _ = child.wait();
    (common::report_json(&dir), child.id() as u64, stderr)
}

/// Every leak of `leaky.c`, exact, in process `pid`.
fn assert_leaky_exact(report: &serde_json::Value, pid: u64) {
    let heap = by_pid_and_leaf(report, "heap");
    for (f, bytes, _) in common::LEAKY_HEAP_LEAKS {
        assert_eq!(heap.get(&(pid, f.to_string())), Some(&bytes), "pid {pid} {f}: {heap:?}");
    }
}

#[test]
fn a_process_started_in_an_empty_cgroup_is_seen_from_its_first_allocation() {
    let (report, pid, _) = record_started_in_empty_cgroup("empty", "exec \"$0\" --stay", &leaky());
    assert_leaky_exact(&report, pid);
}

/// A root directory holding copies of `program` and of every library it
/// loads, at their own paths: new inodes, a C library the profiler has not
/// probed (as a container's own root filesystem is).
fn root_with_own_libc(name: &str, program: &std::path::Path) -> PathBuf {
    let root = common::fresh_dir(name);
    let ldd = Command::new("ldd").arg(program).output().unwrap();
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string)
        .collect();
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
    for lib in libs {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &to).unwrap();
    }
    std::fs::copy(program, root.join("leaky")).unwrap();
    root
}

/// Its own copy of libc, never seen by the profiler before: the kernel holds
/// the process at exec until that copy is probed, so nothing is missed.
#[test]
fn a_process_with_its_own_libc_in_a_chroot_is_seen_from_its_first_allocation() {
    let root = root_with_own_libc("own-libc-root", &leaky());
    let (report, pid, stderr) =
        record_started_in_empty_cgroup("own-libc", "exec chroot \"$0\" /leaky --stay", &root);
    assert!(!stderr.contains("could not be held"), "{stderr}");
    let attached = report["accuracy"]["probes_attached"].as_array().unwrap();
    let mallocs =
        attached.iter().filter(|p| p.as_str().unwrap().starts_with("uprobe+uretprobe:malloc ")).count();
    assert_eq!(mallocs, 2, "this machine's libc (primed) and the root's own copy: {attached:?}");
    assert_leaky_exact(&report, pid);
}

/// Debian's podman with runc, as this machine's hybrid cgroup layout needs
/// them (`../shared/docs/platform.md`): the cgroupfs manager, no default ulimits.
fn podman(args: &[&str]) -> String {
    let conf = common::tmp().join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("podman (cargo xtask test installs it)");
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real container running the fixture from its own root filesystem, with
/// its own copy of libc: `--container ID --wait` started after `podman
/// create` and before `podman start`, and a second process `podman exec`'d
/// into it later; both exact from their first allocation.
#[test]
fn a_podman_container_and_a_process_exec_d_into_it_are_exact() {
    let root = root_with_own_libc("podman-root", &leaky());
    let id = podman(&[
        "create",
        "--pids-limit",
        "0",
        "--network",
        "none",
        "--rootfs",
        root.to_str().unwrap(),
        "/leaky",
        "--stay",
    ]);
    let dir = common::fresh_dir("podman-container");
    let (mut profiler, stderr) = common::start_profiler(&[
        "--lens",
        "alloc,handles",
        "-q",
        "-o",
        dir.to_str().unwrap(),
        "--container",
        &id,
        "--wait",
    ]);
    podman(&["start", &id]);
    let logs_say = |n: usize| {
        let started = std::time::Instant::now();
        while podman(&["logs", &id]).matches("leaked").count() < n {
            assert!(started.elapsed() < Duration::from_secs(20), "no 'leaked' #{n} in the container's log");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    logs_say(1);
    podman(&["exec", "-d", &id, "/leaky", "--stay"]);
    // The exec'd process's output goes nowhere: give it time to leak.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    let stderr_text = stderr.join().unwrap();
    let ok = profiler.wait().unwrap().success();
    let _ = podman(&["rm", "-f", &id]);
    assert!(ok, "{stderr_text}");
    assert!(!stderr_text.contains("could not be held"), "{stderr_text}");
    let report = common::report_json(&dir);
    let heap = by_pid_and_leaf(&report, "heap");
    let pids: std::collections::BTreeSet<u64> =
        heap.keys().filter(|(_, f)| f == "leak_malloc").map(|(pid, _)| *pid).collect();
    assert_eq!(pids.len(), 2, "the container's process and the exec'd one: {heap:?}");
    for pid in pids {
        assert_leaky_exact(&report, pid);
    }
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.starts_with(&format!("Leak report for container {id}, cgroup mode")), "{text}");
}

fn record_error(args: &[&str]) -> String {
    let out = Command::new(PROFILER).args(["record", "--lens", "alloc,handles"]).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} must fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_cgroup_and_container_input_fail_clearly() {
    let err = record_error(&["--cgroup", "/sys/fs/cgroup/definitely-not-here"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = record_error(&["--cgroup", "/tmp"]);
    assert!(err.contains("is not a cgroup v2 directory"), "{err}");

    // Two container cgroups sharing an id prefix, named as docker names them.
    let v2 = CgroupMounts::read().unwrap().v2.unwrap();
    let ids = [format!("abcd1{}", "0".repeat(59)), format!("abcd2{}", "0".repeat(59))];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| v2.join(format!("docker-{id}.scope"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let ambiguous = record_error(&["--container", "abcd", "-d", "1"]);
    let missing = record_error(&["--container", "feedbeef", "-d", "1"]);
    let bad = record_error(&["--container", "xyz!", "-d", "1"]);
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
    assert!(
        ambiguous.contains("ambiguous") && ambiguous.contains(&ids[0]) && ambiguous.contains(&ids[1]),
        "{ambiguous}"
    );
    assert!(missing.contains("no container with id feedbeef"), "{missing}");
    assert!(missing.contains("(--wait waits for it to start)"), "{missing}");
    assert!(bad.contains("hexadecimal"), "{bad}");
}

/// A Debian daemon nobody here wrote (tmux's server), already running in a
/// cgroup when recording starts: what it held is reported, its listening
/// unix socket by path, and its memory by region.
#[test]
fn a_debian_daemon_found_in_a_cgroup_shows_what_it_held() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let cgroup = TestCgroup::new("leakprof-tmux");
    let socket = common::tmp().join(format!("tmux-{}", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let started = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec tmux -S {} new-session -d sleep 60",
            cgroup.0.display(),
            socket.display()
        ))
        .status()
        .unwrap();
    assert!(started.success());
    let dir = common::fresh_dir("cgroup-tmux");
    let out = Command::new(PROFILER)
        .args(["record", "--cgroup"])
        .arg(&cgroup.0)
        .args(["-d", "1", "-q", "-o"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = Command::new("tmux").arg("-S").arg(&socket).arg("kill-server").status();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = common::report_json(&dir);
    let held = &report["held_at_start"];
    let listening = format!("unix stream {}", socket.display());
    assert!(
        held["handles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["description"].as_str().unwrap().ends_with(&listening)),
        "{held:#}"
    );
    let memory = held["memory"].as_array().unwrap();
    assert!(
        memory.iter().any(|r| r["class"] == "file mappings" && r["rss_bytes"].as_u64().unwrap() > 0),
        "{held:#}"
    );
}
