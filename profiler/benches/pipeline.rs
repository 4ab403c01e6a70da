//! Userspace pipeline benchmark (no kernel, no root): a synthetic stream of
//! allocator events over 50,000 distinct stacks (frames in this binary's own
//! code, so symbolization is real) through the collector and ledger, then
//! the report model. Prints one JSON object; `cargo xtask bench` tabulates it.
//!
//! Measures ingestion throughput on one core, profiler heap memory per
//! outstanding allocation (counted by the global allocator), and the time
//! to name and assemble a report of 1M outstanding allocations.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use profiler::kernel::events::{encode, header};
use profiler::{collector::Collector, kind::Kind, process::fds::FdDescriber, stacks::symbols::Symbols};
use profiler_common::{AllocApi, EventHeader, EventKind};

const STACKS: u64 = 50_000;
const OUTSTANDING: u64 = 1_000_000;
const CHURN_PAIRS: u64 = 1_000_000;
const DEPTH: usize = 8;

/// The executable mapping of this binary: (start, end).
fn own_code() -> (u64, u64) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let exe = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
    maps.lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter(|l| l.ends_with(&*exe.to_string_lossy()))
        .map(|l| {
            let (a, b) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
            (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap())
        })
        .next()
        .expect("an executable mapping of this binary")
}

/// The system allocator, counting live heap bytes: the profiler's memory, exactly.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Stream {
    pid: u32,
    code: (u64, u64),
    ts: u64,
}

impl Stream {
    /// Frames of stack `i`: distinct leaves, shared callers (as in real programs).
    fn frames(&self, i: u64) -> [u64; DEPTH] {
        let span = self.code.1 - self.code.0 - 16;
        let mut f = [0; DEPTH];
        for (d, slot) in f.iter_mut().enumerate() {
            let key = if d == 0 { i } else { i / (10 * d as u64) };
            *slot = self.code.0 + (key.wrapping_mul(2_654_435_761) + d as u64 * 977) % span;
        }
        f
    }

    fn event(&mut self, kind: EventKind, addr: u64, stack: Option<u64>) -> Vec<u8> {
        self.ts += 100;
        let h =
            EventHeader { api: AllocApi::Malloc as u16, addr, size: 64, ..header(kind, self.pid, self.ts) };
        let frames = stack.map(|i| self.frames(i));
        encode(h, frames.as_ref().map_or(&[][..], |f| &f[..]), &[])
    }
}

fn main() {
    let mut stream = Stream { pid: std::process::id(), code: own_code(), ts: 0 };
    let mut collector = Collector::default();

    // Ingestion: malloc+free pairs (the steady state of a busy service).
    let churn: Vec<Vec<u8>> = (0..CHURN_PAIRS)
        .flat_map(|i| {
            let addr = 0x1000_0000 + (i % 4096) * 64;
            [
                stream.event(EventKind::Alloc, addr, Some(i % STACKS)),
                stream.event(EventKind::Free, addr, None),
            ]
        })
        .collect();
    let started = Instant::now();
    for ev in &churn {
        collector.ingest(ev);
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let events_per_s = churn.len() as f64 / ingest_s;
    drop(churn);

    // Memory: 1M outstanding allocations over the same 50k stacks.
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..OUTSTANDING {
        let ev = stream.event(EventKind::Alloc, 0x7000_0000_0000 + i * 64, Some(i % STACKS));
        collector.ingest(&ev);
    }
    let bytes_per_outstanding =
        LIVE.load(Ordering::Relaxed).saturating_sub(before) as f64 / OUTSTANDING as f64;

    // Report: name every frame and assemble the per-stack entries, then serialize.
    let started = Instant::now();
    let entries = collector.entries(&Symbols::default(), stream.ts, 0, &mut FdDescriber::off()).stacks;
    let json = serde_json::to_vec(&entries).unwrap();
    let report_s = started.elapsed().as_secs_f64();
    let heap: u64 = entries.iter().filter(|e| e.kind == Kind::Heap).map(|e| e.count).sum();
    assert_eq!(heap, OUTSTANDING, "every outstanding allocation is in the report");
    // Stacks whose symbolized frames are the same (two leaves on one source line) are one entry.
    assert_eq!(entries.iter().map(|e| e.sites).sum::<u64>(), STACKS, "every stack is in one entry");

    println!(
        "{}",
        serde_json::json!({
            "events": 2 * CHURN_PAIRS,
            "ingest_events_per_s": events_per_s,
            "outstanding": OUTSTANDING,
            "stacks": entries.len(),
            "bytes_per_outstanding": bytes_per_outstanding,
            "report_s": report_s,
            "report_json_bytes": json.len(),
        })
    );
}
