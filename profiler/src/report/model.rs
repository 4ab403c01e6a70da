//! The report model, serialized as `report.json`. The schema is documented
//! in `docs/report-schema.md`; bump [`SCHEMA_VERSION`] on incompatible change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{kind::Kind, ledger::LedgerCounters};

pub const SCHEMA_VERSION: u32 = 1;

/// How a target process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (`SIGSEGV`, `SIGKILL`, ...).
    Signal(String),
    /// It is gone, but its status was not seen (its parent reaped it first).
    Unknown,
}

impl TargetExit {
    /// An exit code of 0.
    pub fn is_success(&self) -> bool {
        *self == Self::Code(0)
    }
}

impl std::fmt::Display for TargetExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(sig) => write!(f, "killed by {sig}"),
            Self::Unknown => write!(f, "exited, status not seen"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Report {
    pub schema_version: u32,
    pub profiler_version: String,
    pub target: TargetInfo,
    /// Unix time (s) recording started.
    pub started_at: u64,
    pub duration_s: f64,
    /// Why recording ended: `target exited (...)`, `duration elapsed`, `SIGINT`, `SIGTERM`, `SIGHUP`.
    pub end_reason: String,
    /// How the target process ended, when it ended while recording (launch and attach modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_exit: Option<TargetExit>,
    /// What was excluded as warm-up, if a warm-up was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<String>,
    /// A view taken by `profiler report` (`--focus`, `--pid`, ...): the
    /// stacks and totals are only those it kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// Per kind (`heap`, `mmap`, `file-mmap`, `brk`, `sockets`): what is outstanding.
    pub totals: BTreeMap<Kind, Total>,
    /// V8 heap / external (ArrayBuffer) / other native memory, from the stacks.
    #[serde(default)]
    pub memory_split: super::split::MemorySplit,
    /// Samples taken every `--interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<SeriesReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The profiled cgroup and its memory controller's numbers (cgroup mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupInfo>,
    /// Outstanding per process (launch mode follows the whole process tree).
    #[serde(default)]
    pub processes: Vec<ProcessSummary>,
    /// Open fds by kind and type (`sockets`: `tcp`, `udp`, `unix`, ...), split
    /// into opened while recording and pre-existing (open before, not leaks).
    #[serde(default)]
    pub handles: BTreeMap<Kind, BTreeMap<String, HandleCount>>,
    /// What the processes already held when recording started (attach and
    /// cgroup modes), origin unknown; not part of `totals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_at_start: Option<HeldAtStart>,
    /// V8's own heap numbers and limit, read through node's inspector (`--lens js-heap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v8_heap: Option<V8Heap>,
    /// Heap snapshots (`--heap-snapshot`) and what grew between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v8_heap_snapshots: Option<HeapSnapshots>,
    /// V8 out-of-memory aborts seen (node's `OOMErrorHandler` was called).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v8_out_of_memory: Vec<V8OutOfMemory>,
    /// Notes for the user about the target (e.g. a wrapper whose children do the work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
    /// Outstanding per allocation site, largest first within each kind.
    pub stacks: Vec<StackEntry>,
    /// The files the stacks' frames are in (by the `module` of their frames),
    /// for tools that read their code (pprof `-disasm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleInfo>,
    pub accuracy: Accuracy,
}

impl Report {
    /// Reads a `report.json` this profiler wrote; refuses other schema versions.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let report: Report = serde_json::from_slice(bytes)?;
        if report.schema_version != SCHEMA_VERSION {
            anyhow::bail!(
                "report schema version {}; this profiler reads version {SCHEMA_VERSION}",
                report.schema_version
            );
        }
        Ok(report)
    }
}

/// An executable or library frames are in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModuleInfo {
    /// As frames name it (`module`): the file name.
    pub name: String,
    /// The path the target mapped it from.
    pub path: String,
    /// The GNU build id, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The executable segment, which frames' file offsets fall in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSegment>,
}

