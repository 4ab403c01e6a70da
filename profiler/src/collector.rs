//! Turns decoded events into ledger operations: computes effective sizes,
//! repairs and interns stacks (locating their frames while the process is
//! alive), and at the end assembles the report's per-site entries.

use std::{collections::HashMap, sync::Arc};

use profiler_common::{syscalls, AllocApi, StackStatus};

use crate::{
    inspector::streams::StreamCreator,
    kernel::events::{Caller, Event, Record},
    kind::Kind,
    ledger::{Ledger, Op, Site, StackId},
    process::{fds::FdDescriber, node_memory::NodeProcess},
    report::model::{Frame, HeldAtStart, HeldHandle, RegionTotal, StackEntry},
    report::split::{NodeCounts, NodeCountsThen},
    stacks::procmaps::ProcessMaps,
    stacks::symbols::Symbols,
    stacks::{
        repair_fault_stack, repair_syscall_stack, truncate_at_invalid_frame, v8::JsFunction, AddressSpace,
        Handoff, Location, StackTable,
    },
};

/// Where an event's stack was captured, which decides where its shown part
/// starts and how a frame-pointer stack is completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CapturedAt {
    /// An allocator's return: the frame chain is intact.
    Return,
    /// A memory syscall (mmap, brk, ...), in a libc wrapper.
    Syscall,
    /// A handle-creating syscall, in a libc wrapper.
    HandleSyscall,
    /// A page fault, maybe in a frameless function.
    Fault,
}

impl CapturedAt {
    pub fn name(self) -> &'static str {
        match self {
            Self::Return => "allocator",
            Self::Syscall => "memory syscall",
            Self::HandleSyscall => "handle syscall",
            Self::Fault => "page fault",
        }
    }
}

/// Where a syscall stack's shown part starts. A syscall's leaf is the code
/// that called the C library, as `malloc`'s caller is a heap stack's leaf: a
/// memory syscall drops the libc wrapper (keeping the allocator internals that
/// made the call, such as `sysmalloc`), a handle syscall every libc frame
/// (`fopen`'s caller, not `__open64_nocancel`). At least one frame stays.
fn syscall_leaf(frames: &[u64], captured: CapturedAt, space: &mut AddressSpace) -> usize {
    let in_libc = match captured {
        CapturedAt::Syscall => frames.iter().take(1).take_while(|&&a| space.in_libc(a)).count(),
        CapturedAt::HandleSyscall => frames.iter().take_while(|&&a| space.in_libc(a)).count(),
        CapturedAt::Return | CapturedAt::Fault => 0,
    };
    in_libc.min(frames.len().saturating_sub(1))
}

#[derive(Default)]
pub struct Collector {
    pub ledger: Ledger,
    stacks: StackTable,
    /// Frame locations of each interned stack, innermost first.
    locations: Vec<Vec<Location>>,
    /// The call (allocator entry point or syscall) that allocated at each stack.
    api: Vec<String>,
    /// Extra names of probed allocator entry points that other exported
    /// symbols alias (same address), e.g. glibc's memalign = aligned_alloc.
    aliases: HashMap<AllocApi, Vec<&'static str>>,
    spaces: HashMap<u32, AddressSpace>,
    /// JS naming counters of address spaces dropped.
    js_naming_retired: crate::report::model::JsNaming,
    /// See [`Collector::set_root`].
    root: Option<u32>,
    /// When (ns, monotonic) the marker function was last called.
    pub marker_seen_at: Option<u64>,
    /// Bytes the target asked to write to stdout so far, and for each write
    /// (running total after it, time): places stdout marker lines in time.
    pub stdout_written: u64,
    stdout_writes: Vec<(u64, u64)>,
    pub events_received: u64,
    pub undecodable_events: u64,
    pub stack_failures: u64,
    /// Events whose stack walk left executable memory and was cut there.
    pub truncated_stacks: u64,
    /// Events whose stack walk did not reach the outermost frame, by where
    /// and why (the stack ends in a marker frame saying so).
    pub incomplete_stacks: std::collections::BTreeMap<(CapturedAt, StackStatus), u64>,
    /// Processes that exec'd / were forked since last taken (for the session
    /// to attach allocator probes to their new image).
    pub execs: Vec<u32>,
    pub forks: Vec<(u32, u32)>,
    /// Processes the kernel stopped at exec, waiting to be probed and let go.
    pub held_at_exec: Vec<u32>,
    /// Forked children are profiled too (launch, `--follow`, cgroup modes).
    pub follows_children: bool,
    /// Processes seen forking or exec'ing while recording: seen from their start.
    born_while_recording: std::collections::HashSet<u32>,
    /// Processes a cgroup scan found already running, started after recording
    /// began but not seen starting: their earlier allocations are unseen.
    pub found_late: std::collections::HashSet<u32>,
    /// Processes that mapped a file since last taken (a library loaded: the
    /// kernel walker needs its table).
    pub mapped_files: std::collections::BTreeSet<u32>,
    /// Command line of every process seen, for the report.
    commands: HashMap<u32, String>,
    /// Resident memory by region of each process when it was added (found running).
    regions_at_start: std::collections::BTreeMap<u32, Vec<crate::process::smaps::RegionTotal>>,
    /// The node processes, with their own counts when recording started
    /// (zero for those started while recording).
    node_processes: std::collections::BTreeMap<u32, (NodeProcess, NodeCounts)>,
    /// Cgroup (v2 path) of every process seen, for labels per container.
    cgroups: HashMap<u32, String>,
    /// How many times each process exec'd: addresses of different images differ.
    images: HashMap<u32, u64>,
    /// Captured stacks already resolved: key -> (stack, was cut, how it ended).
    raw_stacks: HashMap<Box<[u64]>, (StackId, bool, StackStatus)>,
    /// Outstanding per site and in total at every `--interval` sample.
    pub series: Series,
    /// Profiled processes the OOM killer chose as victims.
    pub oom_killed: Vec<u32>,
    /// V8 out-of-memory aborts: (pid, monotonic ns, whether the JS heap hit its limit).
    pub v8_out_of_memory: Vec<(u32, u64, Option<bool>)>,
    /// Open requests on libuv's threadpool not started yet: (pid, request
    /// address) -> the requesting stack.
    threadpool_requested: HashMap<(u32, u64), StackId>,
    /// Per threadpool thread (tid), the requesting stack of the work it runs now.
    threadpool_running: HashMap<u32, Option<StackId>>,
    /// The creating stack (with JS frames) of each libuv stream handle, by
    /// (pid, handle address), until the handle gets its fd.
    stream_creators: HashMap<(u32, u64), StackId>,
    /// Handle creators dropped at the bound (their sockets keep their own stacks).
    pub stream_creators_forgotten: u64,
    /// Per thread: the first page of its run of first touches, and the stack that touched it.
    fault_runs: HashMap<u32, (u64, StackId)>,
    /// Pages touched in a run whose first page's record was lost: not counted.
    pub fault_runs_unmatched: u64,
    /// Pages recorded without a stack, continuing their thread's run.
    pub fault_run_pages: u64,
    /// JS functions named outside the kernel's walk, by the index in their frame word.
    named_js: HashMap<JsFunction, usize>,
    /// Open requests forgotten (more than [`MAX_QUEUED_WORK`] at once):
    /// what they open keeps the threadpool thread's stack only.
    pub threadpool_forgotten: u64,
    /// `--sample-bytes` (0: every allocation is recorded).
    pub sample_bytes: u64,
}

