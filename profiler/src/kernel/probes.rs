//! Loading the eBPF object and attaching its programs: the per-syscall
//! tracepoints and page-fault tracepoints (global, filtered in the kernel by
//! the TARGETS map) and the allocator uprobes on the target's own C library.
//! [`Probes::detach`] (or dropping [`Probes`]) detaches everything.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use profiler_common::{
    config, counters,
    names::{globals, maps, programs},
    syscalls, AllocApi, ALLOC_APIS,
};

use crate::{
    kernel::allocators::AllocatorImage,
    kernel::counters::KernelCounters,
    kernel::placement::{Placement, PlacementMode},
    stacks::unwind::kernel::KernelTables,
};

/// Functions of node's executable the profiler probes, by file offset,
/// read from its symbol tables only (the static ones are in `.symtab`).
#[derive(Debug, Default)]
pub struct NodeSymbols {
    /// `node::OOMErrorHandler(const char*, ...)` (its signature differs by version).
    pub oom_handler: Option<u64>,
    /// libuv's `uv_fs_open`, whose work opens a file on the threadpool.
    pub fs_open: Option<u64>,
    /// libuv's threadpool work functions (`uv__fs_work`, `uv__getaddrinfo_work`, ...).
    pub work_functions: Vec<(&'static str, u64)>,
    /// libuv's `uv__stream_init`, which initialises a socket, pipe or tty handle.
    pub stream_init: Option<u64>,
    /// libuv's `uv__stream_open`, which gives a stream handle its fd.
    pub stream_open: Option<u64>,
}

/// libuv's threadpool work functions: each takes the work item.
const WORK_FUNCTIONS: [&str; 5] =
    ["uv__fs_work", "uv__getaddrinfo_work", "uv__getnameinfo_work", "uv__queue_work", "uv__random_work"];

/// What of node `exe` has; `None` when it is not node (no out-of-memory handler).
pub fn node_symbols(exe: &std::fs::File) -> Option<NodeSymbols> {
    use object::{Object, ObjectSection, ObjectSymbol};
    const OOM_HANDLER: &str = "_ZN4node15OOMErrorHandlerEPKc";
    let cache = object::ReadCache::new(exe);
    let elf = object::File::parse(&cache).ok()?;
    let file_offset = |address: u64| {
        let section = elf.sections().find(|s| s.address() <= address && address < s.address() + s.size())?;
        Some(section.file_range()?.0 + (address - section.address()))
    };
    let mut found = NodeSymbols::default();
    for sym in elf.dynamic_symbols().chain(elf.symbols()).filter(|s| s.is_definition()) {
        let Ok(name) = sym.name() else { continue };
        if found.oom_handler.is_none() && name.starts_with(OOM_HANDLER) {
            found.oom_handler = file_offset(sym.address());
        } else if name == "uv_fs_open" {
            found.fs_open = file_offset(sym.address());
        } else if name == "uv__stream_init" {
            found.stream_init = file_offset(sym.address());
        } else if name == "uv__stream_open" {
            found.stream_open = file_offset(sym.address());
        } else if let Some(work) = WORK_FUNCTIONS.iter().find(|w| **w == name) {
            if !found.work_functions.iter().any(|(w, _)| w == work) {
                found.work_functions.extend(file_offset(sym.address()).map(|o| (*work, o)));
            }
        }
    }
    found.oom_handler.is_some().then_some(found)
}

/// The compiled eBPF object (see build.rs).
static EBPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/profiler.bpf.o"));

/// Load-time switches of the kernel side.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeSettings {
    /// Enables the in-kernel cgroup filter.
    pub cgroup_mode: bool,
    /// Mean bytes between sampled allocations (`--sample-bytes`); 0 records every call.
    pub sample_bytes: u64,
    pub placement: PlacementMode,
    /// Stop every exec'd target (SIGSTOP) until its allocator is probed.
    pub hold_at_exec: bool,
}

