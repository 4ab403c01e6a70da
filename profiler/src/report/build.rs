//! The one door from a session to a [`Report`]: [`build`] turns the
//! collector's state and plain inputs (settings, times, typed kernel
//! counters, probe lists, cgroup numbers) into the report model. It names
//! JIT frames itself; nothing else assembles a report, so `record`, its
//! snapshots, the live view, `--serve` and the golden-file tests get the
//! same one.

use std::time::Duration;

use super::{
    model::{
        Accuracy, CgroupInfo, IncompleteStacks, ModuleInfo, ProcessSummary, ProfilerCost, SeriesReport,
        StackEntry, Status, TargetInfo, Total, UnmatchedCounts, UnwindTables, V8OutOfMemory, SCHEMA_VERSION,
    },
    select::{sort_entries, SortBy},
    split, Report,
};
use crate::{
    collector::Collector,
    kernel::counters::KernelCounters,
    kind::Kind,
    process::fds::FdDescriber,
    stacks::symbols::{module_info, Symbols},
    trend::{self, Thresholds},
};

/// The recording's settings a report reflects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The lenses recorded, as the user named them (`alloc,handles`).
    pub lenses: String,
    pub sample_bytes: u64,
    /// Between samples of the series.
    pub interval: Duration,
    /// Outstanding items younger than this are not "old" (`old_share`).
    pub min_age: Duration,
    pub sort: SortBy,
    pub thresholds: Thresholds,
    /// `--limit`: overrides the cgroup's.
    pub limit: Option<u64>,
}

/// Everything a report is built from besides the collector.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub settings: Settings,
    pub target: TargetInfo,
    /// Unix time (s) recording started.
    pub started_at: u64,
    pub elapsed: Duration,
    /// The monotonic clock (ns) the outstanding items' ages are taken at.
    pub now_ns: u64,
    pub end_reason: String,
    pub warmup: Option<String>,
    pub kernel: KernelCounters,
    pub probes_attached: Vec<String>,
    pub probes_skipped: Vec<String>,
    pub unwind_tables: UnwindTables,
    /// The profiled cgroup (cgroup mode).
    pub cgroup: Option<CgroupInfo>,
    /// The memory limit on the target (its cgroup's) and which controller
    /// sets it, when there is one; `settings.limit` overrides it.
    pub memory_limit: Option<(u64, String)>,
    pub profiler_cost: ProfilerCost,
    /// Notes for the user about the target.
    pub hints: Vec<String>,
    /// Describe open fds as lsof would (one readlink per fd, the socket
    /// tables once per process); else by number only.
    pub describe_fds: bool,
    /// What node's inspector read (`--lens js-heap`).
    pub inspector: Option<crate::inspector::Readout>,
}

