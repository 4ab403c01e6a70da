//! Building the report of a session from the collector (entries, trends,
//! status, per-process totals, cgroup numbers), and writing it out.

use std::time::Duration;

use anyhow::Result;
use profiler_common::{counters, syscalls, ALLOC_APIS};

use super::{monotonic_ns, RecordOptions, Target};
use crate::process::cgroup::CgroupMemory;
use crate::{
    collector::Collector,
    files::output::OutputDir,
    kernel::probes::Probes,
    ledger::Kind,
    process::{cgroup::CgroupMounts, ProcessInfo},
    report::{
        model::{
            Accuracy, CgroupInfo, IncompleteStacks, ProcessSummary, SeriesReport, StackEntry, Status,
            TargetInfo, Total, UnwindTables, SCHEMA_VERSION,
        },
        outputs, Report,
    },
    stacks::symbols::Symbols,
};

/// What every report of a session shares.
pub(super) struct ReportContext<'a> {
    pub(super) probes: &'a Probes,
    pub(super) info: &'a ProcessInfo,
    pub(super) mode: &'a str,
    pub(super) started_at: u64,
    pub(super) opts: &'a RecordOptions,
    pub(super) target: &'a Target,
    pub(super) mounts: &'a CgroupMounts,
    pub(super) symbols: &'a Symbols,
}

impl ReportContext<'_> {
    /// Overall growth against the thresholds and the time to the limit, now.
    pub(super) fn status(&self, collector: &Collector) -> Option<Status> {
        let cgroup_memory = match self.target {
            Target::Cgroup(cgroup) => cgroup.target.as_ref().and_then(|t| t.memory(&cgroup.mounts)),
            _ => None,
        };
        status(cgroup_memory, collector, self.opts, self.target, self.mounts, self.info.pid)
    }

    /// The complete report of what is outstanding now.
    pub(super) fn report(
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
            self.symbols,
        );
        if let Target::Cgroup(cgroup) = self.target {
            if let Some(target) = &cgroup.target {
                report.cgroup = Some(CgroupInfo {
                    path: target.dir.display().to_string(),
                    memory: target.memory(&cgroup.mounts),
                });
            }
        }
        report.status = self.status(collector);
        report.processes = summarize_processes(&report, collector);
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
    symbols: &Symbols,
) -> Report {
    let mut stacks = collector.entries(symbols, monotonic_ns(), opts.min_age.as_nanos() as u64);
    crate::report::select::sort_entries(&mut stacks, opts.sort);
    for e in &mut stacks {
        e.class = crate::report::split::classify(e).map(str::to_string);
    }
    let memory_split = crate::report::split::split(&stacks);
    let modules = modules_of(&stacks, collector);
    let unnamed_jit_frames = stacks
        .iter()
        .flat_map(|e| &e.frames)
        .filter(|f| f.module == "[jit]" && f.function.starts_with("[jit]+"))
        .count() as u64;
    let series = &collector.series;
    let series = SeriesReport {
        interval_s: opts.interval.as_secs_f64() * series.stride.max(1) as f64,
        times: series.times.clone(),
        totals: series.totals.clone(),
        rss: series.rss.clone(),
    };
    let totals = Kind::ALL
        .iter()
        .map(|k| {
            let o = collector.ledger.total(*k);
            let bytes = if k.is_memory() { o.bytes } else { 0 };
            (*k, Total { bytes, count: o.count })
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
        target_exit: None,
        warmup: None,
        selection: None,
        totals,
        processes: Vec::new(),
        cgroup: None,
        series: Some(series),
        status: None,
        memory_split,
        handles: {
            let mut handles: std::collections::BTreeMap<Kind, std::collections::BTreeMap<String, _>> =
                Default::default();
            for ((kind, detail), count) in collector.ledger.handle_counts() {
                handles.entry(kind).or_default().insert(detail.to_string(), count);
            }
            handles
        },
        stacks,
        modules,
        accuracy: Accuracy {
            lenses: opts.lenses.to_string(),
            sample_bytes: opts.sample_bytes,
            unsampled_calls: kernel[counters::UNSAMPLED_CALLS],
            sampled_map_full: kernel[counters::SAMPLED_MAP_FULL],
            page_faults: kernel[counters::PAGE_FAULTS],
            profiler_cost: crate::report::model::ProfilerCost::now(),
            calls_seen,
            events_received: collector.events_received,
            undecodable_events: collector.undecodable_events,
            stack_failures: collector.stack_failures.max(kernel[counters::STACK_FAILED]),
            late_processes: collector.found_late.len() as u64,
            truncated_stacks: collector.truncated_stacks,
            unnamed_jit_frames,
            perf_map_garbage_lines: collector.perf_map_garbage(),
            perf_map_unread_bytes: collector.perf_map_unread(),
            ringbuf_drops: kernel[counters::RINGBUF_DROPS],
            inflight_map_full: kernel[counters::INFLIGHT_MAP_FULL],
            inflight_syscall_map_full: kernel[counters::INFLIGHT_SYSCALL_MAP_FULL],
            nested_calls: kernel[counters::NESTED_CALLS],
            failed_allocations: kernel[counters::FAILED_ALLOCS],
            unmatched_returns: kernel[counters::UNMATCHED_RETURNS],
            missed_returns: kernel[counters::MISSED_RETURNS],
            scratch_busy: kernel[counters::SCRATCH_BUSY],
            own_read_faults: kernel[counters::OWN_READ_FAULTS],
            ledger: collector.ledger.counters,
            probes_skipped: probes.skipped.clone(),
            probes_attached: probes.attached.clone(),
            incomplete_stacks: collector
                .incomplete_stacks
                .iter()
                .map(|(&(captured, reason), &events)| IncompleteStacks {
                    captured_at: captured.name().to_string(),
                    reason: crate::stacks::cut_name(reason),
                    events,
                })
                .collect(),
            unwind_tables: {
                let t = &probes.tables.stats;
                UnwindTables {
                    modules: t.modules as u64,
                    rows: t.rows,
                    row_bytes: t.row_bytes(),
                    code_bytes: t.code_bytes,
                    build_ms: t.build_time.as_secs_f64() * 1e3,
                    modules_without_tables: t
                        .without_tables
                        .iter()
                        .map(|(module, why)| format!("{module}: {why}"))
                        .collect(),
                    mappings_over_limit: t.mappings_over_limit,
                }
            },
        },
    }
}

/// The files the stacks' frames are in, each named once (by the first
/// process found mapping a file of that name).
fn modules_of(stacks: &[StackEntry], collector: &Collector) -> Vec<crate::report::model::ModuleInfo> {
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
            crate::stacks::symbols::module_info(pid, maps, path)
        })
        .collect()
}

