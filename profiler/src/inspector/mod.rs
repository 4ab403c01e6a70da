//! The V8 inspector source (`--lens js-heap`): V8's own numbers, read from
//! outside a running node process without restarting it. Node opens its
//! inspector on 127.0.0.1 when sent SIGUSR1 (as `node inspect -p PID`
//! does); a thread of ours, in the target's network namespace, connects to
//! it, starts V8's sampling heap profiler ([`sampling`]), reads V8's heap
//! statistics at every interval ([`heap`]), and at the end stops the
//! profiler and closes the inspector it opened (checked: the port is gone).
//!
//! Only a process whose executable is node and which catches SIGUSR1 is
//! signalled: to any other process SIGUSR1 is fatal.

pub mod cdp;
pub mod heap;
pub mod sampling;

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::report::model::{StackEntry, Total, V8Heap};

/// How long node has to show it is node and to open its inspector.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one reply of the inspector.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The port node's inspector takes unless `--inspect-port` says otherwise.
const DEFAULT_INSPECTOR_PORT: u16 = 9229;
/// SIGUSR1's bit in `/proc/PID/status`'s `SigCgt` mask.
const SIGUSR1_BIT: u64 = 1 << (libc::SIGUSR1 - 1);

/// What the inspector thread has read so far.
#[derive(Default)]
pub struct Observed {
    pub heap: heap::Readings,
    pub sampled: sampling::Sampled,
    /// `127.0.0.1:9229, opened with SIGUSR1`, once connected.
    pub inspector: String,
    /// What went wrong or what the user should know, for the report.
    pub notes: Vec<String>,
    /// The longest call (reading) the target's main thread served, ms.
    pub longest_call_ms: f64,
}

impl Observed {
    /// What a report of process `pid` takes from these readings.
    pub fn readout(&self, pid: u32, command: &str, min_age: Duration) -> Readout {
        let (bytes, count) = self.sampled.total();
        let mut notes = self.notes.clone();
        if self.sampled.stacks_dropped > 0 {
            notes.push(format!(
                "js-heap: {} stacks past the first {} were not followed",
                self.sampled.stacks_dropped,
                sampling::MAX_STACKS
            ));
        }
        Readout {
            entries: self.sampled.entries(pid, command, min_age.as_secs_f64()),
            total: Total { bytes, count },
            heap: self
                .heap
                .report(pid, &self.inspector)
                .map(|h| V8Heap { longest_call_ms: self.longest_call_ms, ..h }),
            notes,
        }
    }
}

/// What a report takes from the inspector.
#[derive(Clone, Debug, Default)]
pub struct Readout {
    /// The `js-heap` stacks.
    pub entries: Vec<StackEntry>,
    pub total: Total,
    pub heap: Option<V8Heap>,
    pub notes: Vec<String>,
}

/// Refuses, before anything is attached, a target the lens cannot read:
/// a cgroup (which node?) or a process that is not node.
pub fn check_target(info: &crate::process::ProcessInfo, cgroup_mode: bool) -> Result<()> {
    if cgroup_mode {
        bail!("--lens js-heap reads one node process: use --pid PID (or launch node) instead of a cgroup");
    }
    if !runs_node(info.pid) {
        bail!(
            "--lens js-heap reads a node process, and pid {} runs {:?}: profile node itself (its pid, or `-- node app.js`)",
            info.pid,
            info.name
        );
    }
    Ok(())
}

fn runs_node(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| Some(exe.file_name()?.to_string_lossy().starts_with("node")))
        .unwrap_or(false)
}

/// Whether the target can answer: alive and not stopped (a launched
/// target is held stopped at its exit until the report is written).
fn answers(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|state| !matches!(state.trim().chars().next(), Some('Z' | 'X' | 't' | 'T')))
}

