//! A recording session: validate, find or launch the target, attach the
//! probes, drain events into the collector until the session ends (target
//! exit, `--duration`, SIGINT, SIGTERM), then build and write the report
//! while the target's address space still exists.

use std::{
    ffi::OsString,
    io::IsTerminal,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use profiler_common::{counters, syscalls, ALLOC_APIS};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    collector::Collector,
    ledger::Kind,
    preflight,
    probes::Probes,
    report::{
        flame,
        model::{
            Accuracy, CgroupInfo, ProcessSummary, SeriesReport, StackEntry, Status, TargetInfo, Total,
            SCHEMA_VERSION,
        },
        text, Report,
    },
    symbols::Symbols,
    target::{
        cgroup::{CgroupMounts, CgroupTarget},
        launch::{self, Control, TargetEvent},
        pidfd, ProcessInfo,
    },
};

/// Which C library each process has allocator probes on, so each image is
/// probed exactly once (two probes at one address would count calls twice).
#[derive(Default)]
struct ProbedProcesses {
    libc_of: std::collections::HashMap<u32, (u64, u64)>,
    /// Processes whose C library was not mapped yet when we looked.
    pending: std::collections::HashMap<u32, Instant>,
    /// C libraries probed for every process (cgroup mode), by (device, inode).
    everywhere: std::collections::HashSet<(u64, u64)>,
}

/// A process's C library: a path we can open (through its root, so a
/// container's own libc is found) and its (device, inode) identity.
fn libc_of(pid: u32) -> Result<(PathBuf, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let maps =
        crate::procmaps::ProcessMaps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let Some(libc) = maps.libc().filter(|_| maps.libc_code_mapped()) else {
        anyhow::bail!("no C library mapped");
    };
    let path = PathBuf::from(format!("/proc/{pid}/root{libc}"));
    let meta = std::fs::metadata(&path)?;
    Ok((path, (meta.dev(), meta.ino())))
}

impl ProbedProcesses {
    /// Attaches the allocator probes for `pid` unless its current C library
    /// already has them. Fails when the process has no C library (yet).
    fn ensure(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        let (path, id) = libc_of(pid)?;
        if self.libc_of.get(&pid) == Some(&id) {
            return Ok(());
        }
        probes.attach_allocator(&path, pid)?;
        self.libc_of.insert(pid, id);
        self.pending.remove(&pid);
        Ok(())
    }

    /// Cgroup mode: probes the process's C library for every process using
    /// it (once per library), filtered in the kernel by cgroup.
    fn ensure_everywhere(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        let (path, id) = libc_of(pid)?;
        if self.everywhere.insert(id) {
            if let Err(e) = probes.attach_allocator_everywhere(&path) {
                self.everywhere.remove(&id);
                return Err(e);
            }
        }
        self.pending.remove(&pid);
        Ok(())
    }

    /// `--follow` without ptrace: probe forked and exec'd processes as soon
    /// as their C library is mapped (retrying for a while).
    fn follow_up(&mut self, probes: &mut Probes, collector: &mut Collector) {
        let forks: Vec<u32> = collector.forks.drain(..).map(|(_, child)| child).collect();
        let execs: Vec<u32> = collector.execs.drain(..).collect();
        for pid in forks.into_iter().chain(execs) {
            // note_process already ran when the event was ingested.
            self.pending.insert(pid, Instant::now());
        }
        self.retry_pending(probes, false);
    }