/// An ELF executable segment: where its bytes are in the file and where it is linked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TextSegment {
    pub offset: u64,
    pub vaddr: u64,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetInfo {
    pub pid: u32,
    pub command: String,
    /// `launch` (started by the profiler) or `attach` (`--pid`).
    pub mode: String,
    pub libc: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Total {
    /// Outstanding bytes (0 for handle kinds).
    pub bytes: u64,
    /// Outstanding blocks, mappings or open handles.
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CgroupInfo {
    pub path: String,
    /// The memory controller's limit and usage when recording ended.
    pub memory: Option<CgroupMemory>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessSummary {
    pub pid: u32,
    pub command: String,
    /// Its cgroup v2 path (e.g. a container's scope), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Per kind, like the report's totals.
    pub totals: BTreeMap<Kind, Total>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StackEntry {
    pub kind: Kind,
    pub pid: u32,
    /// The process's command line when last seen.
    #[serde(default)]
    pub command: String,
    /// Outstanding bytes (0 for handle kinds).
    pub bytes: u64,
    /// Outstanding blocks, mappings or open handles.
    pub count: u64,
    /// Mean age of the outstanding items when recording ended.
    pub mean_age_s: f64,
    /// The allocator entry point or syscall that allocated (`malloc`, `mmap`, ...).
    pub api: String,
    /// Innermost first; inlined frames are expanded.
    pub frames: Vec<Frame>,
    /// Memory class: `v8-heap`, `external` or `native` (absent for handle kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Growth rate and verdict, when samples were taken (`--interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
    /// Share of the outstanding value older than `--min-age`.
    #[serde(default)]
    pub old_share: f64,
    /// The value at each sample time of `series.times` (none for `js-heap`,
    /// read at the inspector's own times).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<u64>,
    /// How many code paths (distinct return addresses with identical
    /// symbolized frames, e.g. an unrolled loop's calls) this entry merges.
    #[serde(default = "one")]
    pub sites: u64,
    /// The frames' code addresses of each merged path (first 64), when more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_offsets: Vec<Vec<String>>,
    /// Handle kinds: the open fds, as `lsof` describes them (`fd 7: tcp
    /// 127.0.0.1:41154 -> 127.0.0.1:8080 established`, `fd 9: /var/log/app.log`), first 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<String>,
}

/// What the processes held when recording started: opened or allocated
/// before the profiler attached, so no stack is known.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeldAtStart {
    /// Fds open before recording and still open at its end, per kind.
    pub handle_counts: BTreeMap<Kind, u64>,
    /// Those fds, described (first 256).
    pub handles: Vec<HeldHandle>,
    /// Resident memory by region class when recording started (from
    /// `/proc/PID/smaps`, summed over the processes found running).
    pub memory: Vec<RegionTotal>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeldHandle {
    pub pid: u32,
    pub kind: Kind,
    /// `fd 7: tcp 127.0.0.1:41154 -> 127.0.0.1:8080 established`, or the fd alone when gone.
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegionTotal {
    /// `malloc heap (brk)`, `V8 heap, old generation (...)`, `thread stacks`, `file mappings`, ...
    pub class: String,
    pub rss_bytes: u64,
    pub mappings: u64,
}

/// V8's heap as V8 counts it (`v8.getHeapStatistics()`), at the last
/// reading, and its series over the recording.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct V8Heap {
    pub pid: u32,
    /// Where the inspector listened, and whether it was opened and closed for this recording.
    pub inspector: String,
    /// `heap_size_limit`: `--max-old-space-size`, or V8's default for this machine's memory.
    pub limit_bytes: u64,
    /// `used_heap_size`: live objects and garbage not yet collected.
    pub used_bytes: u64,
    /// `total_heap_size`: pages V8 has committed.
    pub committed_bytes: u64,
    /// `process.memoryUsage().external`: memory of C++ objects bound to JS
    /// objects, ArrayBuffer backing stores included.
    pub external_bytes: u64,
    /// `process.memoryUsage().arrayBuffers`: ArrayBuffer and Buffer backing stores.
    pub array_buffers_bytes: u64,
    /// used / limit, percent (the seeds' "heap utilization", against the limit,
    /// not against the heap's current size).
    pub utilisation_pct: f64,
    /// `ok`; `warning` from 80% of the limit; `critical` from 90%.
    pub level: String,
    /// Robust slope of `used_bytes` over the recording.
    pub growth_mib_per_min: f64,
    /// Seconds until `used_bytes` reaches the limit at that slope; absent
    /// while not growing or with too few readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_limit_s: Option<f64>,
    /// Per V8 space (`new_space`, `old_space`, `code_space`, `large_object_space`, ...).
    pub spaces: Vec<V8Space>,
    /// Readings taken (the series below may be thinned).
    pub readings: u64,
    /// V8's counts at the first reading, right after attaching: what the
    /// process held then, by V8's own count (see `held_at_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<V8Counts>,
    /// The longest a reading took, ms (wall time, waiting for node's event loop included).
    #[serde(default)]
    pub longest_call_ms: f64,
    /// Seconds since recording started, per reading.
    pub times: Vec<f64>,
    /// `used_bytes` per reading.
    pub used: Vec<u64>,
    pub utilisation_pct_series: Vec<f64>,
    /// The time to the limit as judged at each reading (from the readings up to it).
    pub time_to_limit_s_series: Vec<Option<f64>>,
}

/// V8 heap snapshots taken (`--heap-snapshot`) and what grew between them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeapSnapshots {
    pub taken: Vec<TakenHeapSnapshot>,
    /// Each later snapshot against the first.
    pub comparisons: Vec<HeapSnapshotComparison>,
}

/// One heap snapshot, written as a `.heapsnapshot` file (DevTools' Memory
/// tab loads it, and compares two).
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TakenHeapSnapshot {
    /// `start`, `end`, or the `--snapshot-at` size crossed (`2GiB`).
    pub label: String,
    /// Seconds since recording started.
    pub at_s: f64,
    /// How long node's JavaScript was paused while V8 wrote it, ms.
    pub pause_ms: f64,
    /// The file, in the output directory.
    pub file: String,
    /// Size of the snapshot's JSON.
    pub file_bytes: u64,
    pub objects: u64,
    /// Sum of the objects' own sizes.
    pub heap_bytes: u64,
}

/// A later heap snapshot against the first, as DevTools' comparison view.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeapSnapshotComparison {
    /// The first snapshot's label.
    pub base: String,
    /// The later snapshot's label.
    pub to: String,
    /// The classes whose bytes grew most (a class is an object's
    /// constructor name, else its type: `(string)`, `(closure)`, `(array)`).
    pub grew: Vec<ClassGrowth>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClassGrowth {
    pub class: String,
    /// Objects in the later snapshot that the first did not have.
    pub new_objects: u64,
    /// Objects of the first snapshot gone from the later.
    pub deleted_objects: u64,
    pub new_bytes: u64,
    pub freed_bytes: u64,
    pub delta_bytes: i64,
    /// How the new objects are retained, from the roots down
    /// (`SyncService.processedRecords`, `Set.table`, `(array)[]`): of 32
    /// new objects spread over the class, the path holding most of their
    /// bytes, each step through the retainer nearest the roots (the
    /// program's own objects before V8's internal roots, as DevTools
    /// orders them); at most the 10 steps nearest the objects. Empty for
    /// the classes past the first five and those that did not grow.
    pub retained_by: Vec<String>,
    /// How much of the sampled new objects' bytes that path holds.
    pub path_share: String,
}

/// V8's own counts at one reading.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct V8Counts {
    /// Seconds since recording started.
    pub at_s: f64,
    /// `total_heap_size`: the V8 heap's committed pages.
    pub committed_bytes: u64,
    /// `used_heap_size`.
    pub used_bytes: u64,
    /// `process.memoryUsage().external` (ArrayBuffers included).
    pub external_bytes: u64,
    /// `process.memoryUsage().arrayBuffers`.
    pub array_buffers_bytes: u64,
}

/// A V8 out-of-memory abort: node prints `FATAL ERROR: ... JavaScript heap
/// out of memory` and aborts (SIGABRT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct V8OutOfMemory {
    pub pid: u32,
    /// Seconds since recording started.
    pub at_s: f64,
    /// `JavaScript heap out of memory` (the heap reached its limit) or
    /// `V8 process out of memory` (another V8 allocation failed).
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct V8Space {
    pub name: String,
    pub used_bytes: u64,
    pub size_bytes: u64,
    pub available_bytes: u64,
}

fn one() -> u64 {
    1
}

/// Samples of the whole recording.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeriesReport {
    pub interval_s: f64,
    /// Seconds since recording started.
    pub times: Vec<f64>,
    /// Per kind: outstanding total at each sample.
    pub totals: BTreeMap<Kind, Vec<u64>>,
    /// Resident memory at each sample (process RSS, or the cgroup's usage); null where unknown.
    pub rss: Vec<Option<u64>>,
}

/// Overall growth against the thresholds, and the time left until the limit.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Status {
    /// Robust growth rate of resident memory (or of the outstanding total when RSS is unknown).
    pub growth_mib_per_min: f64,
    /// The rise that stayed, per minute (a step the slope does not see);
    /// the level is judged on the larger of the two.
    #[serde(default)]
    pub retained_mib_per_min: f64,
    /// `normal`, `slow leak`, `active leak` or `critical`; `unknown` with
    /// fewer samples than a trend needs.
    pub level: String,
    /// Samples the growth was measured on.
    #[serde(default)]
    pub samples: usize,
    /// What the growth was measured on: `rss`, `cgroup usage` or `outstanding`.
    pub measured_on: String,
    pub current_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_source: Option<String>,
    /// Estimated seconds until the limit at the measured rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_limit_s: Option<f64>,
}