/// Samples taken at every `--interval`.
#[derive(Default)]
pub struct Series {
    /// Seconds since recording started.
    pub times: Vec<f64>,
    /// Per site: (sample index, value) for the samples where it was outstanding.
    pub sites: HashMap<Site, Vec<(usize, u64)>>,
    /// Per kind: the total at each sample.
    pub totals: std::collections::BTreeMap<Kind, Vec<u64>>,
    /// Resident memory (process RSS, or the cgroup's usage) at each sample.
    pub rss: Vec<Option<u64>>,
    /// First sample after the warm-up: trends are judged from there.
    pub warmup_index: usize,
    /// Intervals between kept samples: doubles each time the series is thinned.
    pub stride: usize,
}

/// Samples kept: past this, every other one is dropped (a recording of days
/// keeps bounded memory, at a coarser interval).
pub const MAX_SAMPLES: usize = 2048;

impl Series {
    /// Keeps every other sample (the first and the even ones).
    fn thin(&mut self) {
        let keep = |i: usize| i.is_multiple_of(2);
        let halve = |v: &mut Vec<u64>| *v = v.iter().step_by(2).copied().collect();
        self.times = self.times.iter().step_by(2).copied().collect();
        self.rss = self.rss.iter().step_by(2).copied().collect();
        self.totals.values_mut().for_each(halve);
        for points in self.sites.values_mut() {
            points.retain(|(i, _)| keep(*i));
            points.iter_mut().for_each(|(i, _)| *i /= 2);
        }
        self.sites.retain(|_, points| !points.is_empty());
        self.warmup_index = self.warmup_index.div_ceil(2);
        self.stride = self.stride.max(1) * 2;
    }

    /// The full series of one site, 0 where it was not outstanding.
    pub fn of(&self, site: &Site) -> Vec<u64> {
        let mut values = vec![0; self.times.len()];
        for (i, v) in self.sites.get(site).into_iter().flatten() {
            values[*i] = *v;
        }
        values
    }
}

/// A process's command line (or its comm), for people.
pub fn command_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|c| *c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if args.is_empty() {
        return std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| format!("[{}]", c.trim()));
    }
    Some(args.join(" "))
}

/// What a new fd is within its kind, from the call that made it.
fn handle_detail(nr: u64, socket: u64) -> &'static str {
    const AF_UNIX: u64 = 1;
    const AF_INET: u64 = 2;
    const AF_INET6: u64 = 10;
    const AF_NETLINK: u64 = 16;
    const SOCK_STREAM: u64 = 1;
    const SOCK_DGRAM: u64 = 2;
    match nr {
        syscalls::SOCKET | syscalls::SOCKETPAIR => match (socket >> 32, socket & 0xf) {
            (AF_INET | AF_INET6, SOCK_STREAM) => "tcp",
            (AF_INET | AF_INET6, SOCK_DGRAM) => "udp",
            (AF_UNIX, _) => "unix",
            (AF_NETLINK, _) => "netlink",
            _ => "other",
        },
        syscalls::MEMFD_CREATE => "memfd",
        syscalls::OPEN | syscalls::OPENAT | syscalls::OPENAT2 | syscalls::CREAT => "file",
        syscalls::PIPE | syscalls::PIPE2 => "pipe",
        syscalls::EVENTFD | syscalls::EVENTFD2 => "eventfd",
        syscalls::TIMERFD_CREATE => "timerfd",
        syscalls::SIGNALFD | syscalls::SIGNALFD4 => "signalfd",
        syscalls::EPOLL_CREATE | syscalls::EPOLL_CREATE1 => "epoll",
        syscalls::INOTIFY_INIT | syscalls::INOTIFY_INIT1 => "inotify",
        syscalls::PIDFD_OPEN => "pidfd",
        syscalls::IO_URING_SETUP => "io_uring",
        _ => "other",
    }
}

/// Kind and detail of an fd opened before we attached, from its
/// `/proc/PID/fd` link (`socket:[..]`, `pipe:[..]`, `anon_inode:[eventfd]`, a path).
pub fn classify_fd_link(link: &str) -> (Kind, &'static str) {
    if link.starts_with("socket:") {
        return (Kind::Sockets, "socket");
    }
    if link.starts_with("pipe:") {
        return (Kind::Pipes, "pipe");
    }
    if let Some(anon) = link.strip_prefix("anon_inode:") {
        let anon = anon.trim_start_matches('[').trim_end_matches(']');
        let detail = match anon {
            "eventfd" => "eventfd",
            "timerfd" => "timerfd",
            "signalfd" => "signalfd",
            "eventpoll" => "epoll",
            "inotify" => "inotify",
            "pidfd" => "pidfd",
            "io_uring" => "io_uring",
            _ => "other",
        };
        return (Kind::Events, detail);
    }
    if link.starts_with("/memfd:") {
        return (Kind::Files, "memfd");
    }
    (Kind::Files, "file")
}

impl Collector {
    /// Bytes a recorded block stands for. A block of `bytes` is sampled with
    /// probability min(1, bytes / sample_bytes) (see profiler-ebpf), so
    /// weighting it by the inverse makes every total unbiased.
    fn weighted(&self, bytes: u64) -> u64 {
        if self.sample_bytes == 0 {
            bytes
        } else {
            bytes.max(self.sample_bytes)
        }
    }

