//! A recording session: validate, find or launch the target, attach the
//! probes, drain events into the collector until the session ends (target
//! exit, `--duration`, SIGINT, SIGTERM, SIGHUP), then build and write the report
//! while the target's address space still exists.

mod assemble;
mod live;
mod probed;

use assemble::{write_outputs, write_snapshot, ReportContext};
use probed::{CgroupState, ProbedProcesses};

use std::{
    ffi::OsString,
    io::IsTerminal,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    collector::Collector,
    files::output::OutputDir,
    kernel::placement::PlacementMode,
    kernel::preflight,
    kernel::probes::{ProbeSettings, Probes},
    ledger::Kind,
    lens::Lenses,
    process::{
        cgroup::{CgroupMounts, CgroupTarget},
        launch::{self, Control, TargetEvent},
        pidfd, ProcessInfo,
    },
    report::{flame, model::TargetExit, text, Report},
    stacks::unwind::StackWalk,
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
    /// Periodic snapshots kept: past this many the oldest is removed.
    pub keep_snapshots: usize,
    /// Serve /metrics, /debug/pprof/<kind> and /report.json here while recording.
    pub serve: Option<std::net::SocketAddr>,
    pub lenses: Lenses,
    /// Alloc lens: mean bytes between sampled allocations (0: every call).
    pub sample_bytes: u64,
    pub placement: PlacementMode,
    pub stack_walk: StackWalk,
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
            keep_snapshots: 100,
            serve: None,
            lenses: Lenses::default(),
            sample_bytes: 0,
            placement: PlacementMode::default(),
            stack_walk: StackWalk::default(),
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
        TargetSpec::Cgroup(_) | TargetSpec::Container { .. } => {
            let mounts = CgroupMounts::read()?;
            let (target, awaited) = match &opts.target {
                TargetSpec::Cgroup(dir) => (Some(CgroupTarget::resolve(dir, &mounts)?), None),
                TargetSpec::Container { id, wait_for_start } => {
                    match CgroupTarget::from_container(id, &mounts) {
                        Ok(found) => (Some(found), None),
                        Err(e) if *wait_for_start && CgroupTarget::not_started(&e) => {
                            eprintln!("waiting for container {id} to start");
                            (None, Some(id.clone()))
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => unreachable!(),
            };
            let command = match (&target, &awaited) {
                (Some(t), _) => format!("cgroup {}", t.dir.display()),
                (None, id) => format!("container {}", id.as_deref().unwrap_or_default()),
            };
            let info = ProcessInfo { pid: 0, command, name: "cgroup".into(), maps: Default::default() };
            let state = CgroupState {
                target,
                awaited,
                scanned: false,
                warned: false,
                mounts,
                ids: Default::default(),
                processes: Default::default(),
                last_scan: Instant::now(),
            };
            (info, Target::Cgroup(Box::new(state)))
        }
    };
    // Launch mode follows the whole tree; --pid only with --follow.
    let launched = matches!(target, Target::Launched(_));
    let follow = launched || opts.follow;
    let cgroup_mode = matches!(target, Target::Cgroup(_));
    let mut probed = ProbedProcesses::new(opts.lenses.alloc, follow || cgroup_mode);
    let mut attach = || -> Result<Probes> {
        // Without ptrace, a process exec'ing another program (maybe with another C library) is held by the kernel.
        let hold_at_exec = opts.lenses.alloc && (cgroup_mode || (follow && !launched));
        let settings = ProbeSettings {
            cgroup_mode,
            sample_bytes: opts.sample_bytes,
            placement: opts.placement,
            hold_at_exec,
        };
        let mut probes = Probes::load(opts.ringbuf_bytes, settings)?;
        if opts.stack_walk == StackWalk::FramePointers {
            probes.tables.disable();
        }
        probes.attach_syscalls(opts.lenses.handles, opts.warmup.stdout_marker.is_some())?;
        probes.attach_process_tracepoints(follow)?;
        if opts.lenses.resident {
            probes.attach_page_faults()?;
        }
        if cgroup_mode {
            // A process that starts in the cgroup later with this machine's
            // C library is covered from its first allocation (the scan that
            // finds it comes later): probe ours, for every process, up front.
            probed.prime_with_own_images(&mut probes);
            return Ok(probes);
        }
        probes.add_target(info.pid)?;
        track_stacks(&mut probes, info.pid);
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
            if !cgroup_mode && !Path::new(&format!("/proc/{}", info.pid)).exists() {
                return Err(
                    e.context(format!("process {} exited while the profiler was attaching", info.pid))
                );
            }
            return Err(e);
        }
    };
    let mut ring = watch(probes.take_ringbuf()?)?;
    let mut collector = Collector::default();
    collector.sample_bytes = opts.sample_bytes;
    collector.follows_children = follow || cgroup_mode;
    let initial_brk = match &target {
        Target::Attached { .. } => info.maps.heap_end().or_else(|| preflight::start_brk(info.pid)),
        Target::Launched(_) => preflight::start_brk(info.pid),
        Target::Cgroup(_) => None,
    };
    match &mut target {
        Target::Cgroup(cgroup) => probed.follow_cgroup(&mut probes, &mut collector, cgroup),
        _ => {
            collector.set_root(info.pid);
            collector.add_process(info.pid, info.maps.clone(), initial_brk)
        }
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
    let mounts = CgroupMounts::read().unwrap_or_default();
    let mut symbols = crate::stacks::symbols::Symbols::default();
    // What every report of the session shares, taken where a report is built
    // (`target` is borrowed mutably by the event loop in between).
    macro_rules! report_context {
        () => {
            ReportContext {
                probes: &probes,
                info: &info,
                mode,
                started_at,
                opts: &opts,
                target: &target,
                mounts: &mounts,
                symbols: &symbols,
            }
        };
    }
    let publisher = match listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let publisher = crate::serve::start(listener)?;
            let context = report_context!();
            publisher.publish(context.report(&mut collector, started.elapsed(), "recording".into(), None)?);
            eprintln!(
                "serving http://{addr}/metrics, http://{addr}/debug/pprof/<kind>, http://{addr}/report.json"
            );
            Some(publisher)
        }
        None => None,
    };
    eprintln!(
        "profiling pid {} ({}); {}",
        info.pid,
        info.command,
        match opts.duration {
            Some(d) => format!("for {}s, Ctrl-C to stop early", d.as_secs_f64()),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let mut target_exit = None;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut live = live::Live::new(interactive, opts.duration);
    let mut sample = tokio::time::interval(opts.interval);
    let resident = |target: &Target| -> Option<u64> {
        match target {
            Target::Cgroup(cg) => cg.target.as_ref()?.memory(&cg.mounts).map(|m| m.usage),
            _ => crate::process::rss_of(info.pid),
        }
    };
    // The kernel side wakes us only when events pile up (see profiler-ebpf).
    let mut drain_timer = tokio::time::interval(Duration::from_millis(10));
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
    // Periodic snapshots kept, oldest first.
    let mut periodic = std::collections::VecDeque::new();
    let mut crossed = 0usize;
    let mut end_reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // A batch, then back to the runtime: under a flood of events
                // the signals, timers and target events still get their turn
                // (signals are read by the runtime's driver, polled on a yield).
                if drain(guard.get_inner_mut(), &mut collector, Some(BATCH)) {
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
            ev = async {
                match &mut target {
                    Target::Launched(l) => l.events.recv().await,
                    Target::Attached { pidfd } => {
                        let _ = pidfd.readable().await;
                        let how = crate::process::exit_of_zombie(info.pid);
                        Some(TargetEvent::Exit { pid: info.pid, how, last: true, held: false })
                    }
                    // A cgroup does not exit: recording ends on a signal or --duration.
                    Target::Cgroup(_) => std::future::pending().await,
                }
            } => {
                match ev {
                    Some(TargetEvent::NewImage { pid, how }) => {
                        // Held stopped by the tracer until this is done.
                        drain(ring.get_mut(), &mut collector, None);
                        collector.note_process(pid);
                        if how != launch::NewImage::Fork {
                            collector.snapshot_process(pid);
                        }
                        track_stacks(&mut probes, pid);
                        if how != launch::NewImage::ExecWithoutLibc {
                            if let Err(e) = probed.ensure(&mut probes, pid) {
                                eprintln!("warning: no heap probes for pid {pid}: {e:#}");
                            }
                        }
                        if let Target::Launched(l) = &target {
                            let _ = l.control.send(Control::Resume);
                        }
                    }
                    Some(TargetEvent::Exit { pid, how, last, held }) => {
                        if pid == info.pid {
                            target_exit = Some(how.clone());
                        }
                        if last {
                            // Held until the report is written.
                            held_at_exit = held;
                            break tree_end_reason(info.pid, pid, &how, target_exit.as_ref());
                        }
                        if held {
                            // Take its events while its maps still exist.
                            drain(ring.get_mut(), &mut collector, None);
                            collector.name_jit_frames();
                            if let Target::Launched(l) = &target {
                                let _ = l.control.send(Control::Resume);
                            }
                        }
                    }
                    None => break "target exited".to_string(),
                }
            }
            _ = async { tokio::time::sleep_until(warmup_deadline.unwrap()).await },
                if warmup_deadline.is_some() && warmup_end.is_none() => {
                drain(ring.get_mut(), &mut collector, None);
                collector.exclude_live();
                warmup_end = Some(format!("after {:.1}s", started.elapsed().as_secs_f64()));
            }
            Some(line_end) = marker_rx.recv(), if warmup_end.is_none() => {
                drain(ring.get_mut(), &mut collector, None);
                warmup_end = Some(exclude_before_marker_line(&mut collector, line_end, &opts.warmup));
            }
            _ = drain_timer.tick() => {
                drain(ring.get_mut(), &mut collector, Some(BATCH));
                probed.release_held(&mut probes, &mut collector);
                for pid in std::mem::take(&mut collector.mapped_files) {
                    track_stacks(&mut probes, pid);
                }
                match &mut target {
                    Target::Cgroup(cgroup) => {
                        // A container awaited is looked for at every tick: found before its program starts.
                        if cgroup.target.is_none() || cgroup.last_scan.elapsed() > Duration::from_millis(200) {
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
                drain(ring.get_mut(), &mut collector, None);
                let resident_now = resident(&target);
                collector.sample(started.elapsed().as_secs_f64(), resident_now);
                let level = resident_now.unwrap_or_else(|| collector.ledger.total(Kind::Heap).bytes);
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
                symbols.trim();
                let context = report_context!();
                live.line(&collector, &probes, context.status(&collector, started.elapsed()).as_ref(), started.elapsed());
                if opts.snapshots {
                    due.push(("periodic".into(), format!("periodic snapshot at {:.0}s", started.elapsed().as_secs_f64())));
                }
                // The terminal's table, the snapshots and the endpoints show the report of now.
                let now = if live.wants_report() || publisher.is_some() || !due.is_empty() {
                    let now = context.report(&mut collector, started.elapsed(), "recording".into(), None);
                    match &now {
                        Ok(report) => live.update(report),
                        Err(e) => live.note(&format!("warning: no report at {:.0}s: {e:#}", started.elapsed().as_secs_f64())),
                    }
                    Some(now)
                } else {
                    None
                };
                for (label, reason) in due {
                    snapshots_written += 1;
                    let dir = format!("snapshot-{snapshots_written:03}-{label}");
                    let written = match &now {
                        Some(Ok(report)) => {
                            let snapshot = Report { end_reason: format!("snapshot: {reason}"), ..report.clone() };
                            write_snapshot(&snapshot, &output, &dir, &opts)
                        }
                        Some(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
                        None => Err(anyhow::anyhow!("no report was built")),
                    };
                    match written {
                        Ok(()) if !opts.snapshots => live.note(&format!("wrote snapshot {}", output.path().join(&dir).display())),
                        Ok(()) if label == "periodic" => {
                            periodic.push_back(dir);
                            if periodic.len() > opts.keep_snapshots {
                                output.remove_subdir(&periodic.pop_front().unwrap_or_default());
                            }
                        }
                        Ok(()) => {}
                        Err(e) => live.note(&format!("warning: snapshot {} failed: {e:#}", output.path().join(&dir).display())),
                    }
                }
                if let (Some(publisher), Some(Ok(report))) = (&publisher, now) {
                    publisher.publish(report);
                }
            }
            _ = tick.tick() => live.tick(&collector, &probes, started.elapsed()),
        }
    };
    live.finish(&format!("recording ended ({end_reason}): writing the report"));
    // Everything the target did before the end is already in the ring
    // buffer; with the filter emptied nothing more is added, so this ends
    // even while the target goes on allocating.
    probes.stop_recording();
    drain(ring.get_mut(), &mut collector, None);
    // Processes stopped at exec just before the end still wait to be let go.
    probed.release_held(&mut probes, &mut collector);
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
    let context = report_context!();
    let mut report = context.report(&mut collector, started.elapsed(), end_reason, warmup_note)?;
    report.target_exit = target_exit;
    let written = write_outputs(&report, &output, &opts);

    // Only now may the target go: its address space was needed for the report.
    if let Target::Launched(l) = &mut target {
        let _ = l.control.send(if held_at_exit { Control::Release } else { Control::Detach });
        l.join();
    }
    use std::io::Write;
    // Not print!/eprintln!: after SIGHUP the terminal may be gone, and they panic on a failed write.
    if opts.print_summary {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(text::render(&report, opts.top).as_bytes()).and_then(|_| stdout.flush());
    }
    drop(ring);
    probes.detach();
    written?;
    let flamegraphs: Vec<String> = report
        .totals
        .keys()
        .filter(|k| report.entries(**k).next().is_some())
        .map(|k| format!("{k}.svg"))
        .collect();
    let flamegraphs =
        if flamegraphs.is_empty() { "none, nothing outstanding".to_string() } else { flamegraphs.join(", ") };
    let _ = writeln!(
        std::io::stderr(),
        "wrote {} (report.txt, report.json; flamegraphs: {flamegraphs})",
        output.path().display()
    );
    Ok(Recorded { report, output: output.path().to_path_buf() })
}

/// Why the recording ended when the `last` process of the traced tree exited.
fn tree_end_reason(root: u32, last: u32, how: &TargetExit, root_exit: Option<&TargetExit>) -> String {
    match root_exit {
        _ if last == root => format!("target exited ({how})"),
        Some(root_how) => {
            format!("last process of the tree exited (pid {last}, {how}; the launched process {root} ended earlier, {root_how})")
        }
        None => format!("last process of the tree exited (pid {last}, {how})"),
    }
}

/// Records read from the ring buffer per turn of the event loop.
const BATCH: usize = 8192;

/// Gives the kernel's stack walker the call-frame tables of process `pid`'s
/// current modules (a process it has none for is walked by frame pointers).
fn track_stacks(probes: &mut Probes, pid: u32) {
    // Fails only when the process is gone or its maps unreadable; its stacks
    // are then walked by frame pointers, and each one says so.
    let _ = probes.tables.track(pid);
}

/// Ingests what the ring buffer holds, all of it or at most `limit`
/// records; returns whether records remain.
fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, limit: Option<usize>) -> bool {
    let mut read = 0;
    while limit.is_none_or(|l| read < l) {
        let Some(item) = ring.next() else { return false };
        collector.ingest(&item);
        read += 1;
    }
    true
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