/// Everything that could make the numbers incomplete. Each field is measured;
/// none is zero merely because it was not counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Accuracy {
    /// The lenses recorded (`alloc`, `resident`, `handles`).
    #[serde(default)]
    pub lenses: String,
    /// Cgroup mode: processes a scan found already running that were not
    /// seen starting (they entered the cgroup, or started within a scan of
    /// its creation): what they allocated before is unseen.
    #[serde(default)]
    pub late_processes: u64,
    /// `--sample-bytes`: heap blocks were sampled about once per this many
    /// bytes and their bytes scaled (unbiased); heap counts are sampled blocks. 0: exact.
    #[serde(default)]
    pub sample_bytes: u64,
    /// Allocator calls sampling left out (still trapped, not recorded).
    #[serde(default)]
    pub unsampled_calls: u64,
    /// Sampled blocks not followed because the kernel's sampled-block map was full.
    #[serde(default)]
    pub sampled_map_full: u64,
    /// First-touch page faults seen (resident lens).
    #[serde(default)]
    pub page_faults: u64,
    /// What profiling cost the profiler itself (the target's added cost is
    /// in its uprobe traps: see `cargo xtask bench`).
    #[serde(default)]
    pub profiler_cost: ProfilerCost,
    /// Calls seen per probe (allocator entry points and syscalls).
    pub calls_seen: BTreeMap<String, u64>,
    pub events_received: u64,
    /// Records that could not be decoded.
    pub undecodable_events: u64,
    /// Events whose user stack could not be captured (attributed to `[stack unavailable]`).
    pub stack_failures: u64,
    /// Events whose stack walk left executable memory (code without frame
    /// pointers, typically inside libc) and was cut there.
    #[serde(default)]
    pub truncated_stacks: u64,
    /// Frames in JIT code nothing named: no perf map entry (`[jit]+0x...`),
    /// or a JS function whose V8 objects could not be read.
    #[serde(default)]
    pub unnamed_jit_frames: u64,
    /// JS functions named from V8's heap, and what reading them cost.
    #[serde(default)]
    pub js_naming: JsNaming,
    /// Malformed lines skipped in perf maps.
    #[serde(default)]
    pub perf_map_garbage_lines: u64,
    /// Bytes of perf maps past the per-map read bound, not read.
    #[serde(default)]
    pub perf_map_unread_bytes: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Allocator calls not tracked because the in-flight map was full.
    pub inflight_map_full: u64,
    /// Syscalls not tracked because the in-flight syscall map was full.
    pub inflight_syscall_map_full: u64,
    /// Allocator calls made inside another probed allocator call (recorded once, as the outer call).
    pub nested_calls: u64,
    /// Allocations that failed (returned NULL); not outstanding.
    pub failed_allocations: u64,
    /// Allocator returns without a seen entry (calls in flight when we attached).
    pub unmatched_returns: u64,
    /// Allocator calls whose return was never seen, recovered at the thread's next call.
    #[serde(default)]
    pub missed_returns: u64,
    /// Events lost because every kernel-side scratch record was in use.
    #[serde(default)]
    pub scratch_busy: u64,
    /// Page faults taken by the profiler's own reads of user memory (not counted as the target's).
    #[serde(default)]
    pub own_read_faults: u64,
    /// libuv threadpool requests forgotten before their work started (too
    /// many queued at once): what they opened keeps the threadpool thread's stack only.
    #[serde(default)]
    pub threadpool_requests_forgotten: u64,
    /// libuv socket and pipe handles whose creator was forgotten before
    /// they got their fd (too many pending at once), and file streams whose
    /// creator could not be named (too many JS functions named outside the
    /// walk): their fds keep their own stack only.
    #[serde(default)]
    pub handle_creators_forgotten: u64,
    /// Pages first touched after their run's first page, whose record (with
    /// the stack) was lost: not counted as resident.
    #[serde(default)]
    pub fault_runs_unmatched: u64,
    /// Pages first touched right after the page before, by the same thread
    /// and call: recorded without a stack (the run's first page's).
    #[serde(default)]
    pub fault_run_pages: u64,
    #[serde(flatten)]
    pub ledger: UnmatchedCounts,
    /// Allocator entry points not probed, and why.
    pub probes_skipped: Vec<String>,
    pub probes_attached: Vec<String>,
    /// Events whose stack does not reach the program's first frame (each
    /// such stack ends in a marker frame naming the reason).
    #[serde(default)]
    pub incomplete_stacks: Vec<IncompleteStacks>,
    /// The kernel stack walker's call-frame tables.
    #[serde(default)]
    pub unwind_tables: UnwindTables,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct IncompleteStacks {
    /// "allocator", "syscall" or "page fault".
    pub captured_at: String,
    /// The marker frame's text.
    pub reason: String,
    pub events: u64,
}

