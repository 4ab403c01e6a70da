//! The agent's endpoints (as root): `record --serve` scraped by Debian's real
//! Prometheus with the documented alert rules, pulled by `go tool pprof`
//! while recording, and labelled per cgroup when one agent watches two.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{fixture, tmp, TestCgroup, PROFILER};

/// A `profiler record --serve 127.0.0.1:0 ...` session.
struct Served {
    child: Child,
    /// `127.0.0.1:PORT`, as the profiler announced it.
    addr: String,
    /// The pid it profiles (0 in cgroup mode).
    pid: u32,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(PROFILER)
            .args(["record", "--serve", "127.0.0.1:0", "-q"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let (mut addr, mut line) = (None, String::new());
        loop {
            line.clear();
            stderr.read_line(&mut line).unwrap();
            if let Some(rest) = line.strip_prefix("serving http://") {
                addr = rest.split('/').next().map(str::to_string);
            }
            if line.is_empty() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the profiler ended before attaching");
            }
            if let Some(rest) = line.strip_prefix("profiling pid ") {
                let pid = rest.split_whitespace().next().unwrap().parse().unwrap();
                // Keep draining stderr so the profiler never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Self { child, addr: addr.expect("a 'serving' line before 'profiling'"), pid };
            }
        }
    }

    fn get(&self, path: &str) -> Vec<u8> {
        curl(&format!("http://{}{path}", self.addr))
    }

    fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics")).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // The profiler lets a launched program go on running: end it too.
        if self.pid != 0 {
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

fn curl(url: &str) -> Vec<u8> {
    let out =
        Command::new("curl").args(["-sSf", "--max-time", "10", url]).output().expect("curl is installed");
    assert!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The value of the series `name{labels}` exactly as written in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIPPED {test}: {tool} is not installed (cargo xtask test installs it)");
    }
    found
}

/// `go tool pprof -top` of `source` (a URL): function -> flat value.
fn pprof_top(source: &str, args: &[&str]) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=200"])
        .args(args)
        .arg(source)
        .env("HOME", tmp())
        .env("PPROF_TMPDIR", tmp())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 6).then(|| (cols[5].to_string(), cols[0].trim_end_matches('B').to_string()))
        })
        .collect()
}

#[test]
fn go_tool_pprof_pulls_the_outstanding_heap_and_sockets_while_recording() {
    if !have("curl", "go_tool_pprof_pulls...") || Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED go_tool_pprof_pulls...: go is not installed");
        return;
    }
    let out = common::fresh_dir("fleet-pprof");
    let served = Served::start(&[
        "--lens",
        "alloc,handles",
        "--interval",
        "0.2",
        "-o",
        out.to_str().unwrap(),
        "--",
        fixture("leaky").to_str().unwrap(),
        "--wait",
    ]);
    // Before the leak: the endpoint answers, with nothing of leak_malloc.
    assert!(!String::from_utf8_lossy(&served.get("/report.json")).contains("leak_malloc"));
    // leaky waits for SIGUSR1 in sigwait ("ready"): signal it only then.
    wait_for("leaky to wait for SIGUSR1", Duration::from_secs(10), || {
        let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", served.pid)).ok()?;
        wchan.contains("sigtimedwait").then_some(())
    });
    unsafe { libc::kill(served.pid as i32, libc::SIGUSR1) };
    wait_for("the leak in /report.json", Duration::from_secs(20), || {
        let report: serde_json::Value = serde_json::from_slice(&served.get("/report.json")).ok()?;
        let (bytes, _) = common::through(&report, "heap", "leak_pvalloc");
        let (_, sockets) = common::through(&report, "sockets", "leak_socketpair");
        (bytes == 8192 && sockets == 2).then_some(())
    });
    let heap = pprof_top(&format!("http://{}/debug/pprof/heap", served.addr), &["-unit=B"]);
    for (f, bytes) in
        [("leak_malloc", "3000"), ("leak_calloc", "2000"), ("leak_pvalloc", "8192"), ("thread_main", "2048")]
    {
        assert_eq!(heap.get(f).map(String::as_str), Some(bytes), "{f}: {heap:?}");
    }
    let sockets = pprof_top(&format!("http://{}/debug/pprof/sockets", served.addr), &[]);
    assert_eq!(sockets.get("leak_sockets").map(String::as_str), Some("3"), "{sockets:?}");
    assert_eq!(sockets.get("leak_socketpair").map(String::as_str), Some("2"), "{sockets:?}");

    // Unknown kinds and delta requests get a clear answer, not an empty profile.
    let status = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}{path}", served.addr)])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(status("/debug/pprof/nonsense"), "404");
    assert_eq!(status("/debug/pprof/heap?seconds=30"), "400");
    assert_eq!(status("/metrics"), "200");
    // The live page: the report's index.html, flamegraphs embedded.
    let page = String::from_utf8(served.get("/index.html")).unwrap();
    assert!(page.contains("leak_malloc") && page.contains("alt=\"heap flamegraph\""), "{page}");
}

