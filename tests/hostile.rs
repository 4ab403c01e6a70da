//! Safe as root on hostile input (as root): an unprivileged user (uid 65534)
//! plants symlinks at every output name, and a target replaces its own
//! executable's path with a symlink to a root-only file, `/dev/zero` or a
//! FIFO, or plants a 1 GiB perf map. The profiler must change no file
//! outside its output directory, never open the planted targets (watched
//! with inotify and in its own fds), stay under [`PEAK_RSS_BOUND`], and still
//! write a complete report within [`EXIT_BOUND`] of the end of recording.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    folded_by_leaf, fresh_dir, open_fd_targets, report_json, start_profiler, stop_and_reap, through, Stopped,
    PROFILER,
};

/// The profiler's documented bound on its own peak memory for one target
/// (README, "Safe as root"), hostile inputs included.
const PEAK_RSS_BOUND: u64 = 256 << 20;
/// From the end of recording (the stop signal) to the profiler's exit.
const EXIT_BOUND: Duration = Duration::from_secs(2);

fn assert_prompt_and_bounded(stopped: &Stopped, stderr: String) {
    assert!(stopped.status.success(), "{stderr}");
    assert!(stopped.exit_after < EXIT_BOUND, "exited {:?} after the stop signal", stopped.exit_after);
    assert!(
        stopped.peak_rss < PEAK_RSS_BOUND,
        "peak RSS {} MiB (bound {} MiB)",
        stopped.peak_rss >> 20,
        PEAK_RSS_BOUND >> 20
    );
}

const NOBODY: &str = "--reuid=65534";

fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([NOBODY, "--regid=65534", "--clear-groups"]).args(args);
    c
}

/// A directory writable by nobody, and a root-only victim file beside it,
/// under the system's temporary directory: nobody must reach it, whatever
/// the permissions of the checkout the tests run in (`mktemp -d` makes 0700).
fn arena(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("profiler-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = dir.with_extension("victim");
    std::fs::write(&victim, b"root's secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, victim)
}

/// Watches `path` for opens (inotify); `opened()` says whether any happened.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> Self {
        use std::os::fd::FromRawFd;
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_MODIFY) } >= 0);
        Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    fn opened(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 }
    }
}

