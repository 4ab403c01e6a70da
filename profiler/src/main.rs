//! `profiler`: find what a process leaks (heap, mappings, sockets) and which
//! code leaked it; or gate a CI build on it.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use profiler::{
    gate::{gate, GateOptions, Verdict},
    kernel::placement::PlacementMode,
    kind::Kind,
    lens::{Lens, Lenses},
    record::{record, RecordOptions, SortBy, TargetSpec, Warmup},
    report::{
        flame::GroupBy,
        outputs::{self, Format},
        Report,
    },
    stacks::unwind::{JsNames, StackWalk},
    trend::Thresholds,
};

/// The profiler's own allocator is linked in, not the C library's: in
/// launch, `--follow` and cgroup mode the allocator probes sit on the C
/// library for every process, and each of the profiler's own allocations
/// would trap on them (measured: 16 s of system time in a 30 s soak, and a
/// quarter of the target's events lost to a full ring buffer).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `2G`, `512M`, `64k`, `1000` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    Ok((n * mult as f64) as u64)
}

/// Seconds, `0.5` or `60`: finite, not negative, at most ten years.
fn parse_secs(s: &str) -> Result<Duration, String> {
    const MAX: f64 = 10.0 * 365.0 * 86400.0;
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=MAX).contains(&v) => Ok(Duration::from_secs_f64(v)),
        Ok(_) => Err(format!("{s:?} is out of range (0 to {MAX} seconds)")),
        Err(_) => Err(format!("{s:?} is not a number of seconds")),
    }
}

fn parse_thresholds(s: &str) -> Result<Thresholds, String> {
    let v: Vec<f64> =
        s.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    match v[..] {
        [slow, active, critical] if slow <= active && active <= critical => {
            Ok(Thresholds { slow, active, critical })
        }
        _ => Err("expected three increasing numbers: SLOW,ACTIVE,CRITICAL (MiB/min)".into()),
    }
}

#[derive(Parser)]
#[command(
    name = "profiler",
    version,
    about = "eBPF leak profiler: outstanding memory and handles by call stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a process (or launch a command) and report what it still holds when recording ends.
    ///
    /// Ends when the target exits, after --duration, or on Ctrl-C / SIGTERM; in
    /// every case the complete report is written: report.txt, report.json and,
    /// per kind with anything outstanding, <kind>.folded and <kind>.svg.
    ///
    /// Exit codes: 0 report written, 1 the profiler failed (bad input, cannot attach), 2 usage error.
    #[command(
        after_help = "Examples:\n  profiler record --pid 1234 --duration 60              # production: resident pages + handles\n  profiler record --pid 1234 --lens alloc,handles      # exact heap blocks per malloc call site\n  profiler record -- ./my-program --its-args\n  profiler record --cgroup /sys/fs/cgroup/system.slice --serve 9464   # an agent Prometheus scrapes"
    )]
    Record(RecordArgs),

    /// Run a command under the profiler and fail if it leaks: the CI leak regression gate.
    ///
    /// With no configuration, fails when heap bytes or handles (sockets, files, pipes, event fds) allocated by the
    /// program's own code are still outstanding when it exits; allocations made
    /// entirely inside the C runtime and dynamic loader are allowed. Budgets,
    /// per-stack limits and allow-lists come from a TOML file (./leakgate.toml
    /// when present); a committed baseline (./leakgate-baseline.json when present)
    /// fails only stacks that grew beyond it and new stacks beyond the budgets.
    ///
    /// Writes gate.json, junit.xml and summary.md (also appended to
    /// $GITHUB_STEP_SUMMARY) plus each run's full profile to --output.
    ///
    /// Exit codes: 0 pass, 1 leak regression, 2 the gate itself failed (bad
    /// configuration, command not runnable, cannot attach).
    #[command(
        after_help = "Examples:\n  profiler gate -- ./tests-binary\n  profiler gate --warmup-marker 'server ready' --runs 3 -- ./server --selftest\n  profiler gate --update-baseline -- ./tests-binary"
    )]
    Gate(GateArgs),

    /// Re-render a saved report.json: text, flamegraph SVG, folded stacks, pprof, JSON or the HTML page.
    Report(ReportArgs),

    /// Compare two reports (two snapshots or two runs): per-stack deltas and differential flamegraphs.
    Diff(DiffArgs),
}

