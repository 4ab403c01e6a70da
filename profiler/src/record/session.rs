//! One recording session's state and what happens to it: started (target
//! found or launched, probes attached), then driven by the event loop in
//! [`super::run`], which only waits and dispatches to these methods (drain,
//! target event, warm-up end, tick, sample), and finished (the last events
//! drained, the report built and written, the target let go, the probes
//! detached).

use std::{
    collections::VecDeque,
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    assemble::{write_outputs, write_snapshot, ReportContext},
    live::Live,
    probed::{CgroupState, ProbedProcesses},
    watch, MarkerRelay, RecordOptions, Recorded, Target, TargetSpec,
};
use crate::{
    collector::Collector,
    files::output::OutputDir,
    inspector::Inspector,
    kernel::{
        preflight,
        probes::{ProbeSettings, Probes},
    },
    kind::Kind,
    process::{
        cgroup::{CgroupMounts, CgroupTarget},
        launch::{self, Control, NewImage, TargetEvent},
        pidfd, ProcessInfo,
    },
    report::{
        flame,
        model::{ProfilerCost, Status, TargetExit},
        text, Report,
    },
    serve::Publisher,
    stacks::{
        symbols::Symbols,
        unwind::{JsNames, StackWalk},
    },
};

/// What the session's reports share, borrowed field by field (so the
/// collector stays free to be borrowed mutably beside it).
macro_rules! report_context {
    ($session:expr) => {
        ReportContext {
            probes: &$session.probes,
            info: &$session.info,
            mode: $session.mode,
            started_at: $session.started_at,
            cost_at_start: $session.cost_at_start,
            opts: &$session.opts,
            target: &$session.target,
            mounts: &$session.mounts,
            symbols: &$session.symbols,
            hints: &$session.hints,
            inspector: $session.inspector.as_ref(),
        }
    };
}

/// Records read from the ring buffer per turn of the event loop.
pub(super) const BATCH: usize = 8192;

pub(super) struct Session {
    pub(super) opts: RecordOptions,
    pub(super) info: ProcessInfo,
    pub(super) target: Target,
    pub(super) ring: AsyncFd<RingBuf<MapData>>,
    pub(super) collector: Collector,
    pub(super) warmup_end: Option<String>,
    probes: Probes,
    probed: ProbedProcesses,
    symbols: Symbols,
    output: OutputDir,
    mounts: CgroupMounts,
    mode: &'static str,
    follow: bool,
    started: Instant,
    started_at: u64,
    /// The profiler's own cost up to the start of recording (loading and
    /// verifying the eBPF programs, reading call-frame tables).
    cost_at_start: ProfilerCost,
    live: Live,
    publisher: Option<Publisher>,
    snapshots: Snapshots,
    /// How the profiled process ended, if it did.
    target_exit: Option<TargetExit>,
    /// The last process is held at its exit until the report is written.
    held_at_exit: bool,
    /// Notes for the user, shown at the start and in the report.
    hints: Vec<String>,
    /// Node's inspector, read by its own thread (`--lens js-heap`).
    inspector: Option<Inspector>,
}

/// Snapshots written so far.
#[derive(Default)]
struct Snapshots {
    written: usize,
    /// Periodic snapshots kept, oldest first.
    periodic: VecDeque<String>,
    /// `--snapshot-at` thresholds crossed.
    crossed: usize,
}

/// Ingests what the ring buffer holds, all of it or at most `limit`
/// records; returns whether records remain. The only reader of the ring.
pub(super) fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, limit: Option<usize>) -> bool {
    let mut read = 0;
    while limit.is_none_or(|l| read < l) {
        let Some(item) = ring.next() else { return false };
        collector.ingest(&item);
        read += 1;
    }
    true
}

/// Gives the kernel's stack walker the call-frame tables of process `pid`'s
/// current modules (a process it has none for is walked by frame pointers).
pub(super) fn track_stacks(probes: &mut Probes, pid: u32) {
    // Fails only when the process is gone or its maps unreadable; its stacks
    // are then walked by frame pointers, and each one says so.
    let _ = probes.tables.track(pid);
}

/// Finds, inspects or launches the target (a launched one waits stopped).
fn find_target(opts: &RecordOptions) -> Result<(ProcessInfo, Target)> {
    Ok(match &opts.target {
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
    })
}

