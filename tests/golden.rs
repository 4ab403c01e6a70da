//! Golden-file tests, without root and without a kernel: a synthetic session
//! (ring-buffer records exactly as the eBPF side writes them) goes through
//! the decoder, the collector and ledger, the one report builder, the
//! renderers and the gate; each output is compared with its file under
//! `tests/data/golden/`. The report's JSON Schema, generated from the model's
//! types, is compared with `docs/report.schema.json`.
//!
//! After an intended change of output, bless the files and review the diff:
//!
//! ```sh
//! BLESS=1 cargo test --test golden
//! git diff tests/data/golden docs/report.schema.json
//! ```

use std::{path::PathBuf, time::Duration};

use profiler::{
    collector::Collector,
    gate::{self, config::Config},
    kernel::{
        counters::KernelCounters,
        events::{encode, header},
    },
    kind::Kind,
    report::{
        build::{build, Inputs, Settings},
        model::{ProfilerCost, TargetInfo, UnwindTables},
        outputs::{self, Format},
        pprof, Report,
    },
    stacks::{procmaps::ProcessMaps, symbols::Symbols},
    trend::Thresholds,
};
use profiler_common::{syscalls, AllocApi, EventHeader, EventKind, HandleKind, StackStatus};

/// A pid no process can have (above the kernel's PID_MAX_LIMIT): nothing
/// is read from /proc for it, so frames get their `module+offset` names.
const PID: u32 = 5_000_000;
const SECOND: u64 = 1_000_000_000;

const MAPS: &str = "\
555555554000-555555556000 r--p 00000000 08:01 1234 /opt/golden/bin/demo
555555556000-55555555a000 r-xp 00002000 08:01 1234 /opt/golden/bin/demo
555555560000-555555581000 rw-p 00000000 00:00 0 [heap]
7ffff7d80000-7ffff7f00000 r-xp 00028000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
";

/// Return addresses in the demo's code, by the function they stand for.
const START: u64 = 0x5555_5555_6050;
const MAIN: u64 = 0x5555_5555_6200;
const LEAK_A: u64 = 0x5555_5555_6100;
const CACHE_PUT: u64 = 0x5555_5555_6400;
const MAP_ARENA: u64 = 0x5555_5555_6600;
const CONNECT: u64 = 0x5555_5555_6800;
const OPEN_LOG: u64 = 0x5555_5555_6a00;
const SPAWN: u64 = 0x5555_5555_6c00;
const TOUCH: u64 = 0x5555_5555_6e00;

/// A fresh directory under the build's temporary directory.
fn tempdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden")
}

/// Compares `actual` with the golden file `name`, or writes it under BLESS=1.
fn check(path: PathBuf, actual: &[u8]) {
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BLESS=1 cargo test --test golden writes it)", path.display()));
    if expected != actual {
        let got = path.with_extension("actual");
        std::fs::write(&got, actual).unwrap();
        panic!(
            "{} differs from this build's output (written to {}); if the change is intended: BLESS=1 cargo test --test golden",
            path.display(),
            got.display()
        );
    }
}

struct Session {
    collector: Collector,
    ts: u64,
}