    fn retry_pending(&mut self, probes: &mut Probes, everywhere: bool) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            let done =
                if everywhere { self.ensure_everywhere(probes, pid) } else { self.ensure(probes, pid) };
            if done.is_err() && self.pending[&pid].elapsed() > Duration::from_secs(5) {
                self.pending.remove(&pid);
            }
        }
    }

    /// Cgroup mode: picks up cgroups and processes that appeared, and
    /// processes that exec'd a new program.
    fn follow_cgroup(&mut self, probes: &mut Probes, collector: &mut Collector, cgroup: &mut CgroupState) {
        let ids: Vec<u64> = cgroup.target.ids().into_iter().filter(|id| cgroup.ids.insert(*id)).collect();
        if let Err(e) = probes.add_cgroups(&ids) {
            eprintln!("warning: {e:#}");
        }
        for pid in cgroup.target.processes() {
            if cgroup.processes.insert(pid) {
                if let Ok(maps) = crate::procmaps::ProcessMaps::read(pid) {
                    let brk = maps.heap_end().or_else(|| preflight::start_brk(pid));
                    collector.add_process(pid, maps, brk);
                }
                self.pending.insert(pid, Instant::now());
            }
        }
        for pid in collector.execs.drain(..) {
            self.pending.insert(pid, Instant::now());
        }
        collector.forks.clear();
        self.retry_pending(probes, true);
    }
}

/// What cgroup mode has seen so far.
struct CgroupState {
    target: CgroupTarget,
    mounts: CgroupMounts,
    ids: std::collections::HashSet<u64>,
    processes: std::collections::BTreeSet<u32>,
    last_scan: Instant,
}

/// What to profile.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    Pid(u32),
    Command(Vec<OsString>),
    /// Every process in a cgroup v2 directory and its descendants.
    Cgroup(PathBuf),
    /// The cgroup of a container, by id or unique id prefix.
    Container(String),
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
    pub ringbuf_bytes: u32,
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
    /// Also write a full numbered snapshot at every `interval` (long-running
    /// targets that free everything at exit, like Node with its Buffers).
    pub snapshots: bool,
}

/// How stacks are ranked within each kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Fastest growing first (outstanding size when no trend is known).
    #[default]
    Growth,
    /// Most outstanding bytes (or handles) first.
    Size,
    /// Most outstanding blocks first.
    Count,
}