#[derive(Args)]
struct WarmupArgs {
    /// Exclude everything still live this many seconds after start (warm-up).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    warmup: Option<Duration>,

    /// Exclude everything still live when the program prints a line containing TEXT.
    #[arg(long, value_name = "TEXT")]
    warmup_marker: Option<String>,

    /// Exclude everything still live when the program calls FUNCTION (a no-op in its own binary).
    #[arg(long, value_name = "FUNCTION")]
    warmup_function: Option<String>,
}

impl WarmupArgs {
    fn into_warmup(self) -> Warmup {
        Warmup { after: self.warmup, stdout_marker: self.warmup_marker, function: self.warmup_function }
    }
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
struct RecordArgs {
    /// Attach to this running process.
    #[arg(long, short, group = "target")]
    pid: Option<u32>,

    /// Profile every process in this cgroup v2 directory and its descendants,
    /// including processes that enter or start later.
    #[arg(long, value_name = "PATH", group = "target")]
    cgroup: Option<PathBuf>,

    /// Profile a docker / containerd / CRI-O / podman container, by id or unique id prefix.
    #[arg(long, value_name = "ID", group = "target")]
    container: Option<String>,

    /// With --container: if it has not started yet (e.g. after `podman create`), wait for it
    /// instead of refusing; its processes are then seen from their first allocation.
    #[arg(long, requires = "container")]
    wait: bool,

    /// With --pid: also profile processes it starts after attaching (launch mode always follows).
    #[arg(long, requires = "pid")]
    follow: bool,

    /// Stop after this many seconds.
    #[arg(long, short, value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    duration: Option<Duration>,

    /// Output directory [default: ./profile-<target>-<timestamp>].
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,

    /// Stacks shown per kind in the text summary.
    #[arg(long, default_value_t = 10)]
    top: usize,

    /// Ring buffer size in MiB (a power of two, at most 1024); default 16 with the alloc lens, else 4.
    /// Dropped events are reported.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    ringbuf_mb: Option<u32>,

    /// Do not print the summary at the end (it is still written to report.txt).
    #[arg(long, short)]
    quiet: bool,

    /// Sample outstanding values per stack every SECS: growth rates and verdicts in the report.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    interval: Duration,

    /// Bytes younger than this are "in flight": a stack made mostly of them is transient.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    min_age: Duration,

    /// How stacks are ranked in each kind.
    #[arg(long, value_enum, default_value_t = SortBy::Growth)]
    sort: SortBy,

    /// Memory limit for the time-to-limit estimate, e.g. 2G [default: the target's cgroup limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    limit: Option<u64>,

    /// Growth levels in MiB/min: slow leak, active leak, critical.
    #[arg(long, value_name = "SLOW,ACTIVE,CRITICAL", default_value = "10,50,500", value_parser = parse_thresholds)]
    thresholds: Thresholds,

    /// Write a full numbered snapshot (snapshot-NNN-SIZE/) when memory crosses each size, e.g. 2G,4G.
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', value_parser = parse_size)]
    snapshot_at: Vec<u64>,

    /// With --lens js-heap: take V8 heap snapshots (at the start, at each --snapshot-at size, else
    /// at the end), written as .heapsnapshot files for DevTools, and report what grew between
    /// them with the paths that retain it. Each snapshot pauses node's JavaScript while V8 writes
    /// it (about 0.25 s per 10 MB of snapshot here) and grows node's memory meanwhile.
    #[arg(long)]
    heap_snapshot: bool,

    /// Serve the live results over HTTP while recording, read-only: /metrics (OpenMetrics, for
    /// Prometheus), /debug/pprof/<kind> (pprof, for go tool pprof, Parca, Grafana Alloy) and
    /// /report.json, refreshed every --interval. A bare PORT listens on 127.0.0.1 only; give
    /// ADDR:PORT to listen elsewhere (the endpoints show stack names and command lines).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = profiler::serve::parse_address)]
    serve: Option<std::net::SocketAddr>,

