//! Honest exits and refusals (as root): every bad value is a usage error
//! (exit 2) before anything is attached, with no output directory left
//! behind; kernel threads and non-leader threads are refused by name; the
//! gate fails a command that crashed or exited non-zero; SIGHUP ends a
//! recording with a complete report; attach mode says how the target ended.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
};

use common::{fresh_dir, report_json, start_profiler, PROFILER};

fn profiler(args: &[&str]) -> Output {
    Command::new(PROFILER).args(args).output().unwrap()
}

fn assert_exit(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn bad_values_are_usage_errors_and_leave_no_directory() {
    let dir = fresh_dir("honest-usage");
    let d = dir.to_str().unwrap();
    let range = "is out of range (0 to 315360000 seconds)";
    for (flag, value, message) in [
        ("--duration", "1e300", format!("invalid value '1e300' for '--duration <SECS>': \"1e300\" {range}")),
        ("--interval", "inf", format!("invalid value 'inf' for '--interval <SECS>': \"inf\" {range}")),
        ("--min-age", "-1", format!("invalid value '-1' for '--min-age <SECS>': \"-1\" {range}")),
        ("--warmup", "NaN", format!("invalid value 'NaN' for '--warmup <SECS>': \"NaN\" {range}")),
        (
            "--ringbuf-mb",
            "4096",
            "invalid value '4096' for '--ringbuf-mb <MIB>': 4096 is not in 1..=1024".into(),
        ),
        ("--duration", "0", "error: --duration must be a positive number of seconds".into()),
        ("--interval", "0.01", "error: --interval must be at least 0.05 s".into()),
    ] {
        let out = profiler(&["record", "-o", d, flag, value, "--", "/bin/true"]);
        assert_exit(&out, 2, &message);
    }
    assert_exit(&profiler(&["gate", "--duration", "1e300", "--", "/bin/true"]), 2, "out of range");
    assert_exit(&profiler(&["record", "-o", d, "--pid", "2"]), 1, "is a kernel thread");
    assert!(!dir.exists(), "a rejected run created its output directory");
}

#[test]
fn a_non_leader_thread_is_refused_with_its_process() {
    let mut target = Command::new(common::fixture("churn2")).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid = target.id();
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|t| *t != pid.to_string())
        .unwrap();
    let dir = fresh_dir("honest-tid");
    let run = profiler(&["record", "-o", dir.to_str().unwrap(), "--pid", &tid]);
    target.kill().unwrap();
    target.wait().unwrap();
    assert_exit(&run, 1, &format!("{tid} is a thread of process {pid}, not a process: use --pid {pid}"));
}