/// What node's inspector would have read over four seconds: a JS function
/// whose sampled objects grow, a V8 category that stays, V8's heap nearing its limit.
fn js_heap_readout() -> profiler::inspector::Readout {
    use profiler::inspector::{heap::Reading, sampling::stacks_of, Observed};
    use serde_json::json;
    let mut observed = Observed {
        inspector: "127.0.0.1:9229, opened with SIGUSR1 for this recording and closed after it".into(),
        ..Default::default()
    };
    for second in 0..4u64 {
        let frame = |name: &str, line: u64, id: u64, size: u64, children: Vec<serde_json::Value>| {
            json!({ "callFrame": { "functionName": name, "url": if line > 0 { "/srv/app.js" } else { "" },
                                   "lineNumber": line, "columnNumber": 2 },
                    "selfSize": size, "id": id, "children": children })
        };
        let mark = frame("markProcessed", 14, 3, (second + 1) << 20, vec![]);
        let root = frame(
            "(root)",
            0,
            1,
            0,
            vec![frame("syncCycle", 26, 2, 0, vec![mark]), frame("(V8 API)", 0, 4, 32768, vec![])],
        );
        let samples: Vec<serde_json::Value> =
            (0..(second + 1) * 32).map(|i| json!({ "size": 64, "nodeId": 3, "ordinal": i })).collect();
        let stacks = stacks_of(json!({ "profile": { "head": root, "samples": samples } })).unwrap();
        observed.sampled.push(second as f64, stacks);
        let used = (40 + 6 * second) << 20;
        let reading = json!({
            "heap": { "heap_size_limit": 64u64 << 20, "used_heap_size": used, "total_heap_size": used + (4 << 20) },
            "spaces": [ { "space_name": "old_space", "space_size": used, "space_used_size": used - (1 << 20), "space_available_size": 0 },
                        { "space_name": "new_space", "space_size": 1 << 20, "space_used_size": 1 << 20, "space_available_size": 0 } ],
            "external": 3 << 20, "arrayBuffers": 1 << 20
        });
        observed.heap.push(Reading::parse(reading, second as f64).unwrap());
    }
    observed.longest_call_ms = 4.5;
    observed.readout(PID, "/opt/golden/bin/demo --serve", Duration::from_secs(5))
}

impl Session {
    fn new() -> Self {
        let mut collector = Collector::default();
        collector.set_root(PID);
        collector.add_process(PID, ProcessMaps::parse(MAPS), Some(0x5555_5556_0000));
        Self { collector, ts: SECOND }
    }

    fn feed(&mut self, kind: EventKind, fill: impl FnOnce(&mut EventHeader), frames: &[u64]) {
        self.ts += 1_000_000;
        let mut h = header(kind, PID, self.ts);
        fill(&mut h);
        self.collector.ingest(&encode(h, frames, &[]));
    }

    fn malloc(&mut self, addr: u64, size: u64, frames: &[u64]) {
        self.feed(
            EventKind::Alloc,
            |h| {
                h.api = AllocApi::Malloc as u16;
                h.addr = addr;
                h.size = size;
            },
            frames,
        );
    }

    fn free(&mut self, addr: u64) {
        self.feed(
            EventKind::Free,
            |h| {
                h.api = AllocApi::Free as u16;
                h.addr = addr;
            },
            &[],
        );
    }

    fn open(&mut self, nr: u64, kind: HandleKind, fd: u64, pair: Option<u64>, detail: u64, frames: &[u64]) {
        self.feed(
            EventKind::FdOpen,
            |h| {
                h.api = nr as u16;
                h.arg = kind as u64;
                h.addr = fd;
                h.old_addr = pair.unwrap_or(u64::MAX);
                h.size = detail;
            },
            frames,
        );
    }

    fn close(&mut self, fd: u64) {
        self.feed(
            EventKind::FdClose,
            |h| {
                h.api = syscalls::CLOSE as u16;
                h.addr = fd;
            },
            &[],
        );
    }

