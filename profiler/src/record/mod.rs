//! A recording session: validate, find or launch the target, attach the
//! probes, drain events into the collector until the session ends (target
//! exit, `--duration`, SIGINT, SIGTERM, SIGHUP), then build and write the report
//! while the target's address space still exists.

mod assemble;
mod live;
mod probed;
mod session;

use probed::CgroupState;
use session::Session;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    files::output::OutputDir,
    kernel::{placement::PlacementMode, preflight},
    lens::Lenses,
    process::{
        cgroup::{CgroupMounts, CgroupTarget},
        launch::{self, TargetEvent},
        ProcessInfo,
    },
    report::{flame, Report},
    stacks::unwind::{JsNames, StackWalk},
};

pub use crate::report::select::SortBy;

/// What to profile.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    Pid(u32),
    Command(Vec<OsString>),
    /// Every process in a cgroup v2 directory and its descendants.
    Cgroup(PathBuf),
    /// The cgroup of a container, by id or unique id prefix; with
    /// `wait_for_start`, one that may not have started yet.
    Container {
        id: String,
        wait_for_start: bool,
    },
}

/// What is excluded as warm-up: everything still live when the first of
/// these happens does not count (nor does its later release).
#[derive(Clone, Debug, Default)]
pub struct Warmup {
    /// This long after recording starts.
    pub after: Option<Duration>,
    /// When the launched program prints a line containing this.
    pub stdout_marker: Option<String>,
    /// When the program calls this function (a no-op in its own binary).
    pub function: Option<String>,
}

impl Warmup {
    pub fn is_set(&self) -> bool {
        self.after.is_some() || self.stdout_marker.is_some() || self.function.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    /// Output directory; default `./profile-<target>-<timestamp>`.
    pub output: Option<PathBuf>,
    /// Stacks per kind in the text summary.
    pub top: usize,
    /// `None`: [`RecordOptions::default_ringbuf_bytes`] for the lenses.
    pub ringbuf_bytes: Option<u32>,
    /// Print the text summary to stdout at the end.
    pub print_summary: bool,
    pub warmup: Warmup,
    /// With `--pid`: also profile children started after attaching.
    pub follow: bool,
    pub group_by: flame::GroupBy,
    /// Sample outstanding values per stack this often (the time series).
    pub interval: Duration,
    /// Bytes younger than this count as "in flight" for the verdicts.
    pub min_age: Duration,
    pub sort: SortBy,
    /// Memory limit for the time-to-limit estimate (else the cgroup's limit).
    pub limit: Option<u64>,
    pub thresholds: crate::trend::Thresholds,
    /// Write a full numbered snapshot when resident memory (or the heap, when
    /// RSS is unknown) crosses each of these, ascending.
    pub snapshot_at: Vec<u64>,
    /// V8 heap snapshots through the inspector (`--heap-snapshot`, with `--lens js-heap`).
    pub heap_snapshot: bool,
    /// Also write a full numbered snapshot at every `interval` (long-running
    /// targets that free everything at exit, like Node with its Buffers).
    pub snapshots: bool,
    /// Periodic snapshots kept: past this many the oldest is removed.
    pub keep_snapshots: usize,
    /// Serve /metrics, /debug/pprof/<kind> and /report.json here while recording.
    pub serve: Option<std::net::SocketAddr>,
    pub lenses: Lenses,
    /// Alloc lens: mean bytes between sampled allocations (0: every call).
    pub sample_bytes: u64,
    pub placement: PlacementMode,
    pub stack_walk: StackWalk,
    pub js_names: JsNames,
}

impl RecordOptions {
    /// The ring buffer's default size: 16 MiB for the alloc lens (an event
    /// per allocator call), 4 MiB otherwise (page faults and syscalls come
    /// at a far lower rate). Its pages are mapped twice, and all of them
    /// count in the profiler's RSS from the start.
    pub fn default_ringbuf_bytes(lenses: Lenses) -> u32 {
        if lenses.alloc {
            16 << 20
        } else {
            4 << 20
        }
    }