    /// Names JIT frames that were unnamed when their stack was first seen
    /// (the JIT may write its map entry after the code first runs). Call
    /// before building a report.
    pub fn name_jit_frames(&mut self) {
        let mut refreshed = std::collections::HashSet::new();
        for (id, locs) in self.locations.iter_mut().enumerate() {
            let (tgid, _) = self.stacks.get(id as StackId);
            let Some(space) = self.spaces.get_mut(&tgid) else { continue };
            for loc in locs.iter_mut() {
                let Location::Anonymous { name, addr } = loc else { continue };
                if &**name != "[jit]" {
                    continue;
                }
                let named =
                    if refreshed.insert(tgid) { space.jit_name_now(*addr) } else { space.jit_name(*addr) };
                if let Some(name) = named {
                    *loc = Location::Jit { name, addr: *addr };
                }
            }
        }
    }

    /// Ends the warm-up now: what is live stops counting, and trends are
    /// judged from the next sample on.
    pub fn exclude_live(&mut self) {
        self.ledger.exclude_live();
        self.series.warmup_index = self.series.times.len();
    }

    /// Ends the warm-up at `ts`, which may lie before events already applied.
    pub fn exclude_allocated_before(&mut self, ts: u64) {
        self.ledger.exclude_allocated_before(ts);
        self.series.warmup_index = self.series.times.len();
    }

    /// JS functions named from V8's heap, over all processes (those gone too).
    pub fn js_naming(&self) -> crate::report::model::JsNaming {
        let mut total = self.js_naming_retired;
        for space in self.spaces.values() {
            total += space.js_naming();
        }
        total
    }

    /// Drops a process's address space, keeping its counters.
    fn retire_space(&mut self, pid: u32) {
        if let Some(space) = self.spaces.remove(&pid) {
            self.js_naming_retired += space.js_naming();
        }
    }

    /// Perf-map bytes past the read bound, over all processes.
    pub fn perf_map_unread(&self) -> u64 {
        self.spaces.values().map(AddressSpace::perf_map_unread).sum()
    }

    /// Malformed perf-map lines met, over all processes.
    pub fn perf_map_garbage(&self) -> u64 {
        self.spaces.values().map(AddressSpace::perf_map_garbage).sum()
    }

    /// A process exited holding nothing: its names, and its address space
    /// unless it ran JIT code (its perf map stays, and with it the counters
    /// of its perf map), are not needed any more (a cgroup agent sees
    /// processes come and go for days).
    fn forget(&mut self, pid: u32) {
        if self.spaces.get(&pid).is_some_and(|s| !s.names_jit_code()) {
            self.retire_space(pid);
        }
        self.commands.remove(&pid);
        self.cgroups.remove(&pid);
        self.regions_at_start.remove(&pid);
        self.node_processes.remove(&pid);
    }

    /// Records what is outstanding now as one sample of the time series.
    pub fn sample(&mut self, secs: f64, rss: Option<u64>) {
        let i = self.series.times.len();
        self.series.times.push(secs);
        self.series.rss.push(rss);
        for (site, o) in self.ledger.sites() {
            let value = if site.kind.is_memory() { o.bytes } else { o.count };
            self.series.sites.entry(*site).or_default().push((i, value));
        }
        for kind in Kind::ALL {
            let t = self.ledger.total(kind);
            self.series.totals.entry(kind).or_default().push(if kind.is_memory() {
                t.bytes
            } else {
                t.count
            });
        }
        if self.series.times.len() > MAX_SAMPLES {
            self.series.thin();
        }
    }

    /// Takes a new snapshot of a process's mappings now (e.g. a new image held
    /// stopped by the tracer), so its events can be located even if it exits soon.
    pub fn snapshot_process(&mut self, pid: u32) {
        if let Ok(maps) = ProcessMaps::read(pid) {
            self.spaces.insert(pid, AddressSpace::new(pid, maps));
        }
    }

    /// Remembers what a process is running now (after a fork or exec).
    /// The process the session is about (launched or attached): kept at its exit.
    pub fn set_root(&mut self, pid: u32) {
        self.root = Some(pid);
    }

    /// Process `pid` runs from its first instruction while recording (a launched command).
    pub fn started_while_recording(&mut self, pid: u32) {
        self.born_while_recording.insert(pid);
    }

    /// A scan found process `pid` running: counted as found late unless it
    /// was seen starting.
    pub fn found_running(&mut self, pid: u32) {
        if !self.born_while_recording.contains(&pid) {
            self.found_late.insert(pid);
        }
    }

    pub fn note_process(&mut self, pid: u32) {
        if let Some(cmd) = command_of(pid) {
            self.commands.insert(pid, cmd);
        }
        if let Some(cgroup) = crate::process::cgroup::v2_path_of(pid) {
            self.cgroups.insert(pid, cgroup);
        }
    }

    /// The mappings of a process, as last read.
    pub fn maps_of(&self, pid: u32) -> Option<&ProcessMaps> {
        self.spaces.get(&pid).map(AddressSpace::maps)
    }

    /// The cgroup v2 path of a process, as last seen.
    pub fn cgroup(&self, pid: u32) -> Option<&str> {
        self.cgroups.get(&pid).map(String::as_str)
    }

    /// The command of a process, as last seen.
    pub fn command(&self, pid: u32) -> String {
        self.commands.get(&pid).cloned().unwrap_or_else(|| format!("pid {pid}"))
    }