/// JS frames named from V8's heap (`stacks/v8.rs`), over all processes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct JsNaming {
    /// JS functions named (each read once per process, again after the
    /// reader's bounded cache starts over).
    pub functions_named: u64,
    /// JS functions whose V8 objects could not be read (`JS:[function not
    /// readable]`), moved ones whose new place was not known included.
    pub functions_unreadable: u64,
    /// JS functions V8 had moved by the time they were read (followed to
    /// their new place where V8 left it).
    #[serde(default)]
    pub functions_moved: u64,
    /// Time spent reading them from the targets' memory.
    pub read_ms: f64,
    /// Time spent reading V8's object layout from node's symbols (once per process).
    pub layout_ms: f64,
}

impl std::ops::AddAssign for JsNaming {
    fn add_assign(&mut self, o: Self) {
        self.functions_named += o.functions_named;
        self.functions_unreadable += o.functions_unreadable;
        self.functions_moved += o.functions_moved;
        self.read_ms += o.read_ms;
        self.layout_ms += o.layout_ms;
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct UnwindTables {
    pub modules: u64,
    pub rows: u64,
    /// Kernel memory taken by the rows.
    pub row_bytes: u64,
    /// Executable bytes the tables cover.
    pub code_bytes: u64,
    pub build_ms: f64,
    /// Modules walked by frame pointer, with the reason.
    pub modules_without_tables: Vec<String>,
    /// Executable mappings past the per-process limit (walked by frame pointer).
    pub mappings_over_limit: u64,
}

/// The profiler's own CPU time and peak memory, up to the report.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProfilerCost {
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    /// Of that CPU time (user and system), what was spent before recording
    /// started: mostly loading the eBPF programs (the kernel's verifier,
    /// counted as system time), then reading the call-frame tables of the
    /// processes found at the start (those found later are read while
    /// recording) and, with `--lens js-heap`, starting the inspector thread.
    #[serde(default)]
    pub cpu_before_recording_s: f64,
    pub peak_rss_bytes: u64,
}

impl ProfilerCost {
    /// This process's usage so far (all threads).
    pub fn now() -> Self {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return Self::default();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Self {
            cpu_user_s: secs(usage.ru_utime),
            cpu_system_s: secs(usage.ru_stime),
            cpu_before_recording_s: 0.0,
            peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
        }
    }