impl RecordOptions {
    /// Options for recording `target` with every other setting at its default.
    pub fn new(target: TargetSpec) -> Self {
        Self {
            target,
            duration: None,
            output: None,
            top: 10,
            ringbuf_bytes: 16 << 20,
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
            snapshots: false,
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
        TargetSpec::Container(id) => format!("container-{id}"),
    };
    let ts = chrono_like_timestamp();
    PathBuf::from(format!("profile-{name}-{ts}"))
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
    preflight::require_btf()?;
    preflight::ensure_tracefs()?;
    let output = opts.output.clone().unwrap_or_else(|| default_output(&opts.target));
    preflight::prepare_output_dir(&output)?;
    // Clear errors before anything else happens.
    match &opts.target {
        TargetSpec::Pid(pid) => {
            ProcessInfo::inspect(*pid)?;
        }
        TargetSpec::Cgroup(dir) => {
            CgroupTarget::resolve(dir, &CgroupMounts::read()?)?;
        }
        TargetSpec::Container(id) => {
            CgroupTarget::from_container(id, &CgroupMounts::read()?)?;
        }
        TargetSpec::Command(_) => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(opts, output))
}

async fn run(opts: RecordOptions, output: PathBuf) -> Result<Recorded> {
    let (info, mut target) = match &opts.target {
        TargetSpec::Pid(pid) => {
            let info = ProcessInfo::inspect(*pid)?;
            let fd = watch(pidfd(*pid)?)?;
            (info, Target::Attached { pidfd: fd })
        }
        TargetSpec::Command(argv) => {
            let launched = launch::launch(argv, opts.warmup.stdout_marker.is_some())?;
            (launched.info.clone(), Target::Launched(launched))
        }
        TargetSpec::Cgroup(_) | TargetSpec::Container(_) => {
            let mounts = CgroupMounts::read()?;
            let target = match &opts.target {
                TargetSpec::Cgroup(dir) => CgroupTarget::resolve(dir, &mounts)?,
                TargetSpec::Container(id) => CgroupTarget::from_container(id, &mounts)?,
                _ => unreachable!(),
            };
            let info = ProcessInfo {
                pid: 0,
                command: format!("cgroup {}", target.dir.display()),
                name: "cgroup".into(),
                libc: PathBuf::new(),
                maps: Default::default(),
            };
            let state = CgroupState {
                target,
                mounts,
                ids: Default::default(),
                processes: Default::default(),
                last_scan: Instant::now(),
            };
            (info, Target::Cgroup(Box::new(state)))
        }
    };
    // Launch mode follows the whole tree; --pid only with --follow.
    let follow = matches!(target, Target::Launched(_)) || opts.follow;
    let mut probed = ProbedProcesses::default();
    let cgroup_mode = matches!(target, Target::Cgroup(_));
    let mut attach = || -> Result<Probes> {
        let mut probes = Probes::load(opts.ringbuf_bytes)?;
        probes.attach_syscalls()?;
        probes.attach_process_tracepoints(follow)?;
        if cgroup_mode {
            return Ok(probes);
        }
        probes.add_target(info.pid)?;
        probed.ensure(&mut probes, info.pid)?;
        if let Some(function) = &opts.warmup.function {
            probes.attach_marker(Path::new(&format!("/proc/{}/exe", info.pid)), function, info.pid)?;
        }
        Ok(probes)
    };
    let mut probes = match attach() {
        Ok(p) => p,
        Err(e) => {
            if let Target::Launched(l) = &mut target {
                let _ = l.control.send(Control::Kill);
                l.join();
            }
            return Err(e);
        }
    };
    let mut ring = watch(probes.take_ringbuf()?)?;
    let mut collector = Collector::default();
    let initial_brk = match &target {
        Target::Attached { .. } => info.maps.heap_end().or_else(|| preflight::start_brk(info.pid)),
        Target::Launched(_) => preflight::start_brk(info.pid),
        Target::Cgroup(_) => None,
    };
    match &mut target {
        Target::Cgroup(cgroup) => probed.follow_cgroup(&mut probes, &mut collector, cgroup),
        _ => collector.add_process(info.pid, info.maps.clone(), initial_brk),
    }
    for (api, alias) in &probes.aliases {
        collector.add_alias(*api, *alias);
    }

    let started = Instant::now();
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mode = match &target {
        Target::Cgroup(_) => "cgroup",
        Target::Attached { .. } => "attach",
        Target::Launched(l) => {
            l.control.send(Control::Resume).ok();
            "launch"
        }
    };
    let interactive = std::io::stderr().is_terminal();
    eprintln!(
        "profiling pid {} ({}); {}",
        info.pid,
        info.command,
        match opts.duration {
            Some(d) => format!("for {}s, Ctrl-C to stop early", d.as_secs_f64()),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_events = (Instant::now(), 0u64);
    let mut sample = tokio::time::interval(opts.interval);
    let mounts = CgroupMounts::read().unwrap_or_default();
    let resident = |target: &Target| -> Option<u64> {
        match target {
            Target::Cgroup(cg) => cg.target.memory(&cg.mounts).map(|m| m.usage),
            _ => rss_of(info.pid),
        }
    };
    // The kernel side wakes us only when events pile up (see profiler-ebpf).
    let mut drain = tokio::time::interval(Duration::from_millis(10));
    let mut held_at_exit = false;
    let mut warmup_end: Option<String> = None;
    let warmup_deadline = opts.warmup.after.map(|d| tokio::time::Instant::now() + d);
    let (marker_tx, mut marker_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let relayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let (Target::Launched(l), Some(marker)) = (&mut target, &opts.warmup.stdout_marker) {
        if let Some(stdout) = l.stdout.take() {
            relay_stdout(stdout, marker.clone(), marker_tx, relayed.clone());
        }
    }
    let mut snapshots_written = 0usize;
    let mut crossed = 0usize;
    let mut end_reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    collector.ingest(&item);
                }
                guard.clear_ready();
            }
            _ = sigint.recv() => break "SIGINT".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                break "duration elapsed".to_string()
            }
            ev = async {
                match &mut target {
                    Target::Launched(l) => l.events.recv().await,
                    Target::Attached { pidfd } => {
                        let _ = pidfd.readable().await;
                        Some(TargetEvent::Exited("exited".into()))
                    }
                    // A cgroup does not exit: recording ends on a signal or --duration.
                    Target::Cgroup(_) => std::future::pending().await,
                }
            } => {
                match ev {
                    Some(TargetEvent::NewImage { pid, how }) => {
                        // Held stopped by the tracer until this is done.
                        while let Some(item) = ring.get_mut().next() {
                            collector.ingest(&item);
                        }
                        collector.note_process(pid);
                        if how != launch::NewImage::Fork {
                            collector.snapshot_process(pid);
                        }
                        if how != launch::NewImage::ExecWithoutLibc {
                            if let Err(e) = probed.ensure(&mut probes, pid) {
                                eprintln!("warning: no heap probes for pid {pid}: {e:#}");
                            }
                        }
                        if let Target::Launched(l) = &target {
                            let _ = l.control.send(Control::Resume);
                        }
                    }
                    Some(TargetEvent::ProcessExiting { .. }) => {
                        // Held at exit: take its events while its maps still exist.
                        while let Some(item) = ring.get_mut().next() {
                            collector.ingest(&item);
                        }
                        if let Target::Launched(l) = &target {
                            let _ = l.control.send(Control::Resume);
                        }
                    }
                    Some(TargetEvent::Exiting(how)) => { held_at_exit = true; break format!("target exited ({how})") }
                    Some(TargetEvent::Exited(how)) => break format!("target exited ({how})"),
                    None => break "target exited".to_string(),
                }
            }
            _ = async { tokio::time::sleep_until(warmup_deadline.unwrap()).await },
                if warmup_deadline.is_some() && warmup_end.is_none() => {
                while let Some(item) = ring.get_mut().next() {
                    collector.ingest(&item);
                }
                collector.exclude_live();
                warmup_end = Some(format!("after {:.1}s", started.elapsed().as_secs_f64()));
            }
            Some(line_end) = marker_rx.recv(), if warmup_end.is_none() => {
                while let Some(item) = ring.get_mut().next() {
                    collector.ingest(&item);
                }
                warmup_end = Some(exclude_before_marker_line(&mut collector, line_end, &opts.warmup));
            }
            _ = drain.tick() => {
                while let Some(item) = ring.get_mut().next() {
                    collector.ingest(&item);
                }
                match &mut target {
                    Target::Cgroup(cgroup) => {
                        if cgroup.last_scan.elapsed() > Duration::from_millis(200) {
                            cgroup.last_scan = Instant::now();
                            probed.follow_cgroup(&mut probes, &mut collector, cgroup);
                        }
                    }
                    Target::Attached { .. } if follow => probed.follow_up(&mut probes, &mut collector),
                    _ => {
                        // The tracer announces new images itself.
                        collector.forks.clear();
                        collector.execs.clear();
                    }
                }
            }
            _ = sample.tick() => {
                while let Some(item) = ring.get_mut().next() {
                    collector.ingest(&item);
                }
                let now = resident(&target);
                collector.sample(started.elapsed().as_secs_f64(), now);
                // --snapshot-at: a full numbered snapshot when memory crosses each threshold.
                let level = now.unwrap_or_else(|| collector.ledger.total(Kind::Heap).bytes);
                // --snapshot-at: when memory crosses each threshold; --snapshots: every sample.
                let mut due: Vec<(String, String)> = Vec::new();
                while let Some(&threshold) = opts.snapshot_at.get(crossed) {
                    if level < threshold {
                        break;
                    }
                    crossed += 1;
                    let size = flame::human_bytes(threshold).replace(' ', "");
                    due.push((size, format!("memory reached {} ({})", flame::human_bytes(level), flame::human_bytes(threshold))));
                }
                if opts.snapshots {
                    due.push(("periodic".into(), format!("periodic snapshot at {:.0}s", started.elapsed().as_secs_f64())));
                }
                for (label, reason) in due {
                    snapshots_written += 1;
                    let dir = output.join(format!("snapshot-{snapshots_written:03}-{label}"));
                    collector.name_jit_frames();
                    let context = ReportContext { probes: &probes, info: &info, mode, started_at, opts: &opts, target: &target, mounts: &mounts };
                    match context.report(&collector, started.elapsed(), format!("snapshot: {reason}"), None).and_then(|r| write_snapshot(&r, &dir, &opts)) {
                        Ok(()) if !opts.snapshots => eprintln!("{}wrote snapshot {}", if interactive { "\n" } else { "" }, dir.display()),
                        Ok(()) => {}
                        Err(e) => eprintln!("warning: snapshot {} failed: {e:#}", dir.display()),
                    }
                }
            }
            _ = tick.tick() => {
                if interactive {
                    eprint!("\r{}\x1b[K", status_line(&collector, &probes, started.elapsed(), &mut last_events));
                }
            }
        }
    };
    if interactive {
        eprintln!();
    }
    // Everything the target did before the end is already in the ring buffer.
    while let Some(item) = ring.get_mut().next() {
        collector.ingest(&item);
    }
    if opts.warmup.stdout_marker.is_some() && warmup_end.is_none() {
        // The marker line may still be in the pipe: let the relay catch up with what was written.
        let wait_until = Instant::now() + Duration::from_secs(1);
        while relayed.load(std::sync::atomic::Ordering::Acquire) < collector.stdout_written
            && Instant::now() < wait_until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(line_end) = marker_rx.try_recv() {
            warmup_end = Some(exclude_before_marker_line(&mut collector, line_end, &opts.warmup));
        }
    }

    if warmup_end.is_none() {
        if let (Some(function), Some(_)) = (&opts.warmup.function, collector.marker_seen_at) {
            warmup_end = Some(format!("at the last call of {function}()"));
        }
    }
    collector.sample(started.elapsed().as_secs_f64(), resident(&target));
    if !collector.oom_killed.is_empty() {
        end_reason = format!("OOM-killed (pid {:?}): {end_reason}", collector.oom_killed);
    }
    let warmup_note = match (&warmup_end, opts.warmup.is_set()) {
        (Some(end), _) => Some(format!("excluded everything live {end}")),
        (None, true) => Some("requested, but the warm-up never ended: nothing excluded".to_string()),
        (None, false) => None,
    };
    collector.name_jit_frames();
    let context = ReportContext {
        probes: &probes,
        info: &info,
        mode,
        started_at,
        opts: &opts,
        target: &target,
        mounts: &mounts,
    };
    let report = context.report(&collector, started.elapsed(), end_reason, warmup_note)?;
    let written = write_outputs(&report, &output, opts.top, opts.group_by);

    // Only now may the target go: its address space was needed for the report.
    if let Target::Launched(l) = &mut target {
        let _ = l.control.send(if held_at_exit { Control::Release } else { Control::Detach });
        l.join();
    }
    drop(ring);
    drop(probes);
    written?;
    if opts.print_summary {
        print!("{}", text::render(&report, opts.top));
    }
    let flamegraphs: Vec<String> = report
        .totals
        .keys()
        .filter(|k| report.entries(k).next().is_some())
        .map(|k| format!("{k}.svg"))
        .collect();
    let flamegraphs =
        if flamegraphs.is_empty() { "none, nothing outstanding".to_string() } else { flamegraphs.join(", ") };
    eprintln!("wrote {} (report.txt, report.json; flamegraphs: {flamegraphs})", output.display());
    Ok(Recorded { report, output })
}