impl Session {
    /// Finds or launches the target, attaches the probes and starts recording.
    pub(super) fn start(
        opts: RecordOptions,
        output: OutputDir,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Self> {
        let (mut info, mut target) = find_target(&opts)?;
        if opts.lenses.js_heap {
            if let Err(e) = crate::inspector::check_target(&info, matches!(target, Target::Cgroup(_))) {
                if let Target::Launched(l) = &mut target {
                    let _ = l.control.send(Control::Kill);
                    l.join();
                }
                return Err(e);
            }
        }
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
            let ringbuf_bytes =
                opts.ringbuf_bytes.unwrap_or_else(|| RecordOptions::default_ringbuf_bytes(opts.lenses));
            let mut probes = Probes::load(ringbuf_bytes, settings)?;
            if opts.stack_walk == StackWalk::FramePointers {
                probes.tables.disable();
            }
            if opts.js_names == JsNames::PerfMap {
                probes.tables.record_js_code_addresses();
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
            // The tables first (node's take a second or two): recording
            // starts with complete stacks, not frame-pointer ones meanwhile.
            track_stacks(&mut probes, info.pid);
            if let Err(e) = probes.attach_node(info.pid, opts.lenses.handles) {
                probes.skipped.push(format!("node's probes: {e:#}"));
            }
            probed.ensure(&mut probes, info.pid)?;
            if let Some(function) = &opts.warmup.function {
                probes.attach_marker(Path::new(&format!("/proc/{}/exe", info.pid)), function, info.pid)?;
            }
            // Events flow from here: last, so that none piles up in the ring
            // while programs are loaded (a process touching 100k pages a second
            // fills it in a fraction of a second).
            probes.add_target(info.pid)?;
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
        let ring = watch(probes.take_ringbuf()?)?;
        if let Target::Attached { .. } = &target {
            // Mappings made and the break moved while the programs were loaded (seconds for node).
            if let Ok(maps) = crate::stacks::procmaps::ProcessMaps::read(info.pid) {
                info.maps = maps;
            }
        }
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
                if matches!(target, Target::Launched(_)) {
                    collector.started_while_recording(info.pid);
                }
                collector.add_process(info.pid, info.maps.clone(), initial_brk)
            }
        }
        for (api, alias) in &probes.aliases {
            collector.add_alias(*api, *alias);
        }
        let mode = match &target {
            Target::Cgroup(_) => "cgroup",
            Target::Attached { .. } => "attach",
            Target::Launched(l) => {
                l.control.send(Control::Resume).ok();
                "launch"
            }
        };
        let live = Live::new(std::io::stderr().is_terminal(), opts.duration);
        let mut session = Session {
            info,
            target,
            ring,
            collector,
            warmup_end: None,
            probes,
            probed,
            symbols: Symbols::default(),
            output,
            mounts: CgroupMounts::read().unwrap_or_default(),
            mode,
            follow,
            started: Instant::now(),
            started_at: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            cost_at_start: ProfilerCost::default(),
            live,
            publisher: None,
            snapshots: Snapshots::default(),
            target_exit: None,
            held_at_exit: false,
            hints: Vec::new(),
            inspector: None,
            opts,
        };
        if session.opts.lenses.js_heap {
            let heap_snapshots =
                if session.opts.heap_snapshot { Some(session.output.try_clone()?) } else { None };
            session.inspector = Some(Inspector::start(
                session.info.pid,
                &session.info.command,
                session.opts.interval,
                session.started,
                heap_snapshots,
            )?);
        }
        if let Target::Attached { .. } = session.target {
            session.take_descendants();
        }
        if let Some(listener) = listener {
            let addr = listener.local_addr()?;
            let publisher = crate::serve::start(listener)?;
            publisher.publish(session.report("recording".into(), None, true)?);
            eprintln!(
                "serving http://{addr}/metrics, http://{addr}/debug/pprof/<kind>, http://{addr}/report.json"
            );
            session.publisher = Some(publisher);
        }
        session.cost_at_start = ProfilerCost::now();
        eprintln!(
            "profiling pid {} ({}); {}",
            session.info.pid,
            session.info.command,
            match session.opts.duration {
                Some(d) => format!("for {}s, Ctrl-C to stop early", d.as_secs_f64()),
                None => "Ctrl-C to stop".to_string(),
            }
        );
        Ok(session)
    }