    /// This cost, with recording having started at `start`.
    pub fn having_started_at(self, start: ProfilerCost) -> Self {
        Self { cpu_before_recording_s: start.cpu_user_s + start.cpu_system_s, ..self }
    }
}

/// One named frame. An address inside inlined code yields several frames,
/// outermost first, the inner ones marked `inlined`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Frame {
    pub function: String,
    pub module: String,
    /// File offset (or absolute address, for anonymous memory), hex.
    pub offset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub inlined: bool,
}

impl Frame {
    /// A frame with only a function name (for tests of the renderers).
    #[cfg(test)]
    pub fn named(function: &str) -> Frame {
        Frame {
            function: function.into(),
            module: "m".into(),
            offset: "0x0".into(),
            file: None,
            line: None,
            inlined: false,
        }
    }
}

/// What a stack's outstanding bytes are doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Still rising at the end of the recording: a leak suspect.
    Growing,
    /// Rose, then stopped: a cache or pool that reached its size.
    Plateaued,
    /// Mostly young: work in flight, not retained.
    Transient,
    /// Neither growing nor young (e.g. allocated once at start-up).
    Stable,
    /// Too few samples to tell.
    Unknown,
}

impl Verdict {
    /// As written in report.json (`growing`, `plateaued`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Growing => "growing",
            Self::Plateaued => "plateaued",
            Self::Transient => "transient",
            Self::Stable => "stable",
            Self::Unknown => "unknown",
        }
    }
}

