//! The V8 inspector source (`--lens js-heap`): V8's own numbers, read from
//! outside a running node process without restarting it. Node opens its
//! inspector on 127.0.0.1 when sent SIGUSR1 (as `node inspect -p PID`
//! does); a thread of ours, in the target's network namespace, connects to
//! it, starts V8's sampling heap profiler ([`sampling`]), reads V8's heap
//! statistics at every interval ([`heap`]) and the creators of file streams
//! ([`streams`]), and at the end stops the profiler, puts back what it
//! wrapped and closes the inspector it opened (checked: the port is gone).
//!
//! Only a process whose executable is node and which catches SIGUSR1 is
//! signalled: to any other process SIGUSR1 is fatal.

pub mod cdp;
pub mod heap;
pub mod sampling;
pub mod snapshot;
pub mod streams;

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    files::output::OutputDir,
    process::fds::printable,
    report::model::{HeapSnapshots, StackEntry, TakenHeapSnapshot, Total, V8Heap},
};

/// How long node has to show it is node and to open its inspector.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a port to show it is an inspector.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one reply of the inspector.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The port node's inspector takes unless `--inspect-port` says otherwise.
const DEFAULT_INSPECTOR_PORT: u16 = 9229;
/// Longest a heap snapshot may take (V8 writes about 40 MB a second here).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
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
    /// The longest a reading took, ms (wall time).
    pub longest_call_ms: f64,
    /// With `--heap-snapshot`: those taken and their comparisons.
    pub snapshots: Option<HeapSnapshots>,
    /// The creators of file streams, by fd (the latest stream on each).
    pub stream_creators: std::collections::BTreeMap<u64, streams::StreamCreator>,
    /// Stream creators the target could not hold between two readings.
    pub stream_creators_dropped: u64,
}