    /// Attach mode: the processes the target started are its children's
    /// business. With `--follow` they are profiled from now on too; without
    /// it, a wrapper (`npm start`, `sh -c`, `timeout`) would show nothing, so
    /// the user is told which child does the work.
    fn take_descendants(&mut self) {
        let root = self.info.pid;
        let children = crate::process::descendants_of(root);
        if children.is_empty() {
            return;
        }
        if !self.follow {
            let named: Vec<String> = children
                .iter()
                .take(5)
                .map(|pid| {
                    let command = crate::collector::command_of(*pid).unwrap_or_default();
                    format!("{pid} ({})", crate::process::fds::printable(&command))
                })
                .collect();
            let more =
                if children.len() > 5 { format!(" and {} more", children.len() - 5) } else { String::new() };
            let hint = format!(
                "pid {root} has {} running child process{}: {}{more}. What they hold is theirs, not pid {root}'s: profile one with --pid {}, or all of them with --pid {root} --follow",
                children.len(),
                if children.len() == 1 { "" } else { "es" },
                named.join(", "),
                children[0]
            );
            eprintln!("note: {hint}");
            self.hints.push(hint);
            return;
        }
        for pid in children {
            let Ok(maps) = crate::stacks::procmaps::ProcessMaps::read(pid) else { continue };
            if let Err(e) = self.probes.add_target(pid) {
                eprintln!("warning: pid {pid} (a child of {root}) not followed: {e:#}");
                continue;
            }
            track_stacks(&mut self.probes, pid);
            if let Err(e) = self.probed.ensure(&mut self.probes, pid) {
                eprintln!("warning: no heap probes for pid {pid}: {e:#}");
            }
            let brk = maps.heap_end().or_else(|| preflight::start_brk(pid));
            self.collector.add_process(pid, maps, brk);
        }
    }

    /// Ingests everything the ring buffer holds now.
    fn drain_all(&mut self) {
        drain(self.ring.get_mut(), &mut self.collector, None);
    }

    /// The complete report of what is outstanding now; `describe_fds` as
    /// [`crate::report::build::Inputs::describe_fds`].
    fn report(&mut self, end_reason: String, warmup: Option<String>, describe_fds: bool) -> Result<Report> {
        let context = report_context!(self);
        context.report(&mut self.collector, self.started.elapsed(), end_reason, warmup, describe_fds)
    }

    /// Overall growth against the thresholds, now.
    fn status(&self) -> Option<Status> {
        let context = report_context!(self);
        context.status(&self.collector, self.started.elapsed())
    }

    /// Resident memory now: the process's RSS, or the cgroup's usage.
    fn resident(&self) -> Option<u64> {
        match &self.target {
            Target::Cgroup(cg) => cg.target.as_ref()?.memory(&cg.mounts).map(|m| m.usage),
            _ => crate::process::rss_of(self.info.pid),
        }
    }

    /// The launched target's tracer reported a new image or an exit; returns
    /// why recording ends, if it does.
    pub(super) fn on_target_event(&mut self, event: Option<TargetEvent>) -> Option<String> {
        match event {
            Some(TargetEvent::NewImage { pid, how }) => {
                // Held stopped by the tracer until this is done.
                self.drain_all();
                self.collector.note_process(pid);
                if how != NewImage::Fork {
                    self.collector.snapshot_process(pid);
                }
                track_stacks(&mut self.probes, pid);
                if how != NewImage::ExecWithoutLibc {
                    if let Err(e) = self.probed.ensure(&mut self.probes, pid) {
                        eprintln!("warning: no heap probes for pid {pid}: {e:#}");
                    }
                }
                self.resume_launched();
                None
            }
            Some(TargetEvent::Exit { pid, how, last, held }) => {
                if pid == self.info.pid {
                    self.target_exit = Some(how.clone());
                }
                if last {
                    // Held until the report is written.
                    self.held_at_exit = held;
                    return Some(tree_end_reason(self.info.pid, pid, &how, self.target_exit.as_ref()));
                }
                if held {
                    // Take its events while its maps still exist.
                    self.drain_all();
                    self.collector.name_jit_frames();
                    self.resume_launched();
                }
                None
            }
            None => Some("target exited".to_string()),
        }
    }

    fn resume_launched(&self) {
        if let Target::Launched(l) = &self.target {
            let _ = l.control.send(Control::Resume);
        }
    }

    /// `--warmup-secs` elapsed: everything live now is excluded.
    pub(super) fn end_warmup_now(&mut self) {
        self.drain_all();
        self.collector.exclude_live();
        self.warmup_end = Some(format!("after {:.1}s", self.started.elapsed().as_secs_f64()));
    }

    /// The stdout marker line ending at stdout offset `line_end` was read.
    pub(super) fn end_warmup_at_line(&mut self, line_end: u64) {
        self.drain_all();
        self.warmup_end = Some(exclude_before_marker_line(&mut self.collector, line_end, &self.opts.warmup));
    }