/// The live status line (on a terminal only): elapsed, outstanding by kind,
/// growth rate, events per second, lost events.
fn status_line(
    collector: &Collector,
    probes: &Probes,
    elapsed: Duration,
    last: &mut (Instant, u64),
) -> String {
    let rate = (collector.events_received - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
    *last = (Instant::now(), collector.events_received);
    let heap = collector.ledger.total(Kind::Heap);
    let mapped = collector.ledger.total(Kind::Mmap).bytes + collector.ledger.total(Kind::Brk).bytes;
    let handles: u64 =
        Kind::ALL.iter().filter(|k| !k.is_memory()).map(|k| collector.ledger.total(*k).count).sum();
    let series = &collector.series;
    let heap_points: Vec<(f64, f64)> = series
        .times
        .iter()
        .zip(series.totals.get(&Kind::Heap).into_iter().flatten())
        .map(|(t, v)| (*t, *v as f64))
        .collect();
    let growth = crate::trend::robust_slope(&heap_points).map_or(String::new(), |s| {
        format!(" ({}{}/min)", if s < 0.0 { "-" } else { "+" }, flame::human_bytes((s.abs() * 60.0) as u64))
    });
    let lost = probes.counters().map(|c| c[counters::RINGBUF_DROPS]).unwrap_or(0);
    format!(
        "{:>5.0}s  heap {}{growth} in {} blocks  mapped {}  handles {}  {:.0} events/s  lost {lost}",
        elapsed.as_secs_f64(),
        flame::human_bytes(heap.bytes),
        heap.count,
        flame::human_bytes(mapped),
        handles,
        rate
    )
}

/// What every report of a session shares.
struct ReportContext<'a> {
    probes: &'a Probes,
    info: &'a ProcessInfo,
    mode: &'a str,
    started_at: u64,
    opts: &'a RecordOptions,
    target: &'a Target,
    mounts: &'a CgroupMounts,
}