/// A stack's trend, from its series and the age of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trend {
    /// Robust slope over the whole recording, bytes (or handles) per minute.
    pub growth_per_min: f64,
    /// Robust slope over the second half, per minute.
    pub recent_growth_per_min: f64,
    /// The rise that stayed, per minute of the recording (see
    /// `trend::retained_per_min`): sees a step the slope does not.
    #[serde(default)]
    pub retained_per_min: f64,
    pub verdict: Verdict,
}

/// The memory controller's view of a cgroup.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CgroupMemory {
    /// Bytes; `None` when unlimited.
    pub limit: Option<u64>,
    pub usage: u64,
    /// Which controller and directory the numbers come from.
    pub controller: String,
}

/// Open handles of one (kind, detail), split by origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HandleCount {
    /// Opened while recording (and counted as outstanding).
    pub open: u64,
    /// Open before recording started (or excluded as warm-up): not leaks.
    pub pre_existing: u64,
}

impl From<crate::ledger::HandleCount> for HandleCount {
    fn from(c: crate::ledger::HandleCount) -> Self {
        Self { open: c.open, pre_existing: c.pre_existing }
    }
}

/// Releases and reuses the ledger could not match (see `ledger::LedgerCounters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnmatchedCounts {
    /// `free` of an address never seen allocated (allocated before attach,
    /// or its allocation event was lost).
    pub unknown_frees: u64,
    /// `free` of an address never seen allocated, called from inside the C
    /// library itself (its per-thread cache handed back at thread exit).
    #[serde(default)]
    pub c_library_frees: u64,
    /// `realloc` of a block never seen allocated.
    pub unknown_reallocs: u64,
    /// Allocation at an address that was still live: its free was missed.
    pub overwritten_blocks: u64,
    /// Bytes unmapped that were never seen mapped (mapped before attach, or by the loader).
    pub untracked_unmap_bytes: u64,
    /// close of an fd never seen opened (opened before attach).
    pub unknown_closes: u64,
    /// An fd number handed out again while still held open: its close was missed.
    pub reused_fds: u64,
    /// dup of an fd never seen opened.
    #[serde(default)]
    pub unknown_dups: u64,
    /// Not-present faults on pages already resident (refaults after reclaim): not counted twice.
    #[serde(default)]
    pub repeated_faults: u64,
}

impl From<LedgerCounters> for UnmatchedCounts {
    fn from(c: LedgerCounters) -> Self {
        Self {
            unknown_frees: c.unknown_frees,
            c_library_frees: c.c_library_frees,
            unknown_reallocs: c.unknown_reallocs,
            overwritten_blocks: c.overwritten_blocks,
            untracked_unmap_bytes: c.untracked_unmap_bytes,
            unknown_closes: c.unknown_closes,
            reused_fds: c.reused_fds,
            unknown_dups: c.unknown_dups,
            repeated_faults: c.repeated_faults,
        }
    }
}

/// A function name as one `;`-separated element (`;` becomes `:`, a newline a space).
pub(crate) fn frame_name(name: &str) -> String {
    name.replace(';', ":").replace('\n', " ")
}

impl StackEntry {
    /// The stack's identity across runs and rebuilds: its function names,
    /// root first, `;`-joined, or `[stack unavailable]` (a JIT stack without
    /// its tier-dependent frames, see `stacks::jit`). Gate baselines and
    /// `profiler diff` key on it; no renderer defines it.
    pub fn identity(&self) -> String {
        if self.frames.is_empty() {
            return "[stack unavailable]".to_string();
        }
        let frames: Vec<&Frame> =
            crate::stacks::jit::identity_frames(&self.frames).unwrap_or_else(|| self.frames.iter().collect());
        frames.iter().rev().map(|f| frame_name(&f.function)).collect::<Vec<_>>().join(";")
    }
}

impl Report {
    /// Entries of one kind, largest first.
    pub fn entries(&self, kind: Kind) -> impl Iterator<Item = &StackEntry> + '_ {
        self.stacks.iter().filter(move |e| e.kind == kind)
    }
}