    /// Every few milliseconds: a batch of events, held processes let go,
    /// new modules' tables loaded, new processes of the tree or cgroup probed.
    pub(super) fn on_drain_tick(&mut self) {
        drain(self.ring.get_mut(), &mut self.collector, Some(BATCH));
        self.probed.release_held(&mut self.probes, &mut self.collector);
        for pid in std::mem::take(&mut self.collector.mapped_files) {
            track_stacks(&mut self.probes, pid);
        }
        match &mut self.target {
            Target::Cgroup(cgroup) => {
                // A container awaited is looked for at every tick: found before its program starts.
                if cgroup.target.is_none() || cgroup.last_scan.elapsed() > Duration::from_millis(200) {
                    cgroup.last_scan = Instant::now();
                    self.probed.follow_cgroup(&mut self.probes, &mut self.collector, cgroup);
                }
            }
            Target::Attached { .. } if self.follow => {
                self.probed.follow_up(&mut self.probes, &mut self.collector)
            }
            _ => {
                // The tracer announces new images itself.
                self.collector.forks.clear();
                self.collector.execs.clear();
            }
        }
    }

    /// Every second: the live view's header.
    pub(super) fn on_tick(&mut self) {
        self.live.tick(&self.collector, &self.probes, self.started.elapsed());
    }

    /// Every `--interval`: a sample of the series; the live view, due
    /// snapshots and the served report get the report of now.
    pub(super) fn on_sample(&mut self) {
        self.drain_all();
        let elapsed = self.started.elapsed();
        let resident_now = self.resident();
        self.collector.sample(elapsed.as_secs_f64(), resident_now);
        let level = resident_now.unwrap_or_else(|| self.collector.ledger.total(Kind::Heap).bytes);
        // --snapshot-at: when memory crosses each threshold; --snapshots: every sample.
        let mut due: Vec<(String, String)> = Vec::new();
        while let Some(&threshold) = self.opts.snapshot_at.get(self.snapshots.crossed) {
            if level < threshold {
                break;
            }
            self.snapshots.crossed += 1;
            let size = flame::human_bytes(threshold).replace(' ', "");
            if let (Some(inspector), true) = (&self.inspector, self.opts.heap_snapshot) {
                inspector.request_heap_snapshot(&size);
            }
            due.push((
                size,
                format!("memory reached {} ({})", flame::human_bytes(level), flame::human_bytes(threshold)),
            ));
        }
        self.symbols.trim();
        let status = self.status();
        self.live.line(&self.collector, &self.probes, status.as_ref(), elapsed);
        if self.opts.snapshots {
            due.push(("periodic".into(), format!("periodic snapshot at {:.0}s", elapsed.as_secs_f64())));
        }
        // The terminal's table, the snapshots and the endpoints show the report of now.
        let now = if self.live.wants_report() || self.publisher.is_some() || !due.is_empty() {
            // The live table shows no fds: they are described for what is written or served.
            let describe = self.publisher.is_some() || !due.is_empty();
            let now = self.report("recording".into(), None, describe);
            match &now {
                Ok(report) => self.live.update(report),
                Err(e) => {
                    self.live.note(&format!("warning: no report at {:.0}s: {e:#}", elapsed.as_secs_f64()))
                }
            }
            Some(now)
        } else {
            None
        };
        for (label, reason) in due {
            self.write_snapshot(now.as_ref(), &label, &reason);
        }
        if let (Some(publisher), Some(Ok(report))) = (&self.publisher, now) {
            publisher.publish(report);
        }
    }