    /// Options for recording `target` with every other setting at its default.
    pub fn new(target: TargetSpec) -> Self {
        Self {
            target,
            duration: None,
            output: None,
            top: 10,
            ringbuf_bytes: None,
            print_summary: false,
            warmup: Warmup::default(),
            follow: false,
            group_by: flame::GroupBy::None,
            interval: Duration::from_secs(10),
            min_age: Duration::from_secs(30),
            sort: SortBy::Growth,
            limit: None,
            thresholds: Default::default(),
            snapshot_at: Vec::new(),
            heap_snapshot: false,
            snapshots: false,
            keep_snapshots: 100,
            serve: None,
            lenses: Lenses::default(),
            sample_bytes: 0,
            placement: PlacementMode::default(),
            stack_walk: StackWalk::default(),
            js_names: JsNames::default(),
        }
    }
}

/// The result of a session.
pub struct Recorded {
    pub report: Report,
    pub output: PathBuf,
}

fn default_output(spec: &TargetSpec) -> PathBuf {
    let name = match spec {
        TargetSpec::Pid(pid) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| format!("{}-{pid}", s.trim()))
            .unwrap_or_else(|_| pid.to_string()),
        TargetSpec::Command(argv) => {
            Path::new(&argv[0]).file_name().unwrap_or_default().to_string_lossy().into_owned()
        }
        TargetSpec::Cgroup(dir) => {
            format!("cgroup-{}", dir.file_name().unwrap_or_default().to_string_lossy())
        }
        TargetSpec::Container { id, .. } => format!("container-{id}"),
    };
    // The random part makes the name impossible to plant in advance.
    let ts = chrono_like_timestamp();
    PathBuf::from(format!("profile-{name}-{ts}-{}", &crate::files::random_suffix()[..8]))
}

fn chrono_like_timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant), UTC.
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Registers an fd we own with the reactor.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and is moved into the AsyncFd, which
    // deregisters it before dropping it.
    unsafe { AsyncFd::register(inner) }
        .map_err(|e| anyhow::anyhow!("registering with the reactor: {}", e.into_parts().1))
}

enum Target {
    Attached { pidfd: AsyncFd<std::os::fd::OwnedFd> },
    Launched(launch::Launched),
    Cgroup(Box<CgroupState>),
}

pub fn record(opts: RecordOptions) -> Result<Recorded> {
    preflight::require_root()?;
    preflight::raise_fd_limit();
    preflight::require_btf()?;
    preflight::ensure_tracefs()?;
    // Clear errors before anything else happens (and before any directory is made).
    match &opts.target {
        TargetSpec::Pid(pid) => {
            let info = ProcessInfo::inspect(*pid)?;
            if opts.lenses.alloc {
                info.require_allocator()?;
            }
        }
        TargetSpec::Cgroup(dir) => {
            CgroupTarget::resolve(dir, &CgroupMounts::read()?)?;
        }
        TargetSpec::Container { id, wait_for_start } => {
            let found = CgroupTarget::from_container(id, &CgroupMounts::read()?);
            if !wait_for_start || found.as_ref().is_err_and(|e| !CgroupTarget::not_started(e)) {
                found?;
            }
        }
        TargetSpec::Command(_) => {}
    }
    let listener = opts.serve.map(crate::serve::bind).transpose()?;
    let mut output = match &opts.output {
        Some(dir) => OutputDir::create(dir, false)?,
        None => OutputDir::create(&default_output(&opts.target), true)?,
    };
    let new_dir = output.take_new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let recorded = runtime.block_on(run(opts, output, listener));
    if recorded.is_err() {
        // A run that failed before writing anything (e.g. the target exited
        // while the probes were being attached) leaves no empty directory.
        if let Some(dir) = new_dir {
            dir.remove_if_empty();
        }
    }
    recorded
}