impl ReportContext<'_> {
    /// The complete report of what is outstanding now.
    fn report(
        &self,
        collector: &Collector,
        elapsed: Duration,
        end_reason: String,
        warmup: Option<String>,
    ) -> Result<Report> {
        let kernel = self.probes.counters()?;
        let mut report = build_report(
            collector,
            self.probes,
            &kernel,
            self.info,
            self.mode,
            self.started_at,
            elapsed,
            end_reason,
            self.opts,
        );
        if let Target::Cgroup(cgroup) = self.target {
            report.cgroup = Some(CgroupInfo {
                path: cgroup.target.dir.display().to_string(),
                memory: cgroup.target.memory(&cgroup.mounts),
            });
        }
        report.status = status(&report, collector, self.opts, self.target, self.mounts, self.info.pid);
        report.processes = summarize_processes(&report);
        report.warmup = warmup;
        Ok(report)
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    collector: &Collector,
    probes: &Probes,
    kernel: &[u64; counters::COUNT],
    info: &ProcessInfo,
    mode: &str,
    started_at: u64,
    elapsed: Duration,
    end_reason: String,
    opts: &RecordOptions,
) -> Report {
    let mut stacks = collector.entries(&Symbols::default(), monotonic_ns(), opts.min_age.as_nanos() as u64);
    sort_entries(&mut stacks, opts.sort);
    for e in &mut stacks {
        e.class = crate::report::split::classify(e).map(str::to_string);
    }
    let memory_split = crate::report::split::split(&stacks);
    let unnamed_jit_frames = stacks
        .iter()
        .flat_map(|e| &e.frames)
        .filter(|f| f.module == "[jit]" && f.function.starts_with("[jit]+"))
        .count() as u64;
    let series = &collector.series;
    let series = SeriesReport {
        interval_s: opts.interval.as_secs_f64(),
        times: series.times.clone(),
        totals: series.totals.iter().map(|(k, v)| (k.name().to_string(), v.clone())).collect(),
        rss: series.rss.clone(),
    };
    let totals = Kind::ALL
        .iter()
        .map(|k| {
            let o = collector.ledger.total(*k);
            let bytes = if k.is_memory() { o.bytes } else { 0 };
            (k.name().to_string(), Total { bytes, count: o.count })
        })
        .collect();
    let mut calls_seen = std::collections::BTreeMap::new();
    for api in ALLOC_APIS {
        calls_seen.insert(api.symbol().to_string(), kernel[counters::API_CALLS + api as usize]);
    }
    for (i, (_, name)) in syscalls::TRACED.iter().enumerate() {
        calls_seen.insert(name.to_string(), kernel[counters::SYSCALLS + i]);
    }
    Report {
        schema_version: SCHEMA_VERSION,
        profiler_version: env!("CARGO_PKG_VERSION").to_string(),
        target: TargetInfo {
            pid: info.pid,
            command: info.command.clone(),
            mode: mode.to_string(),
            libc: info.maps.libc().unwrap_or_default().to_string(),
        },
        started_at,
        duration_s: elapsed.as_secs_f64(),
        end_reason,
        warmup: None,
        totals,
        processes: Vec::new(),
        cgroup: None,
        series: Some(series),
        status: None,
        memory_split,
        handles: {
            let mut handles: std::collections::BTreeMap<String, std::collections::BTreeMap<String, _>> =
                Default::default();
            for ((kind, detail), count) in collector.ledger.handle_counts() {
                handles.entry(kind.name().to_string()).or_default().insert(detail.to_string(), count);
            }
            handles
        },
        stacks,
        accuracy: Accuracy {
            calls_seen,
            events_received: collector.events_received,
            undecodable_events: collector.undecodable_events,
            stack_failures: collector.stack_failures.max(kernel[counters::STACK_FAILED]),
            truncated_stacks: collector.truncated_stacks,
            unnamed_jit_frames,
            perf_map_garbage_lines: collector.perf_map_garbage(),
            ringbuf_drops: kernel[counters::RINGBUF_DROPS],
            inflight_map_full: kernel[counters::INFLIGHT_MAP_FULL],
            inflight_syscall_map_full: kernel[counters::INFLIGHT_SYSCALL_MAP_FULL],
            nested_calls: kernel[counters::NESTED_CALLS],
            failed_allocations: kernel[counters::FAILED_ALLOCS],
            unmatched_returns: kernel[counters::UNMATCHED_RETURNS],
            ledger: collector.ledger.counters,
            probes_skipped: probes.skipped.clone(),
            probes_attached: probes.attached.clone(),
        },
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

/// Ends the warm-up at the `write` that carried the marker line (exact even
/// though the line is read later); returns how it ended, for the report.
fn exclude_before_marker_line(collector: &mut Collector, line_end: u64, warmup: &Warmup) -> String {
    let marker = warmup.stdout_marker.as_deref().unwrap_or_default();
    match collector.stdout_write_time(line_end.saturating_sub(1)) {
        Some(ts) => {
            collector.exclude_allocated_before(ts);
            format!("at the write of output line {marker:?}")
        }
        None => {
            // The write event was lost: fall back to the moment the line was read.
            collector.exclude_live();
            format!("when output line {marker:?} was read (its write was not seen; approximate)")
        }
    }
}

/// Resident set size of a process, from /proc.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Ranks entries within each kind (kinds keep their order).
fn sort_entries(entries: &mut [StackEntry], by: SortBy) {
    let kind_rank = |e: &StackEntry| Kind::ALL.iter().position(|k| k.name() == e.kind);
    entries.sort_by(|a, b| {
        let key = |e: &StackEntry| -> (f64, u64) {
            match by {
                SortBy::Growth => (e.trend.map_or(0.0, |t| t.growth_per_min), flame::value(e)),
                SortBy::Size => (flame::value(e) as f64, e.count),
                SortBy::Count => (e.count as f64, flame::value(e)),
            }
        };
        let (ka, kb) = (key(a), key(b));
        kind_rank(a).cmp(&kind_rank(b)).then(kb.0.total_cmp(&ka.0)).then(kb.1.cmp(&ka.1))
    });
}

/// Overall growth (of RSS or the cgroup's usage when known, else of the
/// outstanding memory) against the thresholds, and the time to the limit.
fn status(
    report: &Report,
    collector: &Collector,
    opts: &RecordOptions,
    target: &Target,
    mounts: &CgroupMounts,
    pid: u32,
) -> Option<Status> {
    let series = &collector.series;
    let resident: Vec<(f64, f64)> =
        series.times.iter().zip(&series.rss).filter_map(|(t, r)| r.map(|r| (*t, r as f64))).collect();
    let (points, measured_on) = if resident.len() >= 2 {
        (resident, if matches!(target, Target::Cgroup(_)) { "cgroup usage" } else { "rss" })
    } else {
        let outstanding: Vec<(f64, f64)> = series
            .times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let sum: u64 = Kind::ALL
                    .iter()
                    .filter(|k| k.is_memory())
                    .map(|k| series.totals.get(k).and_then(|v| v.get(i)).copied().unwrap_or(0))
                    .sum();
                (*t, sum as f64)
            })
            .collect();
        (outstanding, "outstanding")
    };
    let current = points.last()?.1 as u64;
    let per_min = crate::trend::robust_slope(&points).unwrap_or(0.0) * 60.0;
    let (limit, source) = match (opts.limit, report.cgroup.as_ref().and_then(|c| c.memory.clone())) {
        (Some(l), _) => (Some(l), Some("--limit".to_string())),
        (None, Some(m)) => (m.limit, m.limit.map(|_| m.controller)),
        (None, None) => match crate::target::cgroup::memory_of_process(pid, mounts) {
            Some(m) => (m.limit, m.limit.map(|_| m.controller)),
            None => (None, None),
        },
    };
    let mib = per_min / (1024.0 * 1024.0);
    Some(Status {
        growth_mib_per_min: mib,
        level: opts.thresholds.level(mib).to_string(),
        measured_on: measured_on.to_string(),
        current_bytes: current,
        limit_bytes: limit,
        limit_source: source,
        time_to_limit_s: limit.and_then(|l| crate::trend::time_to_limit(current, l, per_min)),
    })
}