    /// Write a full numbered snapshot (snapshot-NNN-periodic/) at every --interval: for targets
    /// that free everything at exit (Node frees its Buffers), the leak is in the snapshots.
    #[arg(long)]
    snapshots: bool,

    /// With --snapshots: keep only the most recent N periodic snapshots (a long-running agent's
    /// disk stays bounded); --snapshot-at snapshots are always kept.
    #[arg(long, value_name = "N", default_value_t = 100)]
    keep_snapshots: usize,

    /// Root the flamegraphs at each process (`command [pid]`) instead of merging processes.
    #[arg(long, value_enum, default_value_t = GroupBy::None)]
    group_by: GroupBy,

    /// What to look at, comma-separated. The default, resident + handles, is the recommended
    /// production setting: no allocator uprobes, a few percent of overhead. Add `alloc` for
    /// exact bytes per malloc call site (about 2-3 us per malloc+free pair: development, CI).
    /// Mappings (mmap/munmap/mremap/brk) are recorded by every lens.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Lens::Resident, Lens::Handles])]
    lens: Vec<Lens>,

    /// Alloc lens: record heap blocks by byte sampling, about one per N bytes allocated (a block
    /// of s bytes with probability min(1, s/N)), decided in the kernel; heap bytes are scaled
    /// without bias, frees of sampled blocks are still matched exactly. The uprobe trap of every
    /// call is still paid: sampling saves the stack capture and event, not the trap.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    sample_bytes: Option<u64>,

    /// Alloc lens: where entry uprobes go. `emulated` (default) skips to the first instruction
    /// the kernel emulates (one trap instead of two); `entry` probes offset 0, for comparison.
    #[arg(long, value_enum, default_value_t = PlacementMode::Emulated, hide_short_help = true)]
    probe_placement: PlacementMode,

    /// How user stacks are walked. `tables` (default) follows each module's call-frame
    /// information in the kernel, complete on code built without frame pointers;
    /// `frame-pointers` uses only the kernel's frame-pointer walk, for comparison.
    #[arg(long, value_enum, default_value_t = StackWalk::Tables, hide_short_help = true)]
    stack_walk: StackWalk,

    /// How JavaScript frames of node are named. `v8-heap` (default) reads each JS frame's
    /// function from V8's heap (node started with no flag); `perf-map` names code addresses
    /// from the JIT's perf map (node --perf-basic-prof), for comparison.
    #[arg(long, value_enum, default_value_t = JsNames::V8Heap, hide_short_help = true)]
    js_names: JsNames,

    #[command(flatten)]
    warmup: WarmupArgs,

    /// Command to launch and profile from its first instruction (with its children).
    #[arg(last = true, value_name = "CMD", group = "target")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct ReportArgs {
    /// A report.json written by `profiler record`.
    file: PathBuf,

    #[arg(long, short, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// The kind to render for svg, folded and pprof (heap, resident, mmap, sockets, files, ...).
    #[arg(long, short, default_value_t = Kind::Heap)]
    kind: Kind,

    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Stacks per kind in the text rendering.
    #[arg(long, default_value_t = 10)]
    top: usize,

    #[arg(long, value_enum, default_value_t = GroupBy::None)]
    group_by: GroupBy,

    /// Re-rank the stacks within each kind (the report keeps the order it was recorded with).
    #[arg(long, value_enum)]
    sort: Option<SortBy>,

    /// Keep only stacks with a frame (function name or source file) matching this regex.
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    focus: Option<regex::Regex>,

    /// Drop stacks with a frame (function name or source file) matching this regex.
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    ignore: Option<regex::Regex>,

    /// Drop memory stacks holding less than this (e.g. 64K); handle stacks are kept.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "0")]
    min_bytes: u64,

    /// Keep only the stacks of this process.
    #[arg(long)]
    pid: Option<u32>,
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string())
}

#[derive(Args)]
struct DiffArgs {
    /// The earlier report.json.
    before: PathBuf,
    /// The later report.json.
    after: PathBuf,

    /// Also write diff.json, per changed kind diff-<kind>.svg (differential flamegraph), and index.html here.
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,

    /// Rows per kind in the table.
    #[arg(long, default_value_t = 20)]
    top: usize,
}