    /// Registers a process about to be profiled, with its current mappings
    /// and the fds it already has open (not leaks: reported as pre-existing).
    pub fn add_process(&mut self, pid: u32, maps: ProcessMaps, initial_brk: Option<u64>) {
        if let Some(brk) = initial_brk {
            self.ledger.set_initial_brk(pid, brk);
        }
        let node = NodeProcess::of(pid, &maps);
        // What it held before we looked; a process born while recording held nothing then.
        if self.born_while_recording.contains(&pid) {
            if let Some(node) = node {
                self.node_processes.insert(pid, (node, NodeCounts::NOTHING));
            }
        } else if let Some(regions) = crate::process::smaps::resident_by_region(pid) {
            if let Some(mut node) = node {
                if let Some(counts) = node.counts(&maps, &regions) {
                    self.node_processes.insert(pid, (node, counts));
                }
            }
            self.regions_at_start.insert(pid, regions);
        }
        self.spaces.insert(pid, AddressSpace::new(pid, maps));
        self.note_process(pid);
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return };
        for entry in dir.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
            if self.ledger.handle_of(pid, fd).is_some() {
                continue; // seen being opened: not pre-existing
            }
            let Ok(link) = std::fs::read_link(entry.path()) else { continue };
            let (kind, detail) = classify_fd_link(&link.to_string_lossy());
            let cloexec = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .ok()
                .and_then(|info| {
                    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_string();
                    u64::from_str_radix(&flags, 8).ok()
                })
                .is_some_and(|flags| flags & 0o2000000 != 0);
            self.ledger.add_preexisting(pid, fd, kind, detail, cloexec);
        }
    }

    /// Records that `alias` is the same function as the probed `api`.
    pub fn add_alias(&mut self, api: AllocApi, alias: AllocApi) {
        self.aliases.entry(api).or_default().push(alias.symbol());
    }

    fn api_name(&self, caller: Caller) -> String {
        match caller {
            Caller::PageFault => "page fault".to_string(),
            Caller::Allocator(api) => std::iter::once(api.symbol())
                .chain(self.aliases.get(&api).into_iter().flatten().copied())
                .collect::<Vec<_>>()
                .join("/"),
            Caller::Syscall(nr) => {
                syscalls::TRACED.iter().find(|(n, _)| *n == nr).map_or("?", |(_, name)| *name).to_string()
            }
            Caller::Other => "?".to_string(),
        }
    }

    fn space(&mut self, tgid: u32) -> &mut AddressSpace {
        self.spaces
            .entry(tgid)
            .or_insert_with(|| AddressSpace::new(tgid, ProcessMaps::read(tgid).unwrap_or_default()))
    }

    fn intern(&mut self, ev: &Record, captured: CapturedAt) -> StackId {
        let tgid = ev.pid;
        let status = ev.stack_status;
        if status == StackStatus::CaptureFailed {
            self.stack_failures += 1;
        }
        let image = self.images.get(&tgid).copied().unwrap_or(0);
        let raw: Vec<u64> = ev.frames().collect();
        // Stacks repeat: the same captured frames always give the same stack,
        // so completing and checking them is done once. Frame-pointer
        // syscall and fault stacks also depend on their stack-hint words: not
        // cached (they are the fallback, for processes without tables).
        let hinted = status == StackStatus::FramePointers && captured != CapturedAt::Return;
        let raw_key = (!hinted).then(|| {
            let mut key = crate::stacks::stack_key(tgid, image, &raw);
            key.extend([status as u64, captured as u64]);
            key
        });
        if let Some(&(id, truncated, end)) = raw_key.as_ref().and_then(|k| self.raw_stacks.get(k.as_slice()))
        {
            self.truncated_stacks += truncated as u64;
            self.count_incomplete(captured, end);
            return id;
        }
        let mut frames = if hinted {
            // The kernel's frame-pointer walk skipped a frameless innermost
            // function; its caller is found from the hint words.
            match captured {
                CapturedAt::Fault => repair_fault_stack(&raw, &ev.hints(), self.space(tgid)),
                _ => repair_syscall_stack(&raw, &ev.hints(), self.space(tgid)),
            }
        } else {
            let leaf = syscall_leaf(&raw, captured, self.space(tgid));
            raw[leaf..].to_vec()
        };
        let truncated = truncate_at_invalid_frame(&mut frames, self.space(tgid));
        self.truncated_stacks += truncated as u64;
        let end = match status {
            StackStatus::Complete if truncated => StackStatus::BadFrame,
            status => status,
        };
        if end != StackStatus::Complete {
            frames.push(crate::stacks::cut_marker(end));
        }
        self.count_incomplete(captured, end);
        let (id, new) = self.stacks.intern(tgid, image, &frames);
        if new {
            let space = self.space(tgid);
            let locs = frames.iter().map(|&a| space.locate(a)).collect();
            self.locations.push(locs);
            let name = self.api_name(ev.caller);
            self.api.push(name);
        }
        if let Some(key) = raw_key {
            self.raw_stacks.insert(key.into_boxed_slice(), (id, truncated, end));
        }
        id
    }

    /// A handle opened on a libuv threadpool thread is the doing of the code
    /// that queued the work (`fs.open`): the thread's own stack continues,
    /// after a handoff frame, with the request's.
    fn requested_by(&mut self, tid: u32, pid: u32, own: StackId) -> StackId {
        let Some(Some(request)) = self.threadpool_running.get(&tid).copied() else { return own };
        self.joined(pid, own, Handoff::Threadpool, request)
    }

    /// Stack `own`, then a [`Handoff`] frame, then the frames of `other`
    /// past its first (the probed libuv function itself).
    fn joined(&mut self, pid: u32, own: StackId, handoff: Handoff, other: StackId) -> StackId {
        let words: Vec<u64> = self.stacks.get(other).1.iter().skip(1).copied().collect();
        let locations: Vec<Location> = self.locations[other as usize].iter().skip(1).cloned().collect();
        self.extended(pid, (own, usize::MAX), handoff, &words, locations)
    }

    /// The first `kept` frames of stack `own`, then the `handoff` marker,
    /// then frames `words` at `locations`.
    fn extended(
        &mut self,
        pid: u32,
        (own, kept): (StackId, usize),
        handoff: Handoff,
        words: &[u64],
        locations: Vec<Location>,
    ) -> StackId {
        let image = self.images.get(&pid).copied().unwrap_or(0);
        let frames: Vec<u64> = (self.stacks.get(own).1.iter().take(kept).copied())
            .chain([handoff.marker()])
            .chain(words.iter().copied())
            .collect();
        let (id, new) = self.stacks.intern(pid, image, &frames);
        if new {
            let locations = (self.locations[own as usize].iter().take(kept).cloned())
                .chain([Location::Handoff(handoff)])
                .chain(locations)
                .collect();
            self.locations.push(locations);
            let api = self.api[own as usize].clone();
            self.api.push(api);
        }
        id
    }

    /// Attributes each file stream's fd, still open, to the JS that created
    /// the stream (read by the inspector): the fd's own stack, a
    /// [`Handoff::Stream`] marker, the creator's frames. An fd opened after
    /// node reported the stream open is another file's (its number reused).
    pub fn attribute_stream_creators(&mut self, pid: u32, creators: &[StreamCreator]) {
        for creator in creators {
            let Some((own, opened_ns)) = self.ledger.counted_handle(pid, creator.fd) else { continue };
            if opened_ns > creator.opened_by_ns || self.stacks.get(own).1.contains(&Handoff::Stream.marker())
            {
                continue;
            }
            // The time alone could be fooled (a time namespace): the fd is the stream's file.
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{}", creator.fd));
            if link.ok().as_deref() != Some(std::path::Path::new(&creator.path)) {
                continue;
            }
            let mut words = Vec::with_capacity(creator.frames.len());
            let mut locations = Vec::with_capacity(creator.frames.len());
            for function in &creator.frames {
                let next = self.named_js.len();
                let index = *self.named_js.entry(function.clone()).or_insert(next);
                let Some(word) = crate::stacks::named_js_marker(index) else { break };
                words.push(word);
                locations.push(Location::JsFunction { function: Some(Arc::new(function.clone())), sfi: 0 });
            }
            if words.len() < creator.frames.len() {
                self.stream_creators_forgotten += 1; // Too many functions named outside the walk.
                continue;
            }
            // Below the tick's last JS frame: the event loop's, not the stream's.
            let kept = self.locations[own as usize]
                .iter()
                .rposition(Location::is_js)
                .map_or(usize::MAX, |last| last + 1);
            let stack = self.extended(pid, (own, kept), Handoff::Stream, &words, locations);
            self.ledger.apply(pid, opened_ns, Op::AttributeHandle { fd: creator.fd, stack });
        }
    }

    /// Counts a stack cut short (a failed capture is counted as such).
    fn count_incomplete(&mut self, captured: CapturedAt, end: StackStatus) {
        if !matches!(end, StackStatus::Complete | StackStatus::CaptureFailed) {
            *self.incomplete_stacks.entry((captured, end)).or_default() += 1;
        }
    }

    /// Applies one ring-buffer record.
    pub fn ingest(&mut self, bytes: &[u8]) {
        self.events_received += 1;
        let ev = match Record::decode(bytes) {
            Ok(ev) => ev,
            Err(_) => {
                self.undecodable_events += 1;
                return;
            }
        };
        let pid = ev.pid;
        if let Event::Mmap { .. } | Event::Mremap { .. } | Event::Munmap { .. } = ev.event {
            if let Some(space) = self.spaces.get_mut(&pid) {
                space.invalidate();
            }
            if let Event::Mmap { fd: Some(_), .. } = ev.event {
                self.mapped_files.insert(pid);
            }
        }
        let op = match ev.event {
            Event::Alloc { api, addr, size, arg } => {
                let stack = self.intern(&ev, CapturedAt::Return);
                Op::Alloc { addr, size: self.weighted(Event::requested_bytes(api, size, arg)), stack }
            }
            Event::Realloc { api, old, addr, size, arg } => {
                let stack = self.intern(&ev, CapturedAt::Return);
                Op::Realloc { old, addr, size: self.weighted(Event::requested_bytes(api, size, arg)), stack }
            }
            Event::Free { addr, caller } => {
                if !self.ledger.release_block(pid, addr) {
                    // Only an unmatched free pays for the lookup: glibc's thread
                    // exit hands its per-thread cache back with free() calls of
                    // its own, of blocks the program freed long ago.
                    if caller.is_some_and(|c| self.space(pid).in_libc(c)) {
                        self.ledger.counters.c_library_frees += 1;
                    } else {
                        self.ledger.counters.unknown_frees += 1;
                    }
                }
                return;
            }
            Event::Mmap { addr, len, file_backed, .. } => {
                let stack = self.intern(&ev, CapturedAt::Syscall);
                Op::Map { addr, len, file_backed, stack }
            }
            Event::Munmap { addr, len } => Op::Unmap { addr, len },
            Event::Madvise { addr, len } => Op::Discard { addr, len },
            Event::PageFault { page } => {
                let stack = self.intern(&ev, CapturedAt::Fault);
                if self.fault_runs.len() >= MAX_FAULT_RUNS {
                    self.fault_runs.clear();
                }
                self.fault_runs.insert(ev.tid, (page, stack));
                Op::Fault { page, stack }
            }
            Event::PageFaultRun { page, first_page } => match self.fault_runs.get(&ev.tid) {
                Some(&(first, stack)) if first == first_page => {
                    self.fault_run_pages += 1;
                    Op::Fault { page, stack }
                }
                _ => {
                    self.fault_runs_unmatched += 1;
                    return;
                }
            },
            Event::Mremap { old, old_len, addr, len } => {
                let stack = self.intern(&ev, CapturedAt::Syscall);
                Op::Remap { old, old_len, addr, len, stack }
            }
            Event::Brk { brk } => Op::Brk { brk, stack: self.intern(&ev, CapturedAt::Syscall) },
            Event::FdOpen { syscall, kind, fd, pair, detail, cloexec } => {
                let kind = Kind::from(kind);
                let detail = match syscall {
                    syscalls::ACCEPT | syscalls::ACCEPT4 => {
                        self.ledger.handle_of(pid, detail).map_or("other", |(_, detail)| detail)
                    }
                    _ => handle_detail(syscall, detail),
                };
                let stack = self.intern(&ev, CapturedAt::HandleSyscall);
                let stack = self.requested_by(ev.tid, pid, stack);
                if let Some(second) = pair {
                    let second = Op::OpenHandle { fd: second, kind, detail, cloexec, stack };
                    self.ledger.apply(pid, ev.ts_ns, second);
                }
                Op::OpenHandle { fd, kind, detail, cloexec, stack }
            }
            Event::FdDup { old, new, cloexec } => {
                let stack = self.intern(&ev, CapturedAt::HandleSyscall);
                Op::DupHandle { old, new, cloexec, stack }
            }
            Event::CloseRange { first, last, cloexec_only } => Op::CloseRange { first, last, cloexec_only },
            Event::FdSetCloexec { fd, on } => Op::SetCloexec { fd, on },
            Event::Exec { held } => {
                self.threadpool_requested.retain(|(requester, _), _| *requester != pid);
                // A new image: node's counts start again from nothing (see `node_counts`).
                self.node_processes.remove(&pid);
                // A new program: new mappings, maybe a new C library.
                if held {
                    self.held_at_exec.push(pid);
                }
                // The new image is recorded from its first instruction.
                self.born_while_recording.insert(pid);
                self.found_late.remove(&pid);
                self.retire_space(pid);
                *self.images.entry(pid).or_default() += 1;
                self.note_process(pid);
                self.execs.push(pid);
                self.mapped_files.insert(pid);
                Op::Exec
            }
            Event::Exit => {
                self.threadpool_requested.retain(|(requester, _), _| *requester != pid);
                // The profiled process itself keeps what it held at its exit:
                // that is the leak report. Others (children, cgroup members) are gone.
                if self.root == Some(pid) {
                    return;
                }
                Op::Exit
            }
            Event::Fork { child } => {
                if !self.follows_children {
                    // Its frees, closes and exit go unseen: it must not hold copies.
                    return;
                }
                self.born_while_recording.insert(child);
                self.found_late.remove(&child);
                self.note_process(child);
                // The child starts as a copy of the parent's address space, and may
                // exec before we look at it: locate its first frames in the copy.
                if let Some(parent) = self.spaces.get(&pid) {
                    let maps = parent.maps().clone();
                    self.spaces.insert(child, AddressSpace::frozen(child, maps));
                }
                self.forks.push((pid, child));
                Op::Fork { child }
            }
            Event::FdClose { fd } => Op::CloseHandle { fd },
            Event::StdoutWrite { bytes } => {
                self.stdout_written += bytes;
                self.stdout_writes.push((self.stdout_written, ev.ts_ns));
                return;
            }
            Event::OomKill { victim } => {
                if self.spaces.contains_key(&victim) || self.ledger.processes().any(|p| p == victim) {
                    self.oom_killed.push(victim);
                }
                return;
            }
            Event::V8OutOfMemory { heap } => {
                self.v8_out_of_memory.push((pid, ev.ts_ns, heap));
                return;
            }
            Event::WorkRequest { request } => {
                let stack = self.intern(&ev, CapturedAt::Return);
                if self.threadpool_requested.len() >= MAX_QUEUED_WORK {
                    self.threadpool_forgotten += self.threadpool_requested.len() as u64;
                    self.threadpool_requested.clear();
                }
                self.threadpool_requested.insert((pid, request), stack);
                return;
            }
            Event::WorkStart { work } => {
                if self.threadpool_running.len() >= MAX_QUEUED_WORK {
                    self.threadpool_running.clear(); // threads that ended
                }
                // The open request whose work item this is, if any: other work
                // (stat, read, dns) was requested by nobody we follow.
                let request = work.wrapping_sub(UV_FS_WORK_REQ_OFFSET);
                let stack = self.threadpool_requested.remove(&(pid, request));
                self.threadpool_running.insert(ev.tid, stack);
                return;
            }
            Event::StreamInit { stream } => {
                // Only a creator with JS frames says more than the fd's own
                // stack (JS named from V8's heap or from a perf map).
                let stack = self.intern(&ev, CapturedAt::Return);
                let from_js = self.locations[stack as usize].iter().any(Location::is_js);
                if self.stream_creators.len() >= MAX_STREAM_CREATORS {
                    self.stream_creators_forgotten += self.stream_creators.len() as u64;
                    self.stream_creators.clear();
                }
                if from_js {
                    self.stream_creators.insert((pid, stream), stack);
                } else {
                    self.stream_creators.remove(&(pid, stream));
                }
                return;
            }
            Event::StreamOpen { stream, fd } => {
                let Some(creator) = self.stream_creators.remove(&(pid, stream)) else { return };
                let Some(own) = self.ledger.handle_stack(pid, fd) else { return };
                let stack = self.joined(pid, own, Handoff::Handle, creator);
                Op::AttributeHandle { fd, stack }
            }
            Event::Marker => {
                // Events are in order: everything live now was allocated before the marker.
                self.exclude_live();
                self.marker_seen_at = Some(ev.ts_ns);
                return;
            }
        };
        let exited = matches!(op, Op::Exit);
        self.ledger.apply(pid, ev.ts_ns, op);
        if exited {
            self.forget(pid);
        }
    }

    /// When the write carrying stdout byte `offset` (0-based) was made.
    pub fn stdout_write_time(&self, offset: u64) -> Option<u64> {
        let i = self.stdout_writes.partition_point(|(end, _)| *end <= offset);
        self.stdout_writes.get(i).map(|(_, ts)| *ts)
    }

    /// What the processes found running held when recording started: the
    /// fds they had open then and still have, described, and their resident
    /// memory by region as it was then.
    pub fn held_at_start(&self, describer: &mut FdDescriber) -> HeldAtStart {
        let mut held = HeldAtStart::default();
        let mut fds: Vec<(u32, u64, Kind)> = self
            .ledger
            .open_fds()
            .filter(|(site, _, _)| site.stack == StackId::MAX)
            .map(|(site, fd, _)| (site.pid, fd, site.kind))
            .collect();
        fds.sort_unstable();
        for (pid, fd, kind) in fds {
            *held.handle_counts.entry(kind).or_default() += 1;
            if held.handles.len() < HELD_DESCRIBED {
                let description = describer.describe(pid, fd);
                held.handles.push(HeldHandle { pid, kind, description });
            }
        }
        for regions in self.regions_at_start.values() {
            for r in regions {
                match held.memory.iter_mut().find(|t| t.class == r.class.label()) {
                    Some(t) => {
                        t.rss_bytes += r.rss_bytes;
                        t.mappings += r.mappings;
                    }
                    None => held.memory.push(RegionTotal {
                        class: r.class.label().to_string(),
                        rss_bytes: r.rss_bytes,
                        mappings: r.mappings,
                    }),
                }
            }
        }
        held.memory.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.class.cmp(&b.class)));
        held
    }

    /// Node's own counts when recording started and now (read now), over
    /// the node processes still running; `None` without one.
    pub fn node_counts(&mut self) -> Option<NodeCountsThen> {
        // Processes that exec'd node while recording held nothing before.
        let started: Vec<u32> = self
            .born_while_recording
            .iter()
            .filter(|pid| self.spaces.contains_key(pid) && !self.node_processes.contains_key(pid))
            .copied()
            .collect();
        for pid in started {
            let Some(node) = ProcessMaps::read(pid).ok().and_then(|maps| NodeProcess::of(pid, &maps)) else {
                continue;
            };
            self.node_processes.insert(pid, (node, NodeCounts::NOTHING));
        }
        // A count missing in one process (or at one end) leaves the sum unknown.
        let add = |sum: Option<(u64, u64)>, start: Option<u64>, now: Option<u64>| {
            Some((sum?.0 + start?, sum?.1 + now?))
        };
        let mut then = NodeCountsThen::default();
        let (mut v8_heap, mut array_buffers) = (Some((0, 0)), Some((0, 0)));
        for (&pid, (node, at_start)) in &mut self.node_processes {
            let Ok(maps) = ProcessMaps::read(pid) else { continue };
            let Some(regions) = crate::process::smaps::resident_by_region(pid) else { continue };
            let Some(now) = node.counts(&maps, &regions) else { continue };
            then.processes += 1;
            v8_heap = add(v8_heap, at_start.v8_heap_used_bytes, now.v8_heap_used_bytes);
            array_buffers = add(array_buffers, at_start.array_buffers_bytes, now.array_buffers_bytes);
        }
        (then.at_start.v8_heap_used_bytes, then.now.v8_heap_used_bytes) =
            (v8_heap.map(|s| s.0), v8_heap.map(|s| s.1));
        (then.at_start.array_buffers_bytes, then.now.array_buffers_bytes) =
            (array_buffers.map(|s| s.0), array_buffers.map(|s| s.1));
        (then.processes > 0).then_some(then)
    }

    /// The report's per-site entries, named, in interning order (ranked by `report::build`).
    /// Handle stacks' fds are described by `describer` (`fds`).
    pub fn entries(
        &self,
        symbols: &Symbols,
        now_ns: u64,
        min_age_ns: u64,
        describer: &mut FdDescriber,
    ) -> Entries {
        let old = self.ledger.old_values(now_ns.saturating_sub(min_age_ns));
        let times = &self.series.times;
        let mut open_fds: HashMap<Site, Vec<u64>> = HashMap::new();
        for (site, fd, counted) in self.ledger.open_fds() {
            if counted {
                open_fds.entry(site).or_default().push(fd);
            }
        }
        let mut sites: Vec<_> = self.ledger.sites().map(|(s, o)| (*s, *o)).collect();
        // In interning order: the same events give the same report.
        sites.sort_unstable_by_key(|(site, _)| *site);
        let mut by_pid: HashMap<u32, Vec<Location>> = HashMap::new();
        for (site, _) in &sites {
            let (tgid, _) = self.stacks.get(site.stack);
            by_pid.entry(tgid).or_default().extend(self.locations[site.stack as usize].iter().cloned());
        }
        let mut names = HashMap::new();
        for (pid, mut locs) in by_pid {
            locs.sort_unstable();
            locs.dedup();
            let maps = self.spaces.get(&pid).map(AddressSpace::maps).cloned().unwrap_or_default();
            names.extend(symbols.resolve(pid, &maps, &locs));
        }
        // Sites whose symbolized stacks are identical (an unrolled loop: one
        // call site per return address) are one entry.
        let mut merged: Vec<Merged> = Vec::new();
        let mut index: HashMap<(Kind, u32, Vec<FrameIdentity>), usize> = HashMap::new();
        let mut index_of: HashMap<Site, usize> = HashMap::with_capacity(sites.len());
        for (site, o) in &sites {
            // Innermost first overall; an address's inlined frames are listed outermost
            // first by the symbolizer, so reverse them.
            let frames: Vec<Frame> = self.locations[site.stack as usize]
                .iter()
                .flat_map(|l| names.get(l).cloned().unwrap_or_default().into_iter().rev())
                .collect();
            // A JIT stack is the same stack whatever the tier of its JS (see stacks::jit).
            let identity = match crate::stacks::jit::identity_frames(&frames) {
                Some(same) => same.into_iter().map(FrameIdentity::of).collect(),
                None => frames.iter().map(FrameIdentity::of).collect(),
            };
            let i = *index.entry((site.kind, site.pid, identity)).or_insert_with(|| {
                merged.push(Merged {
                    kind: site.kind,
                    pid: site.pid,
                    frames: frames.clone(),
                    bytes: 0,
                    count: 0,
                    age_ns_sum: 0,
                    old: 0,
                    series: Vec::new(),
                    apis: Vec::new(),
                    site_offsets: Vec::new(),
                    sites: 0,
                    fds: Vec::new(),
                });
                merged.len() - 1
            });
            index_of.insert(*site, i);
            let m = &mut merged[i];
            m.bytes += o.bytes;
            m.count += o.count;
            m.age_ns_sum += u128::from(o.mean_age_ns(now_ns)) * u128::from(o.count);
            m.old += old.get(site).copied().unwrap_or(0);
            let series = self.series.of(site);
            m.series.resize(series.len().max(m.series.len()), 0);
            for (sum, v) in m.series.iter_mut().zip(series) {
                *sum += v;
            }
            let api = &self.api[site.stack as usize];
            if !m.apis.contains(api) {
                m.apis.push(api.clone());
            }
            if m.site_offsets.len() < MAX_SITE_OFFSETS {
                m.site_offsets.push(frames.iter().map(|f| f.offset.clone()).collect());
            }
            m.sites += 1;
            if let Some(fds) = open_fds.get(site) {
                m.fds.extend(fds.iter().map(|fd| (site.pid, *fd)));
            }
        }
        let stacks = merged
            .into_iter()
            .map(|m| {
                let value = if m.kind.is_memory() { m.bytes } else { m.count };
                let old_share = m.old as f64 / value.max(1) as f64;
                let points: Vec<(f64, f64)> = times
                    .iter()
                    .zip(&m.series)
                    .skip(self.series.warmup_index)
                    .map(|(t, v)| (*t, *v as f64))
                    .collect();
                let min_growth = if m.kind.is_memory() { 4096.0 } else { 0.5 };
                let trend = (!points.is_empty()).then(|| crate::trend::judge(&points, old_share, min_growth));
                StackEntry {
                    class: None,
                    trend,
                    old_share,
                    series: m.series,
                    kind: m.kind,
                    pid: m.pid,
                    command: self.command(m.pid),
                    bytes: if m.kind.is_memory() { m.bytes } else { 0 },
                    count: m.count,
                    mean_age_s: (m.age_ns_sum / u128::from(m.count.max(1))) as f64 / 1e9,
                    api: m.apis.join(", "),
                    frames: m.frames,
                    sites: m.sites,
                    site_offsets: if m.sites > 1 { m.site_offsets } else { Vec::new() },
                    fds: {
                        let mut fds = m.fds;
                        fds.sort_unstable();
                        fds.iter().take(FDS_DESCRIBED).map(|&(pid, fd)| describer.describe(pid, fd)).collect()
                    },
                }
            })
            .collect();
        Entries { stacks, index_of }
    }
}