pub struct Probes {
    /// Every attached link (dropping one detaches it).
    links: Vec<Box<dyn Send>>,
    ebpf: Ebpf,
    placement: PlacementMode,
    /// Human-readable list of what is attached, for the report.
    pub attached: Vec<String>,
    /// Allocator entry points that could not be probed, with the reason.
    pub skipped: Vec<String>,
    /// (probed entry point, alias at the same address that was not probed separately).
    pub aliases: Vec<(AllocApi, AllocApi)>,
    /// The kernel stack walker's call-frame tables.
    pub tables: KernelTables,
}

impl Probes {
    /// Loads the programs with their load-time settings.
    pub fn load(ringbuf_bytes: u32, settings: ProbeSettings) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this profiler binary was built without its eBPF programs; build it with `cargo xtask build`"
            );
        }
        let mut ebpf = EbpfLoader::new()
            // The programs need no CO-RE relocations against the kernel's
            // types: not parsing vmlinux's BTF saves ~25 MiB of profiler memory.
            .btf(None)
            .map_max_entries(maps::EVENTS, ringbuf_bytes)
            .override_global(globals::CGROUP_MODE, &(settings.cgroup_mode as u8), true)
            .override_global(globals::SAMPLE_BYTES, &settings.sample_bytes, true)
            .override_global(globals::HOLD_AT_EXEC, &(settings.hold_at_exec as u8), true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs into the kernel")?;
        crate::release_freed_memory();
        let tables = KernelTables::new(
            ebpf.take_map(maps::UNWIND_ROWS).context(maps::UNWIND_ROWS)?,
            ebpf.take_map(maps::UNWIND_PROCESSES).context(maps::UNWIND_PROCESSES)?,
        )?;
        Ok(Self {
            tables,
            links: Vec::new(),
            ebpf,
            placement: settings.placement,
            attached: Vec::new(),
            skipped: Vec::new(),
            aliases: Vec::new(),
        })
    }

    /// Adds a process to the in-kernel filter.
    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        let mut targets: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut(maps::TARGETS).context(maps::TARGETS)?)?;
        targets.insert(tgid, 1, 0).context("adding the target to the filter map")?;
        Ok(())
    }

    /// Empties the in-kernel filter: the programs record nothing more.
    pub fn stop_recording(&mut self) {
        fn clear<K: aya::Pod>(map: Option<&mut aya::maps::Map>) {
            if let Some(Ok(mut map)) = map.map(BpfHashMap::<_, K, u8>::try_from) {
                let keys: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
                for k in keys {
                    let _ = map.remove(&k);
                }
            }
        }
        clear::<u32>(self.ebpf.map_mut(maps::TARGETS));
        clear::<u64>(self.ebpf.map_mut(maps::CGROUPS));
    }

    /// Adds cgroups (by v2 id) to the in-kernel filter.
    pub fn add_cgroups(&mut self, ids: &[u64]) -> Result<()> {
        let mut cgroups: BpfHashMap<_, u64, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut(maps::CGROUPS).context(maps::CGROUPS)?)?;
        for id in ids {
            cgroups.insert(*id, 1, 0).context("adding a cgroup to the filter map")?;
        }
        Ok(())
    }

    /// Attaches the syscall programs to each traced syscall's own tracepoints,
    /// so the machine's other syscalls run no program (a raw `sys_enter`
    /// program would run on every one). fd calls only with `handles`;
    /// `write` only when stdout writes are needed (a warm-up marker line).
    pub fn attach_syscalls(&mut self, handles: bool, stdout_writes: bool) -> Result<()> {
        let wanted = syscalls::TRACED.iter().filter(|(nr, _)| {
            (handles || !syscalls::is_handle_call(*nr)) && (stdout_writes || *nr != syscalls::WRITE)
        });
        for (prog, phase) in [(programs::SYSCALL_ENTER, "enter"), (programs::SYSCALL_EXIT, "exit")] {
            let p: &mut TracePoint = self.ebpf.program_mut(prog).context(prog)?.try_into()?;
            p.load().with_context(|| format!("loading {prog}"))?;
            let mut names = Vec::new();
            for (nr, name) in wanted.clone() {
                if phase == "exit" && syscalls::recorded_on_entry(*nr) {
                    continue;
                }
                let tp = format!("sys_{phase}_{name}");
                match p.attach("syscalls", &tp).and_then(|id| p.take_link(id)) {
                    Ok(link) => {
                        self.links.push(Box::new(link));
                        names.push(*name)
                    }
                    Err(e) => self.skipped.push(format!("syscalls:{tp} ({name} not traced): {e}")),
                }
            }
            self.attached.push(format!("tracepoint:syscalls:sys_{phase}_{{{}}}", names.join(",")));
        }
        Ok(())
    }

    /// Attaches the allocator probes to every entry point of `image` (opened
    /// as the target maps it) for process `pid`. Entry points that are
    /// aliases of one already probed (same address) are skipped, since two
    /// probes at one address would count each call twice.
    pub fn attach_allocator(&mut self, image: &AllocatorImage, pid: u32) -> Result<()> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        self.attach_allocator_scoped(image, scope)
    }

    /// Like [`attach_allocator`](Self::attach_allocator) for every process
    /// using this image, left to the kernel-side filter (cgroup mode: a
    /// process that enters later is covered from its first instruction).
    pub fn attach_allocator_everywhere(&mut self, image: &AllocatorImage) -> Result<()> {
        self.attach_allocator_scoped(image, UProbeScope::AllProcesses)
    }

    fn attach_allocator_scoped(&mut self, image: &AllocatorImage, scope: UProbeScope) -> Result<()> {
        let name_seen = &image.path;
        // The kernel resolves this path to the open file's inode.
        let target = PathBuf::from(image.file.proc_path());
        let target = target.as_path();
        let mut probed_at: BTreeMap<u64, &str> = BTreeMap::new();
        for entry in &image.entries {
            let (name, api) = (entry.symbol.as_str(), entry.api);
            if let Some(first) = probed_at.get(&entry.address) {
                let note = format!("{name}: alias of {first} (same address) in {name_seen}, counted there");
                if !self.skipped.contains(&note) {
                    self.skipped.push(note);
                    let standard = |s: &str| ALLOC_APIS.iter().find(|a| a.symbol() == s).copied();
                    if let (Some(first), Some(alias)) = (standard(first), standard(name)) {
                        self.aliases.push((first, alias));
                    }
                }
                continue;
            }
            probed_at.insert(entry.address, name);
            let Some(code) = &entry.code else {
                self.skipped.push(format!("{name}: its code is in no section of {name_seen}"));
                continue;
            };
            let entry_placement = Placement { offset: 0, note: "offset 0 (--probe-placement entry)".into() };
            let placement = match self.placement {
                PlacementMode::Entry => &entry_placement,
                PlacementMode::Emulated => &code.emulated,
            };
            let location = || UProbeAttachLocation::AbsoluteOffset(code.file_offset + placement.offset);
            if api != AllocApi::Free {
                // Same place as the entry probe: one trap serves both. The
                // return probe goes first, so every call whose entry is seen
                // has its return seen too (a thread mid-call at attach time
                // has neither).
                let r: &mut UProbe = self
                    .ebpf
                    .program_mut(programs::ALLOC_RETURN)
                    .context(programs::ALLOC_RETURN)?
                    .try_into()?;
                if r.fd().is_err() {
                    r.load()?;
                }
                let id = r
                    .attach(location(), target, scope)
                    .with_context(|| format!("attaching uretprobe {name} in {name_seen}"))?;
                self.links.push(Box::new(r.take_link(id)?));
            }
            let program = api.entry_program();
            let p: &mut UProbe = self.ebpf.program_mut(program).context(program)?.try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            let id = p
                .attach(location(), target, scope)
                .with_context(|| format!("attaching uprobe {name} in {name_seen}"))?;
            self.links.push(Box::new(p.take_link(id)?));
            let shape = if api.symbol() == name { String::new() } else { format!(" (as {})", api.symbol()) };
            let attached = format!(
                "uprobe{}:{name}{shape} at {} in {} ({})",
                if api == AllocApi::Free { "" } else { "+uretprobe" },
                placement.note,
                name_seen,
                image.family.name()
            );
            if !self.attached.contains(&attached) {
                self.attached.push(attached);
            }
        }
        Ok(())
    }

    /// Emits a marker event whenever process `pid` calls `function` in `binary`.
    pub fn attach_marker(&mut self, binary: &Path, function: &str, pid: u32) -> Result<()> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        let p: &mut UProbe = self.ebpf.program_mut(programs::MARKER).context(programs::MARKER)?.try_into()?;
        p.load()?;
        let id = p.attach(function, binary, scope).with_context(|| {
            format!("attaching the marker to function `{function}` in {}", binary.display())
        })?;
        self.links.push(Box::new(p.take_link(id)?));
        self.attached.push(format!("uprobe:{function} (marker)"));
        Ok(())
    }

    /// Attaches the probes for node process `pid`'s executable, for every
    /// process of that file the filter lets through (followed children too):
    /// the V8 out-of-memory probe, and with `handles` libuv's threadpool
    /// probes (queued work and its start), so what a threadpool thread opens
    /// is attributed to the code that queued it, and its stream probes
    /// (handle created, handle given its fd), so a socket's fd is attributed
    /// to the code that created the socket. `false` when it is not node.
    pub fn attach_node(&mut self, pid: u32, handles: bool) -> Result<bool> {
        use std::os::fd::AsRawFd;
        let exe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/{pid}/exe"))
            .with_context(|| format!("opening the executable of pid {pid}"))?;
        let Some(symbols) = node_symbols(&exe) else { return Ok(false) };
        let target = format!("/proc/self/fd/{}", exe.as_raw_fd());
        let mut probes: Vec<(&str, u64, &str)> = Vec::new();
        probes.extend(
            symbols
                .oom_handler
                .map(|o| (programs::V8_OUT_OF_MEMORY, o, "node::OOMErrorHandler (V8 out of memory)")),
        );
        match (handles, symbols.stream_init, symbols.stream_open) {
            (false, ..) => {}
            (true, Some(init), Some(open)) => {
                probes.push((programs::STREAM_INIT, init, "uv__stream_init (socket and pipe handles created)"));
                probes.push((programs::STREAM_OPEN, open, "uv__stream_open (handles given their fd)"));
            }
            (true, ..) => self.skipped.push(
                "libuv streams: node's executable lacks uv__stream_init or uv__stream_open in its symbol table (stripped?): sockets keep the stack that opened their fd".into(),
            ),
        }
        match (handles, symbols.fs_open, symbols.work_functions.is_empty()) {
            (false, ..) => {}
            (true, Some(open), false) => {
                probes.push((programs::THREADPOOL_REQUEST, open, "uv_fs_open (threadpool open requests)"));
                probes.extend(symbols.work_functions.iter().map(|(name, o)| (programs::THREADPOOL_WORK, *o, *name)));
            }
            (true, ..) => self.skipped.push(
                "libuv threadpool: node's executable lacks uv_fs_open or the work functions in its symbol table (stripped?): files opened by fs calls keep the threadpool thread's stack".into(),
            ),
        }
        for (program, offset, what) in probes {
            let p: &mut UProbe = self.ebpf.program_mut(program).context(program)?.try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            let id = p
                .attach(UProbeAttachLocation::AbsoluteOffset(offset), &target, UProbeScope::AllProcesses)
                .with_context(|| format!("attaching uprobe {what}"))?;
            self.links.push(Box::new(p.take_link(id)?));
            self.attached.push(format!("uprobe:{what}"));
        }
        Ok(true)
    }

    /// Attaches the exec and fork tracepoints; with `follow`, children forked
    /// by a target become targets in the kernel before they first run.
    pub fn attach_process_tracepoints(&mut self, follow: bool) -> Result<()> {
        let offset = fork_child_pid_offset()?;
        let mut config: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).context(maps::CONFIG)?)?;
        config.set(config::FORK_CHILD_PID_OFFSET, offset, 0)?;
        config.set(config::FOLLOW_CHILDREN, follow as u64, 0)?;
        for name in [programs::SCHED_PROCESS_EXEC, programs::SCHED_PROCESS_FORK, programs::SCHED_PROCESS_EXIT]
        {
            let p: &mut TracePoint = self.ebpf.program_mut(name).context(name)?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            let id = p.attach("sched", name).with_context(|| format!("attaching tracepoint sched:{name}"))?;
            self.links.push(Box::new(p.take_link(id)?));
            self.attached.push(format!("tracepoint:sched:{name}"));
        }
        let p: &mut TracePoint = self
            .ebpf
            .program_mut(programs::OOM_MARK_VICTIM)
            .context(programs::OOM_MARK_VICTIM)?
            .try_into()?;
        p.load().context("loading oom_mark_victim")?;
        match p.attach("oom", "mark_victim").and_then(|id| p.take_link(id)) {
            Ok(link) => {
                self.links.push(Box::new(link));
                self.attached.push("tracepoint:oom:mark_victim".into())
            }
            Err(e) => self.skipped.push(format!("oom:mark_victim (OOM kills not detected): {e}")),
        }
        Ok(())
    }

    /// Attaches the first-touch page-fault tracepoints (the resident lens).
    pub fn attach_page_faults(&mut self) -> Result<()> {
        let p: &mut TracePoint =
            self.ebpf.program_mut(programs::PAGE_FAULT).context(programs::PAGE_FAULT)?.try_into()?;
        p.load().context("loading page_fault")?;
        for name in ["page_fault_user", "page_fault_kernel"] {
            let id = p.attach("exceptions", name).with_context(|| {
                format!("attaching tracepoint exceptions:{name} (needed by --lens resident)")
            })?;
            self.links.push(Box::new(p.take_link(id)?));
            self.attached.push(format!("tracepoint:exceptions:{name}"));
        }
        Ok(())
    }

    /// Detaches every probe without making the caller wait. Releasing a
    /// syscall tracepoint link waits for two RCU grace periods under the
    /// kernel's global `event_mutex` (`perf_trace_event_unreg`), so 75 links
    /// take 7-14 s however they are released; that wait is handed to a
    /// background process. A grandchild forked here holds a copy of every
    /// descriptor, our copies are closed (fast: only the last close
    /// releases), and the grandchild exits once our end of a pipe closes,
    /// leaving the kernel to release the links in its exit. The programs
    /// stay attached until then, but record nothing: the caller emptied the
    /// kernel filter first ([`Probes::stop_recording`]).
    pub fn detach(self) {
        match release_in_background() {
            Ok(done) => {
                drop(self);
                drop(done);
            }
            Err(_) => drop(self),
        }
    }

    pub fn take_ringbuf(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(self.ebpf.take_map(maps::EVENTS).context(maps::EVENTS)?)?)
    }

    /// Kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::COUNTERS).context(maps::COUNTERS)?)?;
        let mut raw = [0u64; counters::COUNT];
        for (i, slot) in raw.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(KernelCounters::from_slots(&raw))
    }
}