    /// Ten seconds of a leaking program, sampled every second: a growing
    /// heap leak, a cache that plateaus, an arena half unmapped, brk growth,
    /// a socket, a file and a pipe left open, first-touched pages, a stack
    /// that could not be captured and one cut short, and an undecodable record.
    fn run() -> Self {
        let mut s = Self::new();
        let leak = [LEAK_A, MAIN, START];
        let cache = [CACHE_PUT, MAIN, START];
        for second in 0..10u64 {
            s.collector.sample(second as f64, Some((40 << 20) + second * 300_000));
            for i in 0..3 {
                s.malloc(0x5555_6000_0000 + second * 0x1000 + i * 0x100, 1000, &leak);
            }
            // One of each second's three blocks is freed again.
            s.free(0x5555_6000_0000 + second * 0x1000);
            if second < 4 {
                s.malloc(0x5555_7000_0000 + second * 0x1000, 4096, &cache);
            }
        }
        s.feed(
            EventKind::Mmap,
            |h| {
                h.api = syscalls::MMAP as u16;
                h.addr = 0x7fff_e000_0000;
                h.size = 1 << 20;
                h.arg = 0x22; // MAP_PRIVATE | MAP_ANONYMOUS
                h.old_size = u64::MAX; // no fd
            },
            &[MAP_ARENA, MAIN, START],
        );
        s.feed(
            EventKind::Munmap,
            |h| {
                h.api = syscalls::MUNMAP as u16;
                h.addr = 0x7fff_e008_0000;
                h.size = 512 << 10;
            },
            &[],
        );
        s.feed(
            EventKind::Brk,
            |h| {
                h.api = syscalls::BRK as u16;
                h.addr = 0x5555_5558_1000;
            },
            &[0x7fff_f7d9_0000, LEAK_A, MAIN, START],
        );
        const AF_INET_STREAM: u64 = (2 << 32) | 1;
        s.open(syscalls::SOCKET, HandleKind::Socket, 3, None, AF_INET_STREAM, &[CONNECT, MAIN, START]);
        s.open(syscalls::SOCKET, HandleKind::Socket, 4, None, AF_INET_STREAM, &[CONNECT, MAIN, START]);
        s.close(4);
        s.open(syscalls::OPENAT, HandleKind::File, 5, None, 0, &[OPEN_LOG, MAIN, START]);
        s.open(syscalls::PIPE2, HandleKind::Pipe, 6, Some(7), 0, &[SPAWN, MAIN, START]);
        for page in 0..8u64 {
            s.feed(EventKind::PageFault, |h| h.addr = 0x7fff_e000_0000 + page * 4096, &[TOUCH, MAIN, START]);
        }
        // A stack that could not be captured, and one cut short by the walker's depth.
        s.feed(
            EventKind::Alloc,
            |h| {
                h.api = AllocApi::Calloc as u16;
                h.addr = 0x5555_6100_0000;
                h.size = 16;
                h.arg = 4;
                h.stack_status = StackStatus::CaptureFailed as u8;
            },
            &[],
        );
        s.feed(
            EventKind::Alloc,
            |h| {
                h.api = AllocApi::Malloc as u16;
                h.addr = 0x5555_6100_1000;
                h.size = 32;
                h.stack_status = StackStatus::Truncated as u8;
            },
            &[CACHE_PUT, MAIN],
        );
        s.free(0xdead_0000); // never seen allocated
        s.feed(EventKind::V8OutOfMemory, |h| h.size = 1, &[]);
        s.collector.ingest(b"garbage");
        s.collector.sample(10.0, Some(43 << 20));
        s
    }

    fn report(mut self) -> Report {
        let mut raw = [0u64; profiler_common::counters::COUNT];
        raw[profiler_common::counters::API_CALLS + AllocApi::Malloc as usize] = 33;
        raw[profiler_common::counters::RINGBUF_DROPS] = 2;
        let inputs = Inputs {
            settings: Settings {
                lenses: "alloc,handles,resident".into(),
                sample_bytes: 0,
                interval: Duration::from_secs(1),
                min_age: Duration::from_secs(5),
                sort: Default::default(),
                thresholds: Thresholds::default(),
                limit: Some(64 << 20),
            },
            target: TargetInfo {
                pid: PID,
                command: "/opt/golden/bin/demo --serve".into(),
                mode: "attach".into(),
                libc: "glibc".into(),
            },
            started_at: 1_700_000_000,
            elapsed: Duration::from_secs(10),
            now_ns: 12 * SECOND,
            end_reason: "duration elapsed".into(),
            warmup: None,
            kernel: KernelCounters::from_slots(&raw),
            probes_attached: vec!["uprobe:malloc (libc.so.6)".into()],
            probes_skipped: vec![],
            unwind_tables: UnwindTables::default(),
            cgroup: None,
            memory_limit: None,
            profiler_cost: ProfilerCost::default(),
            hints: vec![],
            describe_fds: true,
            inspector: Some(js_heap_readout()),
        };
        build(inputs, &mut self.collector, &Symbols::default())
    }
}