/// The report of what the collector holds now.
pub fn build(inputs: Inputs, collector: &mut Collector, symbols: &Symbols) -> Report {
    collector.name_jit_frames();
    let settings = &inputs.settings;
    let min_age = settings.min_age.as_nanos() as u64;
    // One describer for the stacks' fds and those held at the start: each process's socket tables are read once.
    let mut describer = if inputs.describe_fds { FdDescriber::default() } else { FdDescriber::off() };
    if let Some(readout) = &inputs.inspector {
        collector.attribute_stream_creators(inputs.target.pid, &readout.stream_creators);
    }
    let crate::collector::Entries { mut stacks, index_of } =
        collector.entries(symbols, inputs.now_ns, min_age, &mut describer);
    for e in &mut stacks {
        e.class = split::classify(e).map(str::to_string);
    }
    // Each resident page by its own entry and the entry of the memory it lies in.
    let pages: Vec<split::Pages> = collector
        .ledger
        .resident_by_container()
        .into_iter()
        .filter_map(|((page, container), bytes)| {
            Some(split::Pages {
                touched_by: *index_of.get(&page)?,
                lies_in: container.and_then(|c| index_of.get(&c).copied()),
                bytes,
            })
        })
        .collect();
    let memory_split = split::split(&stacks, &pages, collector.node_counts());
    if let Some(readout) = &inputs.inspector {
        stacks.extend(readout.entries.iter().cloned());
    }
    sort_entries(&mut stacks, settings.sort);
    let modules = modules_of(&stacks, collector);
    use crate::stacks::symbols::UNREADABLE_JS;
    let unnamed_jit_frames = stacks
        .iter()
        .flat_map(|e| &e.frames)
        .filter(|f| f.module == "[jit]" && (f.function.starts_with("[jit]+") || f.function == UNREADABLE_JS))
        .count() as u64;
    let series = &collector.series;
    let series = SeriesReport {
        interval_s: settings.interval.as_secs_f64() * series.stride.max(1) as f64,
        times: series.times.clone(),
        totals: series.totals.clone(),
        rss: series.rss.clone(),
    };
    let totals = Kind::ALL
        .iter()
        .map(|k| match (k, &inputs.inspector) {
            (Kind::JsHeap, Some(readout)) => (*k, readout.total),
            _ => {
                let o = collector.ledger.total(*k);
                let bytes = if k.is_memory() { o.bytes } else { 0 };
                (*k, Total { bytes, count: o.count })
            }
        })
        .collect();
    let mut handles: std::collections::BTreeMap<Kind, std::collections::BTreeMap<String, _>> =
        Default::default();
    for ((kind, detail), count) in collector.ledger.handle_counts() {
        handles.entry(kind).or_default().insert(detail.to_string(), count.into());
    }
    let kernel = &inputs.kernel;
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        profiler_version: env!("CARGO_PKG_VERSION").to_string(),
        target: inputs.target.clone(),
        started_at: inputs.started_at,
        duration_s: inputs.elapsed.as_secs_f64(),
        end_reason: inputs.end_reason.clone(),
        target_exit: None,
        warmup: inputs.warmup.clone(),
        selection: None,
        totals,
        processes: Vec::new(),
        cgroup: inputs.cgroup.clone(),
        series: Some(series),
        status: None,
        memory_split,
        handles,
        // A launched program held nothing before its first instruction.
        held_at_start: (inputs.target.mode != "launch").then(|| collector.held_at_start(&mut describer)),
        v8_heap: inputs.inspector.as_ref().and_then(|r| r.heap.clone()),
        v8_heap_snapshots: inputs.inspector.as_ref().and_then(|r| r.snapshots.clone()),
        v8_out_of_memory: collector
            .v8_out_of_memory
            .iter()
            .map(|&(pid, ts_ns, heap)| V8OutOfMemory {
                pid,
                at_s: (inputs.elapsed.as_secs_f64() - inputs.now_ns.saturating_sub(ts_ns) as f64 / 1e9)
                    .max(0.0),
                what: match heap {
                    Some(true) => "JavaScript heap out of memory (the V8 heap reached its limit)",
                    Some(false) => "V8 process out of memory (a V8 allocation outside the JS heap failed)",
                    None => "V8 out of memory (which kind was not readable)",
                }
                .to_string(),
            })
            .collect(),
        hints: inputs.hints.iter().chain(inputs.inspector.iter().flat_map(|r| &r.notes)).cloned().collect(),
        stacks,
        modules,
        accuracy: Accuracy {
            lenses: settings.lenses.clone(),
            sample_bytes: settings.sample_bytes,
            unsampled_calls: kernel.unsampled_calls,
            sampled_map_full: kernel.sampled_map_full,
            page_faults: kernel.page_faults,
            profiler_cost: inputs.profiler_cost,
            calls_seen: kernel.calls_seen.clone(),
            events_received: collector.events_received,
            undecodable_events: collector.undecodable_events,
            stack_failures: collector.stack_failures.max(kernel.stack_failed),
            late_processes: collector.found_late.len() as u64,
            truncated_stacks: collector.truncated_stacks,
            unnamed_jit_frames,
            js_naming: collector.js_naming(),
            perf_map_garbage_lines: collector.perf_map_garbage(),
            perf_map_unread_bytes: collector.perf_map_unread(),
            ringbuf_drops: kernel.ringbuf_drops,
            inflight_map_full: kernel.inflight_map_full,
            inflight_syscall_map_full: kernel.inflight_syscall_map_full,
            nested_calls: kernel.nested_calls,
            failed_allocations: kernel.failed_allocs,
            unmatched_returns: kernel.unmatched_returns,
            missed_returns: kernel.missed_returns,
            scratch_busy: kernel.scratch_busy,
            own_read_faults: kernel.own_read_faults,
            threadpool_requests_forgotten: collector.threadpool_forgotten,
            handle_creators_forgotten: collector.stream_creators_forgotten,
            fault_runs_unmatched: collector.fault_runs_unmatched,
            fault_run_pages: collector.fault_run_pages,
            ledger: UnmatchedCounts::from(collector.ledger.counters),
            probes_skipped: inputs.probes_skipped.clone(),
            probes_attached: inputs.probes_attached.clone(),
            incomplete_stacks: collector
                .incomplete_stacks
                .iter()
                .map(|(&(captured, reason), &events)| IncompleteStacks {
                    captured_at: captured.name().to_string(),
                    reason: crate::stacks::cut_name(reason),
                    events,
                })
                .collect(),
            unwind_tables: inputs.unwind_tables.clone(),
        },
    };
    report.status = status(&inputs, collector);
    report.processes = summarize_processes(&report, collector);
    report
}