/// Forks the grandchild that outlives our copies of the probe descriptors;
/// dropping the returned pipe end lets it exit.
fn release_in_background() -> nix::Result<std::os::fd::OwnedFd> {
    use nix::{
        sys::wait::waitpid,
        unistd::{fork, pipe, ForkResult},
    };
    let (wait_end, done_end) = pipe()?;
    use std::os::fd::AsRawFd;
    // Everything but the kernel objects (links, programs, maps, perf events:
    // anonymous inodes) is closed in the grandchild: our output directory,
    // files and standard streams must not outlive us. Listed now, since the
    // child may not allocate.
    let mut close: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let fd: i32 = e.file_name().to_str()?.parse().ok()?;
                    let anon = std::fs::read_link(e.path())
                        .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"anon_inode:"));
                    (!anon && fd != wait_end.as_raw_fd()).then_some(fd)
                })
                .collect()
        })
        .unwrap_or_else(|_| vec![0, 1, 2, done_end.as_raw_fd()]);
    close.push(done_end.as_raw_fd());
    // SAFETY: the child and grandchild call only async-signal-safe functions
    // (raw syscalls) and leave with _exit, running no destructor.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(wait_end);
            let _ = waitpid(child, None);
            Ok(done_end)
        }
        ForkResult::Child => unsafe {
            if !matches!(fork(), Ok(ForkResult::Child)) {
                libc::_exit(0);
            }
            // Not the standard streams either: whoever reads our output to its end must not wait for us.
            for fd in &close {
                libc::close(*fd);
            }
            libc::prctl(libc::PR_SET_NAME, c"profiler-detach".as_ptr());
            let mut byte = 0u8;
            while libc::read(wait_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) < 0 {}
            libc::_exit(0)
        },
    }
}