/// The inspector thread of a session.
pub struct Inspector {
    pid: u32,
    command: String,
    observed: Arc<Mutex<Observed>>,
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Inspector {
    /// Starts reading process `pid` every `interval`; times are taken from `started`.
    pub fn start(pid: u32, command: &str, interval: Duration, started: Instant) -> Result<Self> {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let (stop, stopped) = mpsc::channel();
        let shared = observed.clone();
        let thread = std::thread::Builder::new()
            .name("inspector".into())
            .spawn(move || {
                if let Err(e) = run(pid, interval, started, &shared, &stopped) {
                    lock(&shared).notes.push(format!("js-heap: {e:#}"));
                }
            })
            .context("starting the inspector thread")?;
        Ok(Self { pid, command: command.to_string(), observed, stop, thread: Some(thread) })
    }

    /// The stacks and V8 numbers read so far.
    pub fn readout(&self, min_age: Duration) -> Readout {
        lock(&self.observed).readout(self.pid, &self.command, min_age)
    }

    /// Takes a last reading, stops the sampling profiler and closes the
    /// inspector (waiting at most a few seconds for a target that no longer answers).
    pub fn finish(&mut self) {
        let _ = self.stop.send(());
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + CALL_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline && answers(self.pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else if answers(self.pid) {
            lock(&self.observed).notes.push("js-heap: the inspector did not answer at the end".into());
        }
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Halves a series that reached its bound, keeping the first element.
fn drop_every_other<T>(v: &mut Vec<T>) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        i % 2 == 1
    });
}

fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread: open, read until told to stop (or the target is gone), close.
fn run(
    pid: u32,
    interval: Duration,
    started: Instant,
    observed: &Mutex<Observed>,
    stop: &mpsc::Receiver<()>,
) -> Result<()> {
    enter_network_namespace(pid)?;
    wait_until_node(pid, stop)?;
    let (port, opened) = open_inspector(pid)?;
    let mut session = cdp::Session::connect(port, CALL_TIMEOUT)?;
    lock(observed).inspector = format!(
        "127.0.0.1:{port}, {}",
        if opened { "opened with SIGUSR1 for this recording" } else { "already open (left open)" }
    );
    session.call("HeapProfiler.enable", json!({}))?;
    session.call(
        "HeapProfiler.startSampling",
        json!({ "samplingInterval": sampling::SAMPLING_INTERVAL_BYTES }),
    )?;
    let read = |session: &mut cdp::Session| -> Result<()> {
        let at_s = started.elapsed().as_secs_f64();
        let call = Instant::now();
        let reading = heap::Reading::parse(session.evaluate(heap::EXPRESSION)?, at_s)?;
        let profile = session.call("HeapProfiler.getSamplingProfile", json!({}))?;
        let took_ms = call.elapsed().as_secs_f64() * 1e3;
        let stacks = sampling::stacks_of(profile)?;
        let mut o = lock(observed);
        o.heap.push(reading);
        o.sampled.push(at_s, stacks);
        o.longest_call_ms = o.longest_call_ms.max(took_ms);
        Ok(())
    };
    loop {
        if let Err(e) = read(&mut session) {
            if !answers(pid) {
                return Ok(()); // The target is ending: its last reading stands.
            }
            return Err(e);
        }
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
    if !answers(pid) {
        return Ok(());
    }
    read(&mut session)?;
    session.call("HeapProfiler.stopSampling", json!({}))?;
    session.call("HeapProfiler.disable", json!({}))?;
    if opened {
        // Closes the inspector's server and this connection.
        session.notify("Runtime.evaluate", json!({ "expression": "process._debugEnd()" }))?;
        session.close();
        let deadline = Instant::now() + Duration::from_secs(2);
        while crate::process::fds::loopback_listening_ports(pid).contains(&port) {
            if Instant::now() > deadline {
                bail!("the inspector opened on 127.0.0.1:{port} is still listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut o = lock(observed);
        o.inspector = format!("127.0.0.1:{port}, opened with SIGUSR1 for this recording and closed after it");
    } else {
        session.close();
    }
    Ok(())
}

/// Node's inspector listens on 127.0.0.1 of the target's own network
/// namespace: this thread joins it (a container's loopback is not ours).
fn enter_network_namespace(pid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("reading the network namespace of pid {pid}"))?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering the network namespace of pid {pid}"))?;
    Ok(())
}

/// Waits until `pid` runs node and catches SIGUSR1 (a launched node sets up
/// its handler while it starts).
fn wait_until_node(pid: u32, stop: &mpsc::Receiver<()>) -> Result<()> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        let is_node = runs_node(pid);
        if is_node && catches_sigusr1(pid) {
            return Ok(());
        }
        if Instant::now() > deadline || stop.try_recv().is_ok() {
            if !is_node {
                bail!("pid {pid} does not run node: the inspector was not opened");
            }
            bail!("node (pid {pid}) does not catch SIGUSR1 (started with --disable-sigusr1?): the inspector was not opened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any process of `pid`'s network namespace listens on 127.0.0.1:`port`.
fn listening_anywhere(pid: u32, port: u16) -> bool {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
    })
}

fn catches_sigusr1(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & SIGUSR1_BIT != 0)
}

/// The inspector's port, and whether we opened it: SIGUSR1 makes node
/// listen on a new loopback port; with none new (its inspector was already
/// open, e.g. `--inspect`), a port it already listens on that answers.
fn open_inspector(pid: u32) -> Result<(u16, bool)> {
    let before = crate::process::fds::loopback_listening_ports(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGUSR1)
        .with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + OPEN_TIMEOUT;
    while Instant::now() < deadline {
        let new =
            crate::process::fds::loopback_listening_ports(pid).into_iter().find(|p| !before.contains(p));
        if let Some(port) = new {
            return Ok((port, true));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for port in before {
        if cdp::Session::connect(port, Duration::from_secs(1)).is_ok() {
            return Ok((port, false));
        }
    }
    // Node listens on its --inspect-port (9229 unless set): one process at a time per network namespace.
    if listening_anywhere(pid, DEFAULT_INSPECTOR_PORT) {
        bail!(
            "node (pid {pid}) could not open its inspector: 127.0.0.1:{DEFAULT_INSPECTOR_PORT} is taken in its network namespace (another node's inspector?); close that one, or start node with --inspect-port=0"
        );
    }
    bail!("node (pid {pid}) opened no inspector port within {}s of SIGUSR1", OPEN_TIMEOUT.as_secs())
}