    fn write_snapshot(&mut self, now: Option<&Result<Report>>, label: &str, reason: &str) {
        // The oldest periodic snapshot goes first: the disk never holds more than the bound.
        if label == "periodic" {
            while !self.snapshots.periodic.is_empty()
                && self.snapshots.periodic.len() >= self.opts.keep_snapshots
            {
                self.output.remove_subdir(&self.snapshots.periodic.pop_front().unwrap_or_default());
            }
        }
        self.snapshots.written += 1;
        let dir = format!("snapshot-{:03}-{label}", self.snapshots.written);
        let written = match now {
            Some(Ok(report)) => {
                let snapshot = Report { end_reason: format!("snapshot: {reason}"), ..report.clone() };
                write_snapshot(&snapshot, &self.output, &dir, &self.opts)
            }
            Some(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
            None => Err(anyhow::anyhow!("no report was built")),
        };
        let path = self.output.path().join(&dir);
        match written {
            Ok(()) if !self.opts.snapshots => self.live.note(&format!("wrote snapshot {}", path.display())),
            Ok(()) if label == "periodic" => {
                self.snapshots.periodic.push_back(dir);
                if self.snapshots.periodic.len() > self.opts.keep_snapshots {
                    self.output.remove_subdir(&self.snapshots.periodic.pop_front().unwrap_or_default());
                }
            }
            Ok(()) => {}
            Err(e) => self.live.note(&format!("warning: snapshot {} failed: {e:#}", path.display())),
        }
    }

    /// Ends the session: the last events, the report built and written,
    /// the target let go, the probes detached.
    pub(super) fn finish(mut self, mut end_reason: String, mut marker: MarkerRelay) -> Result<Recorded> {
        self.live.finish(&format!("recording ended ({end_reason}): writing the report"));
        // While the probes still record: the inspector's own sockets are seen closed.
        if let Some(inspector) = &mut self.inspector {
            // The ring is drained meanwhile: the last reading may take a while.
            let (ring, collector) = (&mut self.ring, &mut self.collector);
            inspector.finish(|| {
                drain(ring.get_mut(), collector, Some(BATCH));
            });
        }
        // Everything the target did before the end is already in the ring
        // buffer; with the filter emptied nothing more is added, so this ends
        // even while the target goes on allocating.
        self.probes.stop_recording();
        self.drain_all();
        // Processes stopped at exec just before the end still wait to be let go.
        self.probed.release_held(&mut self.probes, &mut self.collector);
        if self.opts.warmup.stdout_marker.is_some() && self.warmup_end.is_none() {
            // The marker line may still be in the pipe: let the relay catch up with what was written.
            if let Some(line_end) = marker.catch_up(self.collector.stdout_written) {
                self.warmup_end =
                    Some(exclude_before_marker_line(&mut self.collector, line_end, &self.opts.warmup));
            }
        }
        if self.warmup_end.is_none() {
            if let (Some(function), Some(_)) = (&self.opts.warmup.function, self.collector.marker_seen_at) {
                self.warmup_end = Some(format!("at the last call of {function}()"));
            }
        }
        let resident = self.resident();
        self.collector.sample(self.started.elapsed().as_secs_f64(), resident);

        if !self.collector.oom_killed.is_empty() {
            end_reason = format!("OOM-killed (pid {:?}): {end_reason}", self.collector.oom_killed);
        }
        if !self.collector.v8_out_of_memory.is_empty() {
            let pids: Vec<u32> = self.collector.v8_out_of_memory.iter().map(|(pid, ..)| *pid).collect();
            end_reason = format!("V8 out of memory (pid {pids:?}): {end_reason}");
        }
        let warmup_note = match (&self.warmup_end, self.opts.warmup.is_set()) {
            (Some(end), _) => Some(format!("excluded everything live {end}")),
            (None, true) => Some("requested, but the warm-up never ended: nothing excluded".to_string()),
            (None, false) => None,
        };
        let mut report = self.report(end_reason, warmup_note, true)?;
        report.target_exit = self.target_exit.clone();
        let written = write_outputs(&report, &self.output, &self.opts);

        // Only now may the target go: its address space was needed for the report.
        if let Target::Launched(l) = &mut self.target {
            let _ = l.control.send(if self.held_at_exit { Control::Release } else { Control::Detach });
            l.join();
        }
        use std::io::Write;
        // Not print!/eprintln!: after SIGHUP the terminal may be gone, and they panic on a failed write.
        if self.opts.print_summary {
            let mut stdout = std::io::stdout();
            let _ = stdout
                .write_all(text::render(&report, self.opts.top).as_bytes())
                .and_then(|_| stdout.flush());
        }
        let output = self.output.path().to_path_buf();
        drop(self.ring);
        self.probes.detach();
        written?;
        let flamegraphs: Vec<String> =
            crate::report::outputs::kinds_present(&report).map(|k| format!("{k}.svg")).collect();
        let flamegraphs = if flamegraphs.is_empty() {
            "none, nothing outstanding".to_string()
        } else {
            flamegraphs.join(", ")
        };
        let _ = writeln!(
            std::io::stderr(),
            "wrote {} (report.txt, report.json; flamegraphs: {flamegraphs})",
            output.display()
        );
        Ok(Recorded { report, output })
    }
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

/// Ends the warm-up at the `write` that carried the marker line (exact even
/// though the line is read later); returns how it ended, for the report.
fn exclude_before_marker_line(collector: &mut Collector, line_end: u64, warmup: &super::Warmup) -> String {
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