/// Where `child_pid` sits in a `sched_process_fork` record: the layout
/// changed across kernels (comm became `__data_loc`), so read it from tracefs.
fn fork_child_pid_offset() -> Result<u64> {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/sched/sched_process_fork/format")).ok())
        .context("cannot read the sched_process_fork tracepoint format: is tracefs mounted? (mount -t tracefs tracefs /sys/kernel/tracing)")?;
    parse_field_offset(&format, "child_pid").context("sched_process_fork has no child_pid field")
}

fn parse_field_offset(format: &str, field: &str) -> Option<u64> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        if decl.split_whitespace().last()? != field {
            return None;
        }
        rest.trim().strip_prefix("offset:")?.split(';').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_tracepoint_field_offsets() {
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        let new = "\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(super::parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(super::parse_field_offset(new, "child_pid"), Some(20));
        assert_eq!(super::parse_field_offset(new, "parent_pid"), None);
    }
}

#[cfg(test)]
mod contract_tests {
    use object::{Object, ObjectSymbol};

    use super::*;

    /// Every map, global and program name userspace uses is a symbol of the
    /// eBPF object it embeds (a renamed kernel-side static fails here, not
    /// at attach time as root).
    #[test]
    fn every_shared_name_is_in_the_ebpf_object() {
        if EBPF_OBJECT.is_empty() {
            eprintln!("SKIPPED: built without the eBPF object (no bpf-linker); `cargo xtask test` builds it");
            return;
        }
        let object = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let symbols: Vec<&str> = object.symbols().filter_map(|s| s.name().ok()).collect();
        let entry_programs = ALLOC_APIS.map(AllocApi::entry_program);
        let wanted = maps::ALL.iter().chain(&globals::ALL).chain(&programs::ALL).chain(&entry_programs);
        for name in wanted {
            assert!(symbols.contains(name), "{name} is not in the eBPF object");
        }
    }

    #[test]
    fn syscall_slots_follow_the_traced_list() {
        for (i, (nr, _)) in syscalls::TRACED.iter().enumerate() {
            assert_eq!(syscalls::slot(*nr), Some(i));
        }
        assert_eq!(syscalls::slot(1000), None);
        assert!(counters::COUNT > counters::SYSCALLS + syscalls::TRACED.len());
    }
}