/// The per-site entries of a report, and which entry each site went into.
pub struct Entries {
    pub stacks: Vec<StackEntry>,
    pub index_of: HashMap<Site, usize>,
}

/// Threadpool open requests (and threads) followed at once.
const MAX_QUEUED_WORK: usize = 65536;
/// Where a request's work item lies in it: `offsetof(uv_fs_t, work_req)`
/// on x86-64 Linux (request fields to 64, then `fs_type`, `loop`, `cb`,
/// `result`, `ptr`, `path`, the 160-byte `statbuf`, and the private fields
/// to `mtime`), unchanged across libuv 1.x, whose ABI is stable.
const UV_FS_WORK_REQ_OFFSET: u64 = 336;
/// Stream handles created and not yet given an fd, kept (a bound: a handle
/// closed before its fd existed is never removed).
const MAX_STREAM_CREATORS: usize = 65536;
/// Most threads whose run of first touches is kept.
const MAX_FAULT_RUNS: usize = 65536;

/// Open fds described per entry (`fds`).
const FDS_DESCRIBED: usize = 16;
/// Fds held before recording described in the report (`held_at_start`).
const HELD_DESCRIBED: usize = 256;

/// Most code addresses listed per merged entry (`site_offsets`).
const MAX_SITE_OFFSETS: usize = 64;