#[test]
fn symlinks_planted_at_every_output_name_are_replaced_not_followed() {
    let (dir, victim) = arena("hostile-outputs");
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    assert!(Command::new("chown").args(["65534", out.to_str().unwrap()]).status().unwrap().success());
    let names = [
        ".write-test",
        "report.json",
        "report.txt",
        "heap.pb.gz",
        "index.html",
        "heap.svg",
        "heap.folded",
        "sockets.svg",
        "sockets.folded",
        "mmap.svg",
        "mmap.folded",
    ];
    for name in names {
        let st = as_nobody(&["ln", "-s", victim.to_str().unwrap(), out.join(name).to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let watch = OpenWatch::new(&victim);
    let run = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "-o"])
        .arg(&out)
        .arg("--")
        .arg(common::fixture("leaky"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!watch.opened(), "the profiler opened the planted symlink's target");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's secret");
    watch.opened(); // our own read
    for name in &names[1..] {
        let meta = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a regular file now");
    }
    assert!(!out.join(".write-test").exists());
    assert_eq!(folded_by_leaf(&out, "heap").get("leak_malloc"), Some(&3000));

    // The gate's outputs and baseline likewise: the baseline written by one
    // run, the decision files by a second run judged against it.
    let gate_out = dir.join("gate");
    std::fs::create_dir(&gate_out).unwrap();
    assert!(Command::new("chown").args(["65534", gate_out.to_str().unwrap()]).status().unwrap().success());
    let gate_names = ["gate.json", "junit.xml", "summary.md"];
    for name in gate_names {
        let link = gate_out.join(name);
        assert!(as_nobody(&["ln", "-s", victim.to_str().unwrap(), link.to_str().unwrap()])
            .status()
            .unwrap()
            .success());
    }
    let baseline = gate_out.join("baseline.json");
    assert!(as_nobody(&["ln", "-s", victim.to_str().unwrap(), baseline.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    for update in [true, false] {
        let mut gate = Command::new(PROFILER);
        gate.arg("gate");
        if update {
            gate.arg("--update-baseline");
        }
        let gate = gate
            .arg("--baseline")
            .arg(&baseline)
            .arg("--output")
            .arg(&gate_out)
            .arg("--")
            .arg(common::fixture("leaky"))
            .output()
            .unwrap();
        assert_eq!(gate.status.code(), Some(0), "update {update}: {}", String::from_utf8_lossy(&gate.stderr));
    }
    assert!(!watch.opened(), "the gate opened the planted symlink's target");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's secret");
    for name in gate_names.iter().chain(&["baseline.json"]) {
        let meta = std::fs::symlink_metadata(gate_out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a regular file now");
    }
}

#[test]
fn a_symlink_in_a_default_output_name_cannot_be_planted() {
    let dir = fresh_dir("hostile-default-name");
    std::fs::create_dir_all(&dir).unwrap();
    let run = Command::new(PROFILER)
        .args(["record", "--lens", "handles", "-q", "--", "/bin/true"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let suffix = names[0].rsplit('-').next().unwrap();
    assert!(suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()), "random part in {names:?}");
}

/// A target (run as nobody) that deletes its executable and plants a
/// symlink at its path (and at "<path> (deleted)"); the profiler attaches
/// with the alloc lens, which opens the executable to name its frames.
fn target_replacing_its_executable(name: &str, plant: impl Fn(&Path, &Path)) {
    let (dir, victim) = arena(name);
    let exe = dir.join("exe");
    std::fs::copy(common::fixture("leaky"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut target = as_nobody(&[exe.to_str().unwrap(), "--wait"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    std::fs::remove_file(&exe).unwrap();
    plant(&exe, &victim);
    plant(&dir.join("exe (deleted)"), &victim);
    let watch = OpenWatch::new(&victim);
    let out = dir.join("out");
    let pid = target.id().to_string();
    let (profiler, stderr) =
        start_profiler(&["--lens", "alloc,handles", "-q", "-o", out.to_str().unwrap(), "--pid", &pid]);
    assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    std::thread::sleep(Duration::from_millis(300));
    let planted = std::fs::read_link(&exe).unwrap_or_default();
    let fds = open_fd_targets(profiler.id());
    assert!(!fds.iter().any(|fd| *fd == planted || *fd == victim), "the profiler holds {fds:?}");
    let stopped = stop_and_reap(&profiler, libc::SIGINT);
    let _ = target.kill();
    let _ = target.wait();
    assert_prompt_and_bounded(&stopped, stderr.join().unwrap());
    assert!(!watch.opened(), "the profiler opened the planted symlink's target");
    // Frames of the deleted executable are still named, from the mapping itself.
    assert_eq!(folded_by_leaf(&out, "heap").get("leak_malloc"), Some(&3000), "{}", out.display());
    assert!(report_json(&out)["end_reason"].is_string());
}

fn symlink_as_nobody(target: &Path, at: &Path) {
    let st = as_nobody(&["ln", "-sf", target.to_str().unwrap(), at.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn a_target_replacing_its_executable_with_a_symlink_to_a_root_only_file() {
    target_replacing_its_executable("hostile-exe-victim", |at, victim| symlink_as_nobody(victim, at));
}

#[test]
fn a_target_replacing_its_executable_with_dev_zero_or_a_fifo() {
    target_replacing_its_executable("hostile-exe-zero", |at, _| {
        symlink_as_nobody(Path::new("/dev/zero"), at)
    });
    target_replacing_its_executable("hostile-exe-fifo", |at, victim| {
        let fifo = victim.with_extension("fifo");
        let _ = std::fs::remove_file(&fifo);
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        symlink_as_nobody(&fifo, at);
    });
}

#[test]
fn a_one_gib_perf_map_costs_bounded_memory_and_its_unread_part_is_counted() {
    let (dir, _) = arena("hostile-perf-map");
    // 70 MiB of well-formed lines (more than the profiler reads), then sparse to 1 GiB.
    let exe = common::fixture("jitmap");
    let mut target = as_nobody(&[exe.to_str().unwrap(), "70"]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = target.id();
    let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let mut stdout = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    assert_eq!(std::fs::metadata(&map).unwrap().len(), 1 << 30);
    let out = dir.join("out");
    let (profiler, stderr) =
        start_profiler(&["--lens", "alloc", "-q", "-o", out.to_str().unwrap(), "--pid", &pid.to_string()]);
    assert!(Command::new("kill").args(["-USR1", &pid.to_string()]).status().unwrap().success());
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = stop_and_reap(&profiler, libc::SIGINT);
    let _ = target.kill();
    let _ = target.wait();
    let _ = std::fs::remove_file(&map);
    assert_prompt_and_bounded(&stopped, stderr.join().unwrap());
    let report = report_json(&out);
    // Named from the map's first line; what lies past the read limit is counted.
    assert_eq!(through(&report, "heap", "JIT:hostile_jit_function"), (3000, 3), "{}", out.display());
    assert_eq!(report["accuracy"]["perf_map_unread_bytes"], (1u64 << 30) - (64 << 20));
    eprintln!(
        "1 GiB perf map: profiler peak RSS {} MiB, exit {:?}",
        stopped.peak_rss >> 20,
        stopped.exit_after
    );
}

/// A file name is the target's to choose: one holding a newline, a forged
/// report line and a terminal escape, open before the profiler attaches,
/// is described with its control characters shown (`^J`, `\x1b`), so it
/// can neither forge a line of report.txt nor reach root's terminal.
#[test]
fn a_hostile_file_name_held_at_attach_cannot_forge_report_lines() {
    let dir = fresh_dir("hostile-fd-name");
    std::fs::create_dir_all(&dir).unwrap();
    let evil = dir.join("evil\n  sockets     1  fd 9: forged\u{1b}[2J");
    std::fs::write(&evil, b"x").unwrap();
    // Its stdout and stderr are pipes, whatever the test's are: the evil file
    // is among the first files described.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 7<\"$0\"; exec sleep 30")
        .arg(&evil)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = dir.join("out");
    for _ in 0..100 {
        if std::fs::read_link(format!("/proc/{}/fd/7", holder.id())).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let run = Command::new(PROFILER)
        .args(["record", "--pid", &holder.id().to_string(), "-d", "1", "-q", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(!text.contains('\u{1b}'), "no escape reaches the report: {text}");
    assert!(!text.lines().any(|l| l.starts_with("  sockets     1  fd 9: forged")), "{text}");
    assert!(text.contains("evil^J  sockets     1  fd 9: forged\\x1b[2J"), "{text}");
    let report = common::report_json(&out);
    let described: Vec<&str> = report["held_at_start"]["handles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["description"].as_str().unwrap())
        .collect();
    assert!(
        described.iter().any(|d| d.starts_with("fd 7: ") && d.ends_with("forged\\x1b[2J")),
        "{described:?}"
    );
}
