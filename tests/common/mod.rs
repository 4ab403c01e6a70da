//! Helpers shared by the end-to-end tests: building C fixtures, fresh
//! output directories, reading reports.
#![allow(dead_code)] // each test crate uses a different subset

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use profiler::process::cgroup::CgroupMounts;

pub const PROFILER: &str = env!("CARGO_BIN_EXE_profiler");

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Builds `tests/fixtures/<name>.c` once per test binary, with frame
/// pointers and debug info, using `compiler` (`cc`, `musl-gcc`).
pub fn fixture_with(compiler: &str, name: &str, extra: &[&str]) -> PathBuf {
    let mut flags = vec!["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-pthread"];
    flags.extend_from_slice(extra);
    built_fixture(compiler, &format!("{name}.c"), &flags)
}

/// Builds `tests/fixtures/<source>` once per test binary with exactly
/// `flags` (e.g. a distribution's `-O2`, no frame pointers), using
/// `compiler` (`cc`, `g++`, `rustc`).
pub fn built_fixture(compiler: &str, source: &str, flags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let key = format!("{compiler} {source} {}", flags.join(" "));
    let mut built = BUILT.lock().unwrap();
    if let Some(exe) = built.get_or_insert_with(HashMap::new).get(&key) {
        return exe.clone();
    }
    let stem = source.rsplit_once('.').map_or(source, |(stem, _)| stem);
    let suffix: String = flags.iter().map(|a| a.trim_start_matches('-')).collect::<Vec<_>>().join("-");
    let exe = tmp().join(format!("bin-{compiler}-{stem}-{suffix}").replace(['=', ' '], "_"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{source}"));
    let status = Command::new(compiler)
        .args(flags)
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

/// (function, bytes, blocks) the ground-truth fixture `leaky.c` leaks on the heap.
pub const LEAKY_HEAP_LEAKS: [(&str, u64, u64); 10] = [
    ("leak_malloc", 3000, 3),
    ("leak_calloc", 2000, 2),
    ("leak_realloc", 5000, 1),
    ("leak_reallocarray", 600, 1),
    ("leak_posix_memalign", 4096, 1),
    ("leak_aligned_alloc", 2560, 1),
    ("leak_memalign", 1280, 1),
    ("leak_valloc", 700, 1),
    ("leak_pvalloc", 8192, 1),
    ("thread_main", 2048, 4),
];

/// (bytes, count) of the `kind` entries whose stack passes through `function`.
pub fn through(report: &serde_json::Value, kind: &str, function: &str) -> (u64, u64) {
    entries_through(report, kind, function)
        .fold((0, 0), |(b, c), e| (b + e["bytes"].as_u64().unwrap(), c + e["count"].as_u64().unwrap()))
}

/// The `kind` entries of a report whose stack passes through `function`.
pub fn entries_through<'a>(
    report: &'a serde_json::Value,
    kind: &'a str,
    function: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |e| e["kind"] == kind)
        .filter(move |e| e["frames"].as_array().unwrap().iter().any(|f| f["function"] == function))
}

/// The function names (innermost first) of each `kind` stack through `function`.
pub fn stacks_through(report: &serde_json::Value, kind: &str, function: &str) -> Vec<Vec<String>> {
    entries_through(report, kind, function)
        .map(|e| {
            e["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["function"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// A cgroup v2 directory removed (with its processes killed) on drop.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let v2 = CgroupMounts::read().unwrap().v2.expect("a cgroup v2 hierarchy is mounted");
        let dir = v2.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Starts `leaky --wait` inside the cgroup (a shell moves itself in, then execs).
    pub fn start_waiting(&self) -> (Child, BufReader<ChildStdout>) {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" --wait", self.0.display());
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .arg(fixture("leaky"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        (child, out)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Starts `profiler record ARGS` and returns once it says it is attached,
/// with a thread collecting the rest of its stderr.
pub fn start_profiler<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Child, std::thread::JoinHandle<String>) {
    let mut p = Command::new(PROFILER)
        .arg("record")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(p.stderr.take().unwrap());
    // Notes may come first (e.g. "waiting for container ... to start").
    let mut first = String::new();
    while !first.lines().last().is_some_and(|l| l.starts_with("profiling")) {
        assert!(stderr.read_line(&mut first).unwrap() > 0, "profiler did not attach: {first}");
    }
    let rest = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut first);
        first
    });
    (p, rest)
}

/// How a stopped profiler ended: its exit status, how long it took from
/// the stop signal to its exit, and its peak resident memory.
pub struct Stopped {
    pub status: std::process::ExitStatus,
    pub exit_after: Duration,
    pub peak_rss: u64,
}

/// Sends `signal` to `child` and reaps it with `wait4` (for its peak RSS);
/// panics if it has not exited within 20 s. `child` must not be waited on again.
pub fn stop_and_reap(child: &Child, signal: libc::c_int) -> Stopped {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let sent = std::time::Instant::now();
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data, written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            return Stopped {
                status: std::process::ExitStatus::from_raw(status),
                exit_after: sent.elapsed(),
                peak_rss: usage.ru_maxrss as u64 * 1024,
            };
        }
        assert!(sent.elapsed() < Duration::from_secs(20), "pid {pid} did not exit within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where each open fd of `pid` points.
pub fn open_fd_targets(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect())
        .unwrap_or_default()
}