/// What makes two symbolized frames the same frame for people: everything
/// but the code address.
#[derive(PartialEq, Eq, Hash)]
struct FrameIdentity {
    function: String,
    module: String,
    file: Option<String>,
    line: Option<u32>,
    inlined: bool,
}

impl FrameIdentity {
    fn of(f: &Frame) -> Self {
        Self {
            function: f.function.clone(),
            module: f.module.clone(),
            file: f.file.clone(),
            line: f.line,
            inlined: f.inlined,
        }
    }
}

/// The sites of one entry, summed.
struct Merged {
    kind: Kind,
    pid: u32,
    frames: Vec<Frame>,
    bytes: u64,
    count: u64,
    age_ns_sum: u128,
    old: u64,
    series: Vec<u64>,
    apis: Vec<String>,
    site_offsets: Vec<Vec<String>>,
    sites: u64,
    /// (pid, fd) of the open handles.
    fds: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn sampled_blocks_weigh_their_inverse_probability() {
        let exact = Collector::default();
        assert_eq!(exact.weighted(1000), 1000);
        let sampled = Collector { sample_bytes: 65536, ..Default::default() };
        // Kept with p = 1000/65536: stands for 65536 bytes; blocks >= the mean are always kept.
        assert_eq!(sampled.weighted(1000), 65536);
        assert_eq!(sampled.weighted(1 << 20), 1 << 20);
    }