/// The files the stacks' frames are in, each named once (by the first
/// process found mapping a file of that name).
fn modules_of(stacks: &[StackEntry], collector: &Collector) -> Vec<ModuleInfo> {
    let mut wanted: std::collections::BTreeMap<&str, u32> = Default::default();
    for e in stacks {
        for f in e.frames.iter().filter(|f| !f.module.starts_with('[')) {
            wanted.entry(f.module.as_str()).or_insert(e.pid);
        }
    }
    wanted
        .into_iter()
        .filter_map(|(name, pid)| {
            let maps = collector.maps_of(pid)?;
            let path =
                maps.mappings.iter().filter_map(|m| m.file()).find(|p| p.rsplit('/').next() == Some(name))?;
            module_info(pid, maps, path)
        })
        .collect()
}

/// Overall growth (of RSS or the cgroup's usage when known, else of the
/// outstanding memory) against the thresholds, and the time to the limit.
pub fn status(inputs: &Inputs, collector: &Collector) -> Option<Status> {
    let series = &collector.series;
    let resident: Vec<(f64, f64)> =
        series.times.iter().zip(&series.rss).filter_map(|(t, r)| r.map(|r| (*t, r as f64))).collect();
    let (points, measured_on) = if resident.len() >= 2 {
        (resident, if inputs.target.mode == "cgroup" { "cgroup usage" } else { "rss" })
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
    let per_min = trend::robust_slope(&points).unwrap_or(0.0) * 60.0;
    let (limit, source) = match (inputs.settings.limit, &inputs.memory_limit) {
        (Some(l), _) => (Some(l), Some("--limit".to_string())),
        (None, Some((l, source))) => (Some(*l), Some(source.clone())),
        (None, None) => (None, None),
    };
    let mib = per_min / (1024.0 * 1024.0);
    // From the end of any warm-up on, as the stacks' trends.
    let after_warmup = points.get(collector.series.warmup_index..).unwrap_or_default();
    let retained_mib = trend::retained_per_min(after_warmup).unwrap_or(0.0) / (1024.0 * 1024.0);
    // Too few samples: no level and no time to the limit (the slope of two
    // samples taken while a program starts is no leak rate).
    let judged = points.len() >= trend::MIN_SAMPLES;
    let per_min = if judged { per_min } else { 0.0 };
    Some(Status {
        growth_mib_per_min: mib,
        retained_mib_per_min: retained_mib,
        level: if judged {
            inputs.settings.thresholds.level(mib.max(retained_mib))
        } else {
            trend::LEVEL_UNKNOWN
        }
        .to_string(),
        samples: points.len(),
        measured_on: measured_on.to_string(),
        current_bytes: current,
        limit_bytes: limit,
        limit_source: source,
        time_to_limit_s: limit.and_then(|l| trend::time_to_limit(current, l, per_min)),
    })
}

/// Outstanding totals per process, from the per-stack entries.
fn summarize_processes(report: &Report, collector: &Collector) -> Vec<ProcessSummary> {
    let mut by_pid: std::collections::BTreeMap<u32, ProcessSummary> = Default::default();
    for e in &report.stacks {
        let p = by_pid.entry(e.pid).or_insert_with(|| ProcessSummary {
            pid: e.pid,
            command: e.command.clone(),
            cgroup: collector.cgroup(e.pid).map(str::to_string),
            totals: Default::default(),
        });
        let t = p.totals.entry(e.kind).or_default();
        t.bytes += e.bytes;
        t.count += e.count;
    }
    by_pid.into_values().collect()
}