/// Overall growth (of RSS or the cgroup's usage when known, else of the
/// outstanding memory) against the thresholds, and the time to the limit.
fn status(
    cgroup_memory: Option<CgroupMemory>,
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
    let (limit, source) = match (opts.limit, cgroup_memory) {
        (Some(l), _) => (Some(l), Some("--limit".to_string())),
        (None, Some(m)) => (m.limit, m.limit.map(|_| m.controller)),
        (None, None) => match crate::process::cgroup::memory_of_process(pid, mounts) {
            Some(m) => (m.limit, m.limit.map(|_| m.controller)),
            None => (None, None),
        },
    };
    let mib = per_min / (1024.0 * 1024.0);
    // Too few samples: no level and no time to the limit (the slope of two
    // samples taken while a program starts is no leak rate).
    let judged = points.len() >= crate::trend::MIN_SAMPLES;
    let per_min = if judged { per_min } else { 0.0 };
    Some(Status {
        growth_mib_per_min: mib,
        level: if judged { opts.thresholds.level(mib) } else { crate::trend::LEVEL_UNKNOWN }.to_string(),
        samples: points.len(),
        measured_on: measured_on.to_string(),
        current_bytes: current,
        limit_bytes: limit,
        limit_source: source,
        time_to_limit_s: limit.and_then(|l| crate::trend::time_to_limit(current, l, per_min)),
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

pub(super) fn write_snapshot(
    report: &Report,
    parent: &OutputDir,
    name: &str,
    opts: &RecordOptions,
) -> Result<()> {
    write_outputs(report, &parent.subdir(name)?, opts)
}

/// Writes the report's whole set of outputs (see [`outputs::write_all`]).
pub(super) fn write_outputs(report: &Report, dir: &OutputDir, opts: &RecordOptions) -> Result<()> {
    let options = outputs::Options { top: opts.top, group_by: opts.group_by, ..Default::default() };
    outputs::write_all(report, dir, &options).map(drop)
}