#[test]
fn reports_of_another_schema_version_are_refused() {
    let dir = fresh_dir("honest-schema");
    std::fs::create_dir_all(&dir).unwrap();
    let run =
        profiler(&["record", "--lens", "handles", "-q", "-o", dir.to_str().unwrap(), "--", "/bin/true"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut report = report_json(&dir);
    report["schema_version"] = 99.into();
    let future = dir.join("future.json");
    std::fs::write(&future, serde_json::to_vec(&report).unwrap()).unwrap();
    assert_exit(
        &profiler(&["report", future.to_str().unwrap()]),
        1,
        "is not a report.json this profiler reads: report schema version 99; this profiler reads version 1",
    );
}

#[test]
fn the_gate_fails_a_command_that_crashed_or_exited_non_zero() {
    let cases: [(&[&str], &str); 2] =
        [(&["sh", "-c", "kill -SEGV $$"], "killed by SIGSEGV"), (&["false"], "exit code 1")];
    for (command, reason) in cases {
        let dir = fresh_dir("honest-gate");
        let out = profiler(&[&["gate", "--output", dir.to_str().unwrap(), "--"], command].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(reason), "{command:?}: the summary names {reason:?}: {stdout}");
        for file in ["gate.json", "junit.xml", "summary.md"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(text.contains(reason), "{file} names {reason:?}: {text}");
        }
        // Nor does a failed run become the baseline.
        let baseline = dir.join("baseline.json");
        let args = ["gate", "--update-baseline", "--baseline", baseline.to_str().unwrap(), "--output"];
        let out = profiler(&[&args[..], &[dir.to_str().unwrap(), "--"], command].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        let want = format!("no baseline written: the command failed (run 1: {reason})");
        assert!(stderr.contains(&want), "{command:?}: {stderr}");
        assert!(!baseline.exists());
    }
    let dir = fresh_dir("honest-gate-accepted");
    let out =
        profiler(&["gate", "--accept-exit-code", "1", "--output", dir.to_str().unwrap(), "--", "false"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sighup_ends_a_recording_with_a_complete_report() {
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = fresh_dir("honest-sighup");
    let pid = target.id().to_string();
    let (mut p, stderr) =
        start_profiler(&["--lens", "handles", "-q", "-o", dir.to_str().unwrap(), "--pid", &pid]);
    assert!(Command::new("kill").args(["-HUP", &p.id().to_string()]).status().unwrap().success());
    assert!(p.wait().unwrap().success(), "{}", stderr.join().unwrap());
    assert_eq!(report_json(&dir)["end_reason"], "SIGHUP");
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn attach_mode_says_how_the_target_ended() {
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = fresh_dir("honest-killed");
    let pid = target.id().to_string();
    let (mut p, stderr) =
        start_profiler(&["--lens", "handles", "-q", "-o", dir.to_str().unwrap(), "--pid", &pid]);
    // Killed, and not reaped until the profiler has seen it (as a parent that waits later).
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    assert!(p.wait().unwrap().success(), "{}", stderr.join().unwrap());
    target.wait().unwrap();
    let report = report_json(&dir);
    assert_eq!(report["end_reason"], "target exited (killed by SIGKILL)");
    assert_eq!(report["target_exit"]["signal"], "SIGKILL");
}

#[test]
fn a_process_exiting_while_the_probes_attach_is_named_as_such() {
    // Gone at the third open of its executable: the profiler has checked it and is attaching probes.
    let mut target =
        Command::new(common::fixture("exitonopen")).arg("3").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(target.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let dir = fresh_dir("honest-exit-during-attach");
    let pid = target.id().to_string();
    let reaper = std::thread::spawn(move || target.wait());
    let run =
        profiler(&["record", "--lens", "alloc,handles", "-q", "-o", dir.to_str().unwrap(), "--pid", &pid]);
    reaper.join().unwrap().unwrap();
    assert_exit(&run, 1, &format!("process {pid} exited while the profiler was attaching"));
    assert!(!dir.exists(), "a run that never attached created its output directory");
}

#[test]
fn sighup_in_launch_mode_leaves_the_program_running() {
    let dir = fresh_dir("honest-sighup-launch");
    let (mut p, stderr) =
        start_profiler(&["--lens", "handles", "-q", "-o", dir.to_str().unwrap(), "--", "sleep", "30"]);
    assert!(Command::new("kill").args(["-HUP", &p.id().to_string()]).status().unwrap().success());
    assert!(p.wait().unwrap().success(), "{}", stderr.join().unwrap());
    let report = report_json(&dir);
    assert_eq!(report["end_reason"], "SIGHUP");
    let pid = report["target"]["pid"].as_u64().unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(alive, "the launched program was killed with the profiler");
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn a_full_disk_leaves_complete_files_or_none_and_the_summary_on_screen() {
    let mount = fresh_dir("honest-full-disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=48k", "tmpfs"]).arg(&mount).status().unwrap();
    assert!(mounted.success());
    let out = mount.join("out");
    let run = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-o", out.to_str().unwrap(), "--"])
        .arg(common::fixture("leaky"))
        .output()
        .unwrap();
    // Nothing may fit: then the directory the run made is removed too.
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect();
    let _ = Command::new("umount").arg(&mount).status();
    assert_eq!(run.status.code(), Some(1), "a failed write fails the run");
    assert!(String::from_utf8_lossy(&run.stderr).contains("No space left on device"));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("Outstanding when recording ended"),
        "summary printed"
    );
    for (name, data) in &files {
        assert!(!name.ends_with(".tmp"), "temporary {name} left behind");
        if name == "report.json" {
            serde_json::from_slice::<serde_json::Value>(data).expect("report.json is complete");
        }
    }
}

/// The processes `pid` started, as the test sees them (first level).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// A wrapper (`sh -c 'prog; true'`) holds nothing itself: attached to it,
/// the report names its child and how to profile it; with --follow the
/// child, already running, is profiled from the start.
#[test]
fn a_wrapper_pid_names_its_child_and_follow_takes_it() {
    let trend = common::fixture("trend");
    let mut wrapper =
        Command::new("sh").arg("-c").arg(format!("{} 30 >/dev/null; true", trend.display())).spawn().unwrap();
    let sh = wrapper.id();
    let child = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            children_of(sh).first().copied()
        })
        .expect("the wrapper started its child");

    let dir = fresh_dir("honest-wrapper");
    let out = profiler(&["record", "--pid", &sh.to_string(), "-d", "1", "-q", "-o", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let note = format!("pid {sh} has 1 running child process: {child} (");
    assert!(stderr.contains(&note), "{stderr}");
    let report = report_json(&dir);
    let hint = report["hints"][0].as_str().unwrap();
    assert!(hint.contains(&format!("--pid {child}")) && hint.contains("--follow"), "{hint}");
    assert!(std::fs::read_to_string(dir.join("report.txt")).unwrap().contains(&format!("Note: {note}")));

    let dir = fresh_dir("honest-wrapper-follow");
    let out = profiler(&[
        "record",
        "--pid",
        &sh.to_string(),
        "--follow",
        "--lens",
        "alloc",
        "-d",
        "2",
        "-q",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = report_json(&dir);
    let leaked: Vec<(u64, u64)> = common::entries_through(&report, "heap", "leak_steady")
        .map(|e| (e["pid"].as_u64().unwrap(), e["bytes"].as_u64().unwrap()))
        .collect();
    // 10 KiB every 100 ms for 2 s.
    let bytes: u64 = leaked.iter().map(|(_, b)| b).sum();
    assert!(leaked.iter().all(|(pid, _)| *pid == u64::from(child)), "{leaked:?}");
    assert!((150 * 1024..=250 * 1024).contains(&bytes), "{bytes} B under leak_steady");
    assert!(report.get("hints").is_none(), "with --follow there is nothing to hint");
    let _ = Command::new("kill").arg(child.to_string()).status();
    let _ = wrapper.wait();
}