#[test]
fn prometheus_scrapes_rising_bytes_positive_growth_and_fires_the_documented_alert() {
    if !have("prometheus", "prometheus_scrapes...") || !have("curl", "prometheus_scrapes...") {
        return;
    }
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet");
    let rules = docs.join("alerts.yml");
    let checked = Command::new("promtool").arg("check").arg("rules").arg(&rules).output().unwrap();
    assert!(checked.status.success(), "promtool: {}", String::from_utf8_lossy(&checked.stdout));

    // trend leaks 10 KiB per 100 ms; with a 20 MiB limit the limit is minutes away.
    let out = common::fresh_dir("fleet-prometheus");
    let served = Served::start(&[
        "--lens",
        "alloc",
        "--interval",
        "0.5",
        "--limit",
        "20M",
        "--snapshots",
        "--keep-snapshots",
        "3",
        "-o",
        out.to_str().unwrap(),
        "--",
        fixture("trend").to_str().unwrap(),
        "120",
    ]);

    // The documented rules, with their `for:` shortened to fit a test.
    let dir = common::fresh_dir("fleet-prometheus-server");
    std::fs::create_dir_all(&dir).unwrap();
    let test_rules = std::fs::read_to_string(&rules).unwrap().replace("for: 5m", "for: 0s");
    std::fs::write(dir.join("alerts.yml"), test_rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\n\
         scrape_configs:\n  - job_name: leak-profiler\n    static_configs:\n      - targets: [\"{}\"]\n",
        served.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("http://127.0.0.1:{port}");
    let prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--data-urlencode", &format!("query={q}")])
            .arg(format!("{api}/api/v1/query"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"].as_array().cloned().map(serde_json::Value::Array)
    };
    let value =
        |q: &str| -> Option<f64> { query(q)?.as_array()?.first()?["value"][1].as_str()?.parse().ok() };
    // Rising: over the last 5 s, as Prometheus stored the scrapes.
    let rise = wait_for("the heap series rising in Prometheus", Duration::from_secs(60), || {
        value(r#"delta(leakprof_outstanding_bytes{job="leak-profiler",kind="heap"}[5s])"#)
            .filter(|d| *d > 0.0)
    });
    let growth = wait_for("a positive heap growth rate", Duration::from_secs(30), || {
        value(r#"leakprof_growth_bytes_per_second{kind="heap"}"#).filter(|g| *g > 0.0)
    });
    // 10 KiB per 100 ms is 102400 B/s; sleeping makes the program a little slower.
    assert!((70_000.0..=110_000.0).contains(&growth), "growth {growth} B/s");
    let alerts = wait_for("MemoryLimitWithinAnHour firing", Duration::from_secs(30), || {
        let out = curl(&format!("{api}/api/v1/alerts"));
        let v: serde_json::Value = serde_json::from_slice(&out).ok()?;
        let alerts = v["data"]["alerts"].as_array()?.clone();
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "MemoryLimitWithinAnHour" && a["state"] == "firing")
            .then_some(alerts)
    });
    assert!(rise > 0.0, "{alerts:?}");
    // An agent's disk stays bounded: only the 3 latest periodic snapshots are kept.
    let snapshots: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert!((2..=3).contains(&snapshots.len()), "{snapshots:?}");
    assert!(
        !snapshots.iter().any(|n| n.starts_with("snapshot-001-")),
        "the oldest was removed: {snapshots:?}"
    );
    // Prometheus read every accuracy counter and the profiler's own cost.
    assert_eq!(value(r#"leakprof_accuracy_events_total{counter="ringbuf_drops"}"#), Some(0.0));
    assert!(value("process_resident_memory_bytes{job=\"leak-profiler\"}").is_some_and(|v| v > 0.0));
    drop(prometheus);
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn one_agent_over_a_parent_cgroup_labels_each_child_and_only_the_leaking_one_grows() {
    if !have("curl", "one_agent_over_a_parent_cgroup...") {
        return;
    }
    let parent = TestCgroup::new("fleet-parent");
    let leaking = parent.0.join("leaking");
    let quiet = parent.0.join("quiet");
    for dir in [&leaking, &quiet] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _children = Children(vec![leaking.clone(), quiet.clone()]);
    let out = common::fresh_dir("fleet-cgroups");
    let served = Served::start(&[
        "--cgroup",
        parent.0.to_str().unwrap(),
        "--lens",
        "alloc",
        "--interval",
        "0.5",
        "-o",
        out.to_str().unwrap(),
    ]);
    let start_in = |dir: &Path, program: PathBuf, args: &str| {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" {args}", dir.display());
        Command::new("sh").args(["-c", &script]).arg(program).stdout(Stdio::null()).spawn().unwrap()
    };
    let mut leaker = start_in(&leaking, fixture("trend"), "60");
    let mut idle = start_in(&quiet, fixture("leaky"), "--wait");
    let relative = |dir: &Path| {
        let v2 = profiler::process::cgroup::CgroupMounts::read().unwrap().v2.unwrap();
        format!("/{}", dir.strip_prefix(v2).unwrap().display())
    };
    let (leaking_label, quiet_label) = (relative(&leaking), relative(&quiet));
    let heap = |text: &str, cgroup: &str| {
        sample(text, &format!("leakprof_outstanding_bytes{{kind=\"heap\",cgroup=\"{cgroup}\"}}"))
    };
    let first = wait_for("both cgroups in /metrics", Duration::from_secs(20), || {
        let text = served.metrics();
        (heap(&text, &leaking_label)? > 0.0 && heap(&text, &quiet_label).is_some()).then_some(text)
    });
    std::thread::sleep(Duration::from_secs(3));
    let second = served.metrics();
    let grew = |cgroup: &str| heap(&second, cgroup).unwrap() - heap(&first, cgroup).unwrap();
    assert!(
        grew(&leaking_label) >= 20.0 * 10240.0,
        "the leaking cgroup grew {}\n{second}",
        grew(&leaking_label)
    );
    assert_eq!(grew(&quiet_label), 0.0, "the quiet cgroup stays flat\n{second}");
    // The leaking function's series carries its cgroup.
    assert!(
        second.lines().any(|l| l.starts_with("leakprof_stack_outstanding_bytes{")
            && l.contains("function=\"leak_steady\"")
            && l.contains(&format!("cgroup=\"{leaking_label}\""))),
        "{second}"
    );
    // The pprof samples are labelled by cgroup too.
    let report: serde_json::Value = serde_json::from_slice(&served.get("/report.json")).unwrap();
    let cgroup_of_leaker = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == leaker.id())
        .map(|p| p["cgroup"].clone());
    assert_eq!(cgroup_of_leaker, Some(serde_json::Value::from(leaking_label.clone())));
    let _ = leaker.kill();
    let _ = idle.kill();
    let _ = leaker.wait();
    let _ = idle.wait();
}

/// Child cgroups removed before their parent.
struct Children(Vec<PathBuf>);

impl Drop for Children {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_dir(dir);
        }
    }
}