#[derive(Args)]
struct GateArgs {
    /// Gate configuration (TOML) [default: ./leakgate.toml when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Baseline of per-stack outstanding values [default: ./leakgate-baseline.json].
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,

    /// Record this run as the new baseline instead of gating.
    #[arg(long)]
    update_baseline: bool,

    /// Run the command this many times; a stack counts with its smallest value, the spread is its noise.
    #[arg(long, default_value_t = 1, value_name = "N")]
    runs: usize,

    /// Judge each run this many seconds after start (for programs that do not exit), instead of at exit.
    #[arg(long, short, value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    duration: Option<Duration>,

    /// An exit code of the command that does not fail the gate (repeatable; 0 always passes).
    /// Any other exit code, or a crash, fails it.
    #[arg(long, value_name = "CODE")]
    accept_exit_code: Vec<i32>,

    /// Where gate.json, junit.xml, summary.md and the profiles go.
    #[arg(long, short, default_value = "leak-gate", value_name = "DIR")]
    output: PathBuf,

    /// Stacks per kind in each run's text report.
    #[arg(long, default_value_t = 10)]
    top: usize,

    #[command(flatten)]
    warmup: WarmupArgs,

    /// The command to gate.
    #[arg(last = true, value_name = "CMD", required = true)]
    command: Vec<OsString>,
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Record(args) => run_record(args),
        Command::Gate(args) => run_gate(args),
        Command::Report(args) => exit_on_error(run_report(args)),
        Command::Diff(args) => exit_on_error(run_diff(args)),
    }
}