async fn run(
    opts: RecordOptions,
    output: OutputDir,
    listener: Option<std::net::TcpListener>,
) -> Result<Recorded> {
    // Installed first: a signal from the moment we say we are attached ends the session cleanly.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // A closed terminal or a dropped ssh session ends the recording like Ctrl-C.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut session = Session::start(opts, output, listener)?;
    let root = session.info.pid;
    let deadline = session.opts.duration.map(|d| tokio::time::Instant::now() + d);
    let warmup_deadline = session.opts.warmup.after.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sample = tokio::time::interval(session.opts.interval);
    // The kernel side wakes us only when events pile up (see profiler-ebpf).
    let mut drain_timer = tokio::time::interval(Duration::from_millis(10));
    let mut marker = MarkerRelay::start(&mut session);
    let end_reason = loop {
        tokio::select! {
            guard = session.ring.readable_mut() => {
                let mut guard = guard?;
                // A batch, then back to the runtime: under a flood of events
                // the signals, timers and target events still get their turn
                // (signals are read by the runtime's driver, polled on a yield).
                if session::drain(guard.get_inner_mut(), &mut session.collector, Some(session::BATCH)) {
                    guard.retain_ready();
                    drop(guard);
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            _ = sigint.recv() => break "SIGINT".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
            _ = sighup.recv() => break "SIGHUP".to_string(),
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                break "duration elapsed".to_string()
            }
            event = next_target_event(&mut session.target, root) => {
                if let Some(end) = session.on_target_event(event) {
                    break end;
                }
            }
            _ = async { tokio::time::sleep_until(warmup_deadline.unwrap()).await },
                if warmup_deadline.is_some() && session.warmup_end.is_none() => session.end_warmup_now(),
            Some(line_end) = marker.rx.recv(), if session.warmup_end.is_none() => session.end_warmup_at_line(line_end),
            _ = drain_timer.tick() => session.on_drain_tick(),
            _ = sample.tick() => session.on_sample(),
            _ = tick.tick() => session.on_tick(),
        }
    };
    session.finish(end_reason, marker)
}

/// The next event of the target: the launched tree's tracer reports new
/// images and exits, an attached process its exit; a cgroup never ends.
async fn next_target_event(target: &mut Target, root: u32) -> Option<TargetEvent> {
    match target {
        Target::Launched(l) => l.events.recv().await,
        Target::Attached { pidfd } => {
            let _ = pidfd.readable().await;
            let how = crate::process::exit_of_zombie(root);
            Some(TargetEvent::Exit { pid: root, how, last: true, held: false })
        }
        // A cgroup does not exit: recording ends on a signal or --duration.
        Target::Cgroup(_) => std::future::pending().await,
    }
}

/// The stdout marker lines of a launched program, as its output is relayed.
struct MarkerRelay {
    /// The stdout offset just past each line containing the marker.
    rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
    /// Bytes of stdout relayed so far.
    relayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl MarkerRelay {
    /// Starts relaying a launched program's stdout when a marker is wanted.
    fn start(session: &mut Session) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let relayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let (Target::Launched(l), Some(marker)) = (&mut session.target, &session.opts.warmup.stdout_marker)
        {
            if let Some(stdout) = l.stdout.take() {
                relay_stdout(stdout, marker.clone(), tx, relayed.clone());
            }
        }
        Self { rx, relayed }
    }

    /// Waits (at most 1 s) until `written` stdout bytes are relayed; the
    /// marker line's end, if one was seen.
    fn catch_up(&mut self, written: u64) -> Option<u64> {
        let wait_until = Instant::now() + Duration::from_secs(1);
        while self.relayed.load(std::sync::atomic::Ordering::Acquire) < written && Instant::now() < wait_until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.rx.try_recv().ok()
    }
}

/// Copies the program's output to ours. Sends the stdout offset just past
/// each line containing the marker; `relayed` counts the bytes copied.
fn relay_stdout(
    stdout: std::process::ChildStdout,
    marker: String,
    seen: tokio::sync::mpsc::UnboundedSender<u64>,
    relayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut out = std::io::stdout();
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        let mut offset = 0u64;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => offset += n as u64,
            }
            let _ = out.write_all(&line).and_then(|_| out.flush());
            if String::from_utf8_lossy(&line).contains(&marker) {
                let _ = seen.send(offset);
            }
            relayed.store(offset, std::sync::atomic::Ordering::Release);
        }
    });
}