impl Observed {
    /// What a report of process `pid` takes from these readings.
    pub fn readout(&self, pid: u32, command: &str, min_age: Duration) -> Readout {
        let (bytes, count) = self.sampled.total();
        let mut notes = self.notes.clone();
        if self.stream_creators_dropped > 0 {
            notes.push(format!(
                "js-heap: {} file streams' creators were not kept (more than {} between two readings): their fds keep node's stack",
                self.stream_creators_dropped,
                streams::MAX_HELD
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
            snapshots: self.snapshots.clone(),
            stream_creators: self.stream_creators.values().cloned().collect(),
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
    pub snapshots: Option<HeapSnapshots>,
    /// File streams' fds and the JS that created them.
    pub stream_creators: Vec<streams::StreamCreator>,
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

/// Whether `pid` runs node: its executable has node's out-of-memory
/// handler (a name check alone would take `node_exporter` for node).
fn runs_node(pid: u32) -> bool {
    std::fs::File::open(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| crate::kernel::probes::node_symbols(&exe).is_some())
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

/// What the session asks of the inspector thread.
enum Request {
    /// A heap snapshot now, with this label, compared with the first.
    HeapSnapshot(String),
    /// The end: a last reading, then stop and close.
    Stop,
}

/// The inspector thread of a session.
pub struct Inspector {
    pid: u32,
    command: String,
    observed: Arc<Mutex<Observed>>,
    requests: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl Inspector {
    /// Starts reading process `pid` every `interval`; times are taken from
    /// `started`. With `heap_snapshots`, a heap snapshot is taken at the
    /// start and written there (and on request, or at the end).
    pub fn start(
        pid: u32,
        command: &str,
        interval: Duration,
        started: Instant,
        heap_snapshots: Option<OutputDir>,
    ) -> Result<Self> {
        let observed = Arc::new(Mutex::new(Observed {
            snapshots: heap_snapshots.as_ref().map(|_| HeapSnapshots::default()),
            ..Default::default()
        }));
        let (requests, received) = mpsc::channel();
        let shared = observed.clone();
        let thread = std::thread::Builder::new()
            .name("inspector".into())
            // Replies are parsed and dropped recursively (bounded by cdp::MAX_NESTING).
            .stack_size(8 << 20)
            .spawn(move || {
                if let Err(e) = run(pid, interval, started, &shared, &received, heap_snapshots) {
                    lock(&shared).notes.push(format!("js-heap: {}", printable(&format!("{e:#}"))));
                }
            })
            .context("starting the inspector thread")?;
        Ok(Self { pid, command: command.to_string(), observed, requests, thread: Some(thread) })
    }

    /// Asks for a heap snapshot now (`--snapshot-at` crossed), compared with the first.
    pub fn request_heap_snapshot(&self, label: &str) {
        let _ = self.requests.send(Request::HeapSnapshot(label.to_string()));
    }

    /// The stacks and V8 numbers read so far.
    pub fn readout(&self, min_age: Duration) -> Readout {
        lock(&self.observed).readout(self.pid, &self.command, min_age)
    }

    /// Takes a last reading, stops the sampling profiler and closes the
    /// inspector, calling `meanwhile` every few milliseconds while it waits
    /// (at most [`CALL_TIMEOUT`], less for a target that no longer answers).
    pub fn finish(&mut self, mut meanwhile: impl FnMut()) {
        let _ = self.requests.send(Request::Stop);
        let Some(thread) = self.thread.take() else { return };
        let snapshot_due = lock(&self.observed).snapshots.as_ref().is_some_and(|s| s.comparisons.is_empty());
        let deadline =
            Instant::now() + if snapshot_due { CALL_TIMEOUT + SNAPSHOT_TIMEOUT } else { CALL_TIMEOUT };
        while !thread.is_finished() && Instant::now() < deadline && answers(self.pid) {
            meanwhile();
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else if answers(self.pid) {
            let mut o = lock(&self.observed);
            let note = format!(
                "js-heap: the inspector did not answer at the end; it may still be open ({})",
                o.inspector
            );
            o.notes.push(note);
        }
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.finish(|| {});
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

/// Most file streams' creators kept (one per fd number).
const MAX_STREAM_CREATORS: usize = 65536;

/// Readings that may fail in a row (a blocked event loop) before the lens gives up.
const MAX_MISSED_READINGS: u32 = 3;

/// The thread: open, read until told to stop (or the target is gone), close.
fn run(
    pid: u32,
    interval: Duration,
    started: Instant,
    observed: &Mutex<Observed>,
    requests: &mpsc::Receiver<Request>,
    heap_snapshots: Option<OutputDir>,
) -> Result<()> {
    let stop = &StopSignal { requests, observed };
    // Held from before the checks: a pid reused meanwhile is never signalled.
    let pidfd = crate::process::pidfd(pid)?;
    enter_network_namespace(pid)?;
    if !wait_until_node(pid, stop)? {
        return Ok(()); // Recording ended first.
    }
    let Some((port, mut session, opened)) = open_inspector(pid, &pidfd, stop)? else { return Ok(()) };
    lock(observed).inspector = format!(
        "127.0.0.1:{port}, {}",
        if opened { "opened with SIGUSR1 for this recording" } else { "already open (left open)" }
    );
    let read = |session: &mut cdp::Session| -> Result<()> {
        let at_s = started.elapsed().as_secs_f64();
        let call = Instant::now();
        let reading = heap::Reading::parse(session.evaluate(heap::EXPRESSION)?, at_s)?;
        let profile = session.call("HeapProfiler.getSamplingProfile", json!({}))?;
        let took_ms = call.elapsed().as_secs_f64() * 1e3;
        let stacks = sampling::stacks_of(profile)?;
        let (creators, dropped) = streams::parse(session.evaluate(streams::TAKE)?)?;
        let mut o = lock(observed);
        o.heap.push(reading);
        o.sampled.push(at_s, stacks);
        o.longest_call_ms = o.longest_call_ms.max(took_ms);
        o.stream_creators_dropped += dropped;
        for creator in creators {
            if o.stream_creators.len() < MAX_STREAM_CREATORS || o.stream_creators.contains_key(&creator.fd) {
                o.stream_creators.insert(creator.fd, creator);
            } else {
                o.stream_creators_dropped += 1;
            }
        }
        Ok(())
    };
    let mut snapshots = heap_snapshots.map(|dir| Snapshots { dir, first: None, asked: 0 });
    let mut snapshot = |session: &mut cdp::Session, label: &str| {
        let Some(s) = &mut snapshots else { return };
        if let Err(e) = s.take(session, label, started, observed) {
            lock(observed)
                .notes
                .push(format!("js-heap: heap snapshot {label}: {}", printable(&format!("{e:#}"))));
        }
    };
    let sampled = (|| -> Result<()> {
        session.call("HeapProfiler.enable", json!({}))?;
        session.call(
            "HeapProfiler.startSampling",
            json!({ "samplingInterval": sampling::SAMPLING_INTERVAL_BYTES }),
        )?;
        let wrapped = match session.evaluate(&streams::install_expression()) {
            Ok(serde_json::Value::Bool(true)) => Ok(()),
            Ok(_) => {
                session.evaluate(streams::UNINSTALL)?;
                Err("node did not defer a stream's construction as node 20 and 22 do".to_string())
            }
            Err(e) => Err(format!("wrapping process.nextTick failed: {e:#}")),
        };
        if let Err(why) = wrapped {
            lock(observed).notes.push(printable(&format!("js-heap: file streams keep node's stack: {why}")));
        }
        snapshot(&mut session, "start");
        let mut missed = 0;
        loop {
            match read(&mut session) {
                Ok(()) => missed = 0,
                Err(_) if !answers(pid) => return Ok(()), // The target is ending: its last reading stands.
                Err(e) if missed + 1 >= MAX_MISSED_READINGS => return Err(e),
                Err(e) => {
                    missed += 1;
                    lock(observed)
                        .notes
                        .push(format!("js-heap: a reading failed: {}", printable(&format!("{e:#}"))));
                }
            }
            let first = match requests.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(request) => request,
            };
            // An end asked for meanwhile goes before snapshots still queued.
            let pending: Vec<Request> = std::iter::once(first).chain(requests.try_iter()).collect();
            if pending.iter().any(|r| matches!(r, Request::Stop)) {
                for r in pending {
                    if let Request::HeapSnapshot(label) = r {
                        lock(observed)
                            .notes
                            .push(format!("js-heap: heap snapshot {label} not taken: recording ended first"));
                    }
                }
                break;
            }
            for r in pending {
                if let Request::HeapSnapshot(label) = r {
                    snapshot(&mut session, &label);
                }
            }
        }
        if answers(pid) {
            read(&mut session)?;
            let compared = lock(observed).snapshots.as_ref().is_some_and(|s| !s.comparisons.is_empty());
            if !compared {
                snapshot(&mut session, "end");
            }
        }
        Ok(())
    })();
    if !answers(pid) {
        return sampled;
    }
    // Whatever happened, what was started is stopped and what was opened is closed.
    let closed = (|| -> Result<()> {
        let unwrapped = session.evaluate(streams::UNINSTALL).context("putting process.nextTick back");
        session.call("HeapProfiler.stopSampling", json!({}))?;
        session.call("HeapProfiler.disable", json!({}))?;
        if opened {
            // Closes the inspector's server and this connection.
            session.notify("Runtime.evaluate", json!({ "expression": "process._debugEnd()" }))?;
        }
        unwrapped.map(drop)
    })();
    session.close();
    if opened {
        let deadline = Instant::now() + Duration::from_secs(2);
        while crate::process::fds::loopback_listening_ports(pid).contains(&port) {
            if Instant::now() > deadline {
                bail!("the inspector opened on 127.0.0.1:{port} is still listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        lock(observed).inspector =
            format!("127.0.0.1:{port}, opened with SIGUSR1 for this recording and closed after it");
    }
    sampled.and(closed)
}

/// The session's stop request, as the waits before the inspector is open see it.
struct StopSignal<'a> {
    requests: &'a mpsc::Receiver<Request>,
    observed: &'a Mutex<Observed>,
}

impl StopSignal<'_> {
    /// Whether the session ended. A heap snapshot asked for before the
    /// inspector is open is not taken (the first one, taken once it is, has
    /// what it would have had), and the report says so.
    fn try_recv(&self) -> Result<(), ()> {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Stop => return Ok(()),
                Request::HeapSnapshot(label) => lock(self.observed).notes.push(format!(
                    "js-heap: heap snapshot {label} not taken: the inspector was not open yet"
                )),
            }
        }
        Err(())
    }
}

/// Heap snapshots of one recording: written to `dir`, each later one
/// compared with the first.
struct Snapshots {
    dir: OutputDir,
    first: Option<(String, snapshot::Baseline)>,
    /// Snapshots asked of V8 so far (numbers the files, failed ones too).
    asked: usize,
}

impl Snapshots {
    fn take(
        &mut self,
        session: &mut cdp::Session,
        label: &str,
        started: Instant,
        observed: &Mutex<Observed>,
    ) -> Result<()> {
        let at_s = started.elapsed().as_secs_f64();
        let call = Instant::now();
        let json = session.call_collecting(
            "HeapProfiler.takeHeapSnapshot",
            json!({ "reportProgress": false }),
            "HeapProfiler.addHeapSnapshotChunk",
            snapshot::MAX_SNAPSHOT_BYTES,
            SNAPSHOT_TIMEOUT,
        )?;
        let pause_ms = call.elapsed().as_secs_f64() * 1e3;
        self.asked += 1;
        let file = format!("heap-{}-{label}.heapsnapshot", self.asked);
        // The whole JS heap, secrets included: readable by root only.
        self.dir.write_private(&file, json.as_bytes())?;
        let graph = snapshot::HeapGraph::parse(&json)?;
        let file_bytes = json.len() as u64;
        drop(json);
        let comparison =
            self.first.as_ref().map(|(base, baseline)| snapshot::compare(baseline, &graph, base, label));
        let entry = TakenHeapSnapshot {
            label: label.to_string(),
            at_s,
            pause_ms,
            file,
            file_bytes,
            objects: graph.objects() as u64,
            heap_bytes: graph.bytes(),
        };
        if self.first.is_none() {
            self.first = Some((label.to_string(), snapshot::Baseline::of(&graph)));
        }
        drop(graph);
        crate::release_freed_memory();
        let mut o = lock(observed);
        let s = o.snapshots.get_or_insert_with(Default::default);
        s.taken.push(entry);
        s.comparisons.extend(comparison);
        Ok(())
    }
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
/// its handler while it starts); `false` if recording ended first.
fn wait_until_node(pid: u32, stop: &StopSignal) -> Result<bool> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    // The executable's symbols are read once per executable (exec changes it).
    let mut checked: Option<(std::path::PathBuf, bool)> = None;
    loop {
        let exe =
            std::fs::read_link(format!("/proc/{pid}/exe")).with_context(|| format!("pid {pid} is gone"))?;
        let is_node = match &checked {
            Some((seen, is_node)) if *seen == exe => *is_node,
            _ => {
                let is_node = runs_node(pid);
                checked = Some((exe, is_node));
                is_node
            }
        };
        if is_node && catches_sigusr1(pid) {
            return Ok(true);
        }
        if stop.try_recv().is_ok() {
            return Ok(false);
        }
        if Instant::now() > deadline {
            if !is_node {
                bail!("pid {pid} does not run node: the inspector was not opened");
            }
            bail!("node (pid {pid}) does not catch SIGUSR1 (started with --disable-sigusr1?): the inspector was not opened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn catches_sigusr1(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & SIGUSR1_BIT != 0)
}

/// Opens node's inspector and connects: SIGUSR1 makes node listen on a new
/// loopback port (its `--inspect-port`, 9229 unless set), the one among the
/// process's new ports that lists a debuggee; with none new (its inspector
/// was already open, e.g. `--inspect`), one it already listened on. Returns
/// the port, the session and whether we opened it; `None` if recording ended first.
fn open_inspector(
    pid: u32,
    pidfd: &std::os::fd::OwnedFd,
    stop: &StopSignal,
) -> Result<Option<(u16, cdp::Session, bool)>> {
    use std::os::fd::AsRawFd;
    let listening = || crate::process::fds::loopback_listening_ports(pid);
    // The default port first: an app may open its own port meanwhile.
    let by_preference = |mut ports: Vec<u16>| {
        ports.sort_by_key(|p| (*p != DEFAULT_INSPECTOR_PORT, *p));
        ports
    };
    let before = listening();
    // SAFETY: pidfd_send_signal(2) with a pidfd we hold, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGUSR1,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if sent != 0 {
        bail!("signalling pid {pid}: {}", std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut tried: Vec<u16> = Vec::new();
    while Instant::now() < deadline {
        if stop.try_recv().is_ok() {
            return Ok(None);
        }
        let new: Vec<u16> =
            listening().into_iter().filter(|p| !before.contains(p) && !tried.contains(p)).collect();
        for port in by_preference(new) {
            tried.push(port);
            // A new port may be the program's own: it gets a short try.
            if let Ok(mut session) = cdp::Session::connect(port, PROBE_TIMEOUT) {
                session.set_timeout(CALL_TIMEOUT);
                return Ok(Some((port, session, true)));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for port in by_preference(before) {
        if let Ok(mut session) = cdp::Session::connect(port, PROBE_TIMEOUT) {
            session.set_timeout(CALL_TIMEOUT);
            return Ok(Some((port, session, false)));
        }
    }
    // One inspector per network namespace on a port: 9229 may be another node's.
    let taken =
        crate::process::fds::loopback_listening_ports_in_namespace(pid).contains(&DEFAULT_INSPECTOR_PORT);
    if taken {
        bail!(
            "node (pid {pid}) could not open its inspector: 127.0.0.1:{DEFAULT_INSPECTOR_PORT} is taken in its network namespace (another node's inspector?); close that one, or start node with --inspect-port=0"
        );
    }
    bail!("node (pid {pid}) opened no inspector port within {}s of SIGUSR1", OPEN_TIMEOUT.as_secs())
}