#[test]
fn a_synthetic_session_renders_as_its_golden_files() {
    let report = Session::run().report();
    let dir = golden_dir();
    let options = outputs::Options::default();
    for format in [Format::Json, Format::Text] {
        let out = outputs::render(&report, format, Kind::Heap, &options).unwrap();
        check(dir.join(format.file_name(Kind::Heap)), &out);
    }
    for kind in outputs::kinds_present(&report) {
        let out = outputs::render(&report, Format::Folded, kind, &options).unwrap();
        check(dir.join(Format::Folded.file_name(kind)), &out);
    }
    // The flamegraph (inferno; colors hashed from names, so the same every run).
    let svg = outputs::render(&report, Format::Svg, Kind::Heap, &options).unwrap();
    check(dir.join(Format::Svg.file_name(Kind::Heap)), &svg);
    // The directory `record` writes: the files, and the page that links them.
    let written = tempdir("golden-written");
    let out = profiler::files::output::OutputDir::create(&written, false).unwrap();
    let names = outputs::write_all(&report, &out, &options).unwrap();
    check(dir.join("written.txt"), (names.join("\n") + "\n").as_bytes());
    check(dir.join("index.html"), &std::fs::read(written.join("index.html")).unwrap());
    assert_eq!(
        std::fs::read(written.join("report.json")).unwrap(),
        std::fs::read(dir.join("report.json")).unwrap()
    );
    // pprof as its decoded protobuf (the gzip bytes are the zlib build's).
    check(dir.join("heap.pprof.txt"), format!("{:#?}\n", pprof::profile(&report, Kind::Heap)).as_bytes());
    check(
        dir.join("sockets.pprof.txt"),
        format!("{:#?}\n", pprof::profile(&report, Kind::Sockets)).as_bytes(),
    );
    let decision = gate::judge(std::slice::from_ref(&report), &Config::default(), None);
    check(dir.join("gate.md"), gate::output::markdown(&decision).as_bytes());

    // The numbers the files hold, asserted where a bless could hide a regression.
    assert_eq!(report.totals[&Kind::Heap].bytes, 10 * 2000 + 4 * 4096 + 64 + 32);
    assert_eq!(report.totals[&Kind::Sockets].count, 1);
    assert_eq!(report.totals[&Kind::Files].count, 1);
    assert_eq!(report.totals[&Kind::Pipes].count, 2);
    assert_eq!(report.totals[&Kind::Mmap].bytes, 512 << 10);
    assert_eq!(report.totals[&Kind::Resident].count, 8);
    assert_eq!(report.accuracy.undecodable_events, 1);
    assert_eq!(report.accuracy.ledger.unknown_frees, 1);
    assert_eq!(report.accuracy.ringbuf_drops, 2);
    let leak = report.entries(Kind::Heap).find(|e| e.frames[0].function == "demo+0x2100").unwrap();
    assert_eq!((leak.bytes, leak.count), (20_000, 20));
    assert_eq!(leak.trend.unwrap().verdict.name(), "growing");
    // Every handle kind is budgeted at 0 with no configuration: the file and the pipe fail the gate.
    let failed: Vec<&str> = decision.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    for kind in ["heap", "sockets", "files", "pipes"] {
        assert!(failed.iter().any(|n| n.starts_with(kind)), "{kind} budget: {failed:?}");
    }
}

#[test]
fn the_json_schema_is_generated_from_the_model() {
    let schema = schemars::schema_for!(Report);
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    check(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json"), text.as_bytes());
    // The schema describes what report.json holds.
    let properties = schema.get("properties").and_then(|p| p.as_object()).unwrap();
    let report = serde_json::to_value(Session::run().report()).unwrap();
    for key in report.as_object().unwrap().keys() {
        assert!(properties.contains_key(key), "report.json key {key} is not in the schema");
    }
}

#[test]
fn a_saved_report_reads_back_and_renders_the_same() {
    let report = Session::run().report();
    let json = serde_json::to_vec_pretty(&report).unwrap();
    let read = Report::from_json(&json).unwrap();
    let options = outputs::Options::default();
    for format in Format::ALL {
        for kind in outputs::kinds_present(&report) {
            let (a, b) = (
                outputs::render(&report, format, kind, &options).unwrap(),
                outputs::render(&read, format, kind, &options).unwrap(),
            );
            assert!(a == b, "{format:?} {kind} differs after a round trip through report.json");
        }
    }
}