/// Outstanding totals per process, from the per-stack entries.
fn summarize_processes(report: &Report) -> Vec<ProcessSummary> {
    let mut by_pid: std::collections::BTreeMap<u32, ProcessSummary> = Default::default();
    for e in &report.stacks {
        let p = by_pid.entry(e.pid).or_insert_with(|| ProcessSummary {
            pid: e.pid,
            command: e.command.clone(),
            totals: Default::default(),
        });
        let t = p.totals.entry(e.kind.clone()).or_default();
        t.bytes += e.bytes;
        t.count += e.count;
    }
    by_pid.into_values().collect()
}

fn write_snapshot(report: &Report, dir: &Path, opts: &RecordOptions) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_outputs(report, dir, opts.top, opts.group_by)
}

/// Writes report.json, report.txt and, per kind with anything outstanding,
/// `<kind>.folded` and `<kind>.svg`.
pub fn write_outputs(report: &Report, dir: &Path, top: usize, group: flame::GroupBy) -> Result<()> {
    let write = |name: &str, data: &[u8]| {
        std::fs::write(dir.join(name), data).with_context(|| format!("writing {}", dir.join(name).display()))
    };
    write("report.json", &serde_json::to_vec_pretty(report)?)?;
    write("profile.pb.gz", &crate::report::pprof::encode(report)?)?;
    write("report.txt", text::render(report, top).as_bytes())?;
    for kind in report.totals.keys() {
        let lines = flame::folded(report, kind, group);
        if lines.is_empty() {
            continue;
        }
        write(&format!("{kind}.folded"), (lines.join("\n") + "\n").as_bytes())?;
        write(&format!("{kind}.svg"), &flame::svg(report, kind, &lines)?)?;
    }
    Ok(())
}