    use super::*;

    #[test]
    fn a_long_series_is_thinned_to_a_bounded_length() {
        let mut collector = Collector::default();
        for i in 0..=MAX_SAMPLES {
            collector.sample(i as f64, Some(i as u64));
        }
        let series = &collector.series;
        assert_eq!(series.times.len(), MAX_SAMPLES / 2 + 1);
        assert_eq!(series.stride, 2);
        assert_eq!(series.times.last(), Some(&(MAX_SAMPLES as f64)), "the latest sample is kept");
        assert_eq!(series.rss[1], Some(2));
        assert!(series.totals.values().all(|v| v.len() == series.times.len()));
    }

    /// A page continuing its thread's run of first touches takes the stack
    /// of the run's first page; one whose first page is not the thread's
    /// last (its record lost) is counted, not guessed.
    #[test]
    fn fault_runs_take_their_first_pages_stack() {
        use crate::kernel::events::{encode, header};
        use profiler_common::{EventHeader, EventKind};
        let pid = std::process::id();
        let mut collector = Collector::default();
        collector.add_process(pid, ProcessMaps::read(pid).unwrap(), None);
        let fault = |tid: u32, kind: EventKind, page: u64, arg: u64, frames: &[u64]| {
            let h = EventHeader { tid, addr: page, size: 4096, arg, ..header(kind, pid, 1) };
            encode(h, frames, &[])
        };
        let here = fault_runs_take_their_first_pages_stack as *const () as u64;
        collector.ingest(&fault(pid, EventKind::PageFault, 0x10_0000, 0, &[here, here + 1]));
        collector.ingest(&fault(pid, EventKind::PageFaultRun, 0x10_1000, 0x10_0000, &[]));
        collector.ingest(&fault(pid, EventKind::PageFaultRun, 0x10_2000, 0x10_0000, &[]));
        // Another run (its first page lost), and another thread's.
        collector.ingest(&fault(pid, EventKind::PageFaultRun, 0x20_1000, 0x20_0000, &[]));
        collector.ingest(&fault(pid + 1, EventKind::PageFaultRun, 0x10_3000, 0x10_0000, &[]));
        assert_eq!(collector.ledger.total(Kind::Resident).bytes, 3 * 4096);
        let sites: Vec<_> = collector.ledger.sites().filter(|(s, _)| s.kind == Kind::Resident).collect();
        assert_eq!(sites.len(), 1, "one stack: {sites:?}");
        assert_eq!((collector.fault_run_pages, collector.fault_runs_unmatched), (2, 2));
    }

