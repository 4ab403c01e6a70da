//! What a session hands the report builder ([`crate::report::build`]):
//! its settings, times, kernel counters, probe lists and cgroup numbers,
//! gathered from the live session; and writing the reports out.

use std::time::Duration;

use anyhow::Result;

use super::{monotonic_ns, RecordOptions, Target};
use crate::{
    collector::Collector,
    files::output::OutputDir,
    kernel::{counters::KernelCounters, probes::Probes},
    process::{cgroup::CgroupMounts, ProcessInfo},
    report::{
        build::{self, Inputs, Settings},
        model::{CgroupInfo, ProfilerCost, Status, TargetInfo, UnwindTables},
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
    pub(super) cost_at_start: ProfilerCost,
    pub(super) opts: &'a RecordOptions,
    pub(super) target: &'a Target,
    pub(super) mounts: &'a CgroupMounts,
    pub(super) symbols: &'a Symbols,
    pub(super) hints: &'a [String],
    pub(super) inspector: Option<&'a crate::inspector::Inspector>,
}

impl ReportContext<'_> {
    /// The builder's inputs, taken now.
    fn inputs(
        &self,
        elapsed: Duration,
        end_reason: String,
        warmup: Option<String>,
        kernel: KernelCounters,
        describe_fds: bool,
    ) -> Inputs {
        let opts = self.opts;
        let cgroup = match self.target {
            Target::Cgroup(cgroup) => cgroup
                .target
                .as_ref()
                .map(|t| CgroupInfo { path: t.dir.display().to_string(), memory: t.memory(&cgroup.mounts) }),
            _ => None,
        };
        let memory = match &cgroup {
            Some(cg) => cg.memory.clone(),
            None if matches!(self.target, Target::Cgroup(_)) => None,
            None => crate::process::cgroup::memory_of_process(self.info.pid, self.mounts),
        };
        let t = &self.probes.tables.stats;
        Inputs {
            settings: Settings {
                lenses: opts.lenses.to_string(),
                sample_bytes: opts.sample_bytes,
                interval: opts.interval,
                min_age: opts.min_age,
                sort: opts.sort,
                thresholds: opts.thresholds,
                limit: opts.limit,
            },
            target: TargetInfo {
                pid: self.info.pid,
                command: self.info.command.clone(),
                mode: self.mode.to_string(),
                libc: self.info.maps.libc().unwrap_or_default().to_string(),
            },
            started_at: self.started_at,
            elapsed,
            now_ns: monotonic_ns(),
            end_reason,
            warmup,
            kernel,
            probes_attached: self.probes.attached.clone(),
            probes_skipped: self.probes.skipped.clone(),
            unwind_tables: UnwindTables {
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
            },
            cgroup,
            memory_limit: memory.and_then(|m| Some((m.limit?, m.controller))),
            profiler_cost: ProfilerCost::default(),
            hints: self.hints.to_vec(),
            describe_fds,
            inspector: None,
        }
    }

    /// Overall growth against the thresholds and the time to the limit, now.
    pub(super) fn status(&self, collector: &Collector, elapsed: Duration) -> Option<Status> {
        let inputs = self.inputs(elapsed, String::new(), None, KernelCounters::default(), false);
        build::status(&inputs, collector)
    }

    /// The complete report of what is outstanding now.
    pub(super) fn report(
        &self,
        collector: &mut Collector,
        elapsed: Duration,
        end_reason: String,
        warmup: Option<String>,
        describe_fds: bool,
    ) -> Result<Report> {
        let mut inputs = self.inputs(elapsed, end_reason, warmup, self.probes.counters()?, describe_fds);
        inputs.inspector = self.inspector.map(|i| i.readout(self.opts.min_age));
        let mut report = build::build(inputs, collector, self.symbols);
        // Taken last: building the report is part of what profiling cost.
        report.accuracy.profiler_cost = ProfilerCost::now().having_started_at(self.cost_at_start);
        Ok(report)
    }
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