fn exit_on_error(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_report(path: &std::path::Path) -> anyhow::Result<Report> {
    let bytes = profiler::files::read_input(path)?;
    Report::from_json(&bytes)
        .with_context(|| format!("{} is not a report.json this profiler reads", path.display()))
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let mut report = load_report(&args.file)?;
    profiler::report::select::Selection {
        sort: args.sort,
        focus: args.focus.clone(),
        ignore: args.ignore.clone(),
        min_bytes: args.min_bytes,
        pid: args.pid,
    }
    .apply(&mut report);
    let options = outputs::Options { top: args.top, group_by: args.group_by, ..Default::default() };
    let bytes = outputs::render(&report, args.format, args.kind, &options)
        .with_context(|| format!("rendering {}", args.file.display()))?;
    match args.output {
        Some(path) => profiler::files::output::write_file(&path, &bytes)?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
    }
    Ok(())
}

fn run_diff(args: DiffArgs) -> anyhow::Result<()> {
    use profiler::report::diff;
    let (before, after) = (load_report(&args.before)?, load_report(&args.after)?);
    let deltas = diff::diff(&before, &after);
    print!("{}", diff::text(&deltas, args.top));
    if let Some(dir) = args.output {
        let out = profiler::files::output::OutputDir::create(&dir, false)?;
        out.write("diff.json", &serde_json::to_vec_pretty(&deltas)?)?;
        let mut kinds: Vec<Kind> = deltas.iter().map(|d| d.kind).collect();
        kinds.sort();
        kinds.dedup();
        let names = (args.before.to_string_lossy(), args.after.to_string_lossy());
        let mut flamegraphs = Vec::new();
        for kind in kinds {
            let svg = diff::svg(&before, &after, kind, (&names.0, &names.1))?;
            out.write(&format!("diff-{kind}.svg"), &svg)?;
            flamegraphs.push((kind, svg));
        }
        let page = profiler::report::html::diff_page(
            (&names.0, &names.1),
            &diff::text(&deltas, args.top),
            &flamegraphs,
        );
        out.write("index.html", page.as_bytes())?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(())
}

impl RecordArgs {
    /// The recording these arguments ask for, or what is wrong with them.
    fn into_options(self) -> Result<RecordOptions, &'static str> {
        let args = self;
        if args.duration == Some(Duration::ZERO) {
            return Err("--duration must be a positive number of seconds");
        }
        if args.interval < Duration::from_millis(50) {
            return Err("--interval must be at least 0.05 s");
        }
        if args.keep_snapshots == 0 {
            return Err("--keep-snapshots must be at least 1");
        }
        if args.ringbuf_mb.is_some_and(|mb| !mb.is_power_of_two()) {
            return Err("--ringbuf-mb must be a power of two");
        }
        let lenses = Lenses::from_list(&args.lens);
        let sample_bytes = args.sample_bytes.unwrap_or(0);
        if args.sample_bytes.is_some() && !(1..=1 << 31).contains(&sample_bytes) {
            return Err("--sample-bytes must be between 1 and 2G");
        }
        if args.heap_snapshot && !lenses.js_heap {
            return Err("--heap-snapshot is taken through node's inspector: add --lens js-heap");
        }
        if args.sample_bytes.is_some() && !lenses.alloc {
            return Err("--sample-bytes samples the alloc lens: add --lens alloc");
        }
        let warmup = args.warmup.into_warmup();
        let target = match (args.pid, args.cgroup, args.container) {
            (Some(pid), _, _) => TargetSpec::Pid(pid),
            (_, Some(dir), _) => TargetSpec::Cgroup(dir),
            (_, _, Some(id)) => TargetSpec::Container { id, wait_for_start: args.wait },
            _ => TargetSpec::Command(args.command),
        };
        Ok(RecordOptions {
            target,
            duration: args.duration,
            output: args.output,
            top: args.top,
            ringbuf_bytes: args.ringbuf_mb.map(|mb| mb * 1024 * 1024),
            print_summary: !args.quiet,
            warmup,
            follow: args.follow,
            group_by: args.group_by,
            interval: args.interval,
            min_age: args.min_age,
            sort: args.sort,
            limit: args.limit,
            thresholds: args.thresholds,
            snapshots: args.snapshots,
            keep_snapshots: args.keep_snapshots,
            serve: args.serve,
            lenses,
            sample_bytes,
            placement: args.probe_placement,
            stack_walk: args.stack_walk,
            js_names: args.js_names,
            heap_snapshot: args.heap_snapshot,
            snapshot_at: {
                let mut sizes = args.snapshot_at;
                sizes.sort_unstable();
                sizes
            },
        })
    }
}

fn run_record(args: RecordArgs) -> ExitCode {
    let opts = match args.into_options() {
        Ok(opts) => opts,
        Err(message) => return usage_error(message),
    };
    match record(opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_gate(args: GateArgs) -> ExitCode {
    let warmup = args.warmup.into_warmup();
    if args.duration == Some(Duration::ZERO) {
        return usage_error("--duration must be a positive number of seconds");
    }
    let opts = GateOptions {
        duration: args.duration,
        command: args.command,
        config: args.config,
        baseline: args.baseline,
        update_baseline: args.update_baseline,
        warmup,
        runs: args.runs,
        output: args.output,
        top: args.top,
        accept_exit_codes: args.accept_exit_code,
    };
    match gate(&opts) {
        Ok((Verdict::Pass, _)) => ExitCode::SUCCESS,
        Ok((Verdict::LeakRegression, _)) => ExitCode::from(1),
        Err(e) => {
            eprintln!("leak gate: error (the gate itself failed): {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("profiler").chain(args.iter().copied())).unwrap().command
    }

    /// `profiler record` with no options records as `RecordOptions::new`
    /// does (except that the command line prints the summary).
    #[test]
    fn record_defaults_agree_with_record_options() {
        let Command::Record(args) = parse(&["record", "--pid", "1"]) else { unreachable!() };
        let from_cli = args.into_options().unwrap();
        let library = RecordOptions { print_summary: true, ..RecordOptions::new(TargetSpec::Pid(1)) };
        assert_eq!(format!("{from_cli:?}"), format!("{library:?}"));
    }

    #[test]
    fn report_defaults_agree_with_the_output_options() {
        let Command::Report(args) = parse(&["report", "r.json"]) else { unreachable!() };
        let defaults = outputs::Options::default();
        assert_eq!((args.top, args.group_by, args.kind), (defaults.top, defaults.group_by, Kind::Heap));
    }

    #[test]
    fn bad_record_options_are_refused_before_anything_runs() {
        let Command::Record(args) = parse(&["record", "--pid", "1", "--ringbuf-mb", "3"]) else {
            unreachable!()
        };
        assert_eq!(args.into_options().unwrap_err(), "--ringbuf-mb must be a power of two");
    }
}