    #[test]
    fn stdout_offsets_map_to_their_write() {
        let c = Collector { stdout_writes: vec![(10, 100), (25, 200)], ..Default::default() };
        assert_eq!(c.stdout_write_time(0), Some(100));
        assert_eq!(c.stdout_write_time(9), Some(100));
        assert_eq!(c.stdout_write_time(10), Some(200));
        assert_eq!(c.stdout_write_time(25), None);
    }

    #[test]
    fn fd_details() {
        assert_eq!(handle_detail(syscalls::SOCKET, (2 << 32) | 1), "tcp");
        assert_eq!(handle_detail(syscalls::SOCKET, (10 << 32) | 2), "udp");
        assert_eq!(handle_detail(syscalls::SOCKETPAIR, (1 << 32) | 1), "unix");
        assert_eq!(handle_detail(syscalls::EPOLL_CREATE1, 0), "epoll");
        assert_eq!(classify_fd_link("anon_inode:[eventfd]"), (Kind::Events, "eventfd"));
        assert_eq!(classify_fd_link("anon_inode:inotify"), (Kind::Events, "inotify"));
        assert_eq!(classify_fd_link("pipe:[1234]"), (Kind::Pipes, "pipe"));
        assert_eq!(classify_fd_link("/dev/pts/0"), (Kind::Files, "file"));
        assert_eq!(classify_fd_link("/memfd:x (deleted)"), (Kind::Files, "memfd"));
    }

    #[test]
    fn effective_sizes() {
        assert_eq!(Event::requested_bytes(AllocApi::Malloc, 10, 0), 10);
        assert_eq!(Event::requested_bytes(AllocApi::Calloc, 10, 3), 30);
        assert_eq!(Event::requested_bytes(AllocApi::Reallocarray, 10, 3), 30);
        assert_eq!(Event::requested_bytes(AllocApi::Pvalloc, 10, 0), 4096);
        assert_eq!(Event::requested_bytes(AllocApi::Pvalloc, 0, 0), 4096);
        assert_eq!(Event::requested_bytes(AllocApi::Pvalloc, 4097, 0), 8192);
    }
}
