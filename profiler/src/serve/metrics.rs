//! `/metrics`: a report as OpenMetrics text, for Prometheus. Names and labels
//! are documented in `docs/fleet.md`; every series is bounded (kinds, cgroups
//! of the target, the top [`TOP_STACKS`] stacks per kind, accuracy counters).

use std::{collections::BTreeMap, hash::Hasher, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    kind::Kind,
    report::{model::ProfilerCost, Report},
};

/// Stacks per kind exported as their own series.
pub const TOP_STACKS: usize = 10;

type Labels = Vec<(&'static str, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// What the profiler itself costs, at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnCost {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl OwnCost {
    pub fn now() -> Self {
        let cost = ProfilerCost::now();
        Self {
            cpu_seconds: cost.cpu_user_s + cost.cpu_system_s,
            resident_bytes: crate::process::rss_of(std::process::id()).unwrap_or(0),
        }
    }
}

/// A family registered under `name`, filled by the caller. (The library
/// ends each help text with a period.)
fn gauge(registry: &mut Registry, name: &str, help: &str) -> GaugeFamily {
    let family = GaugeFamily::default();
    registry.register(name, help, family.clone());
    family
}

/// A gauge without labels registered under `name`.
fn plain_gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge<f64, AtomicU64> {
    let gauge = Gauge::<f64, AtomicU64>::default();
    registry.register(name, help, gauge.clone());
    gauge
}

fn set(family: &GaugeFamily, labels: Labels, value: f64) {
    family.get_or_create(&labels).set(value);
}

/// A short, stable identity of a stack: a hash of its symbolized frames.
pub fn stack_id(frames: &[crate::report::model::Frame]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for f in frames {
        h.write(f.function.as_bytes());
        h.write(f.file.as_deref().unwrap_or_default().as_bytes());
        h.write_u32(f.line.unwrap_or(0));
    }
    format!("{:08x}", h.finish() as u32)
}

/// The OpenMetrics text of a report.
pub fn render(report: &Report, own: OwnCost) -> String {
    let mut registry = Registry::default();
    let cgroup_mode = report.cgroup.is_some();
    let cgroup_of: BTreeMap<u32, &str> =
        report.processes.iter().filter_map(|p| Some((p.pid, p.cgroup.as_deref()?))).collect();

    let info = gauge(&mut registry, "leakprof_target_info", "The profiled target (value 1)");
    let mut labels: Labels = vec![
        ("mode", report.target.mode.clone()),
        ("pid", report.target.pid.to_string()),
        ("command", report.target.command.clone()),
    ];
    if let Some(cg) = &report.cgroup {
        labels.push(("cgroup", cg.path.clone()));
    }
    set(&info, labels, 1.0);

    let bytes = gauge(
        &mut registry,
        "leakprof_outstanding_bytes",
        "Outstanding bytes per memory kind (per cgroup in cgroup mode)",
    );
    let blocks =
        gauge(&mut registry, "leakprof_outstanding_blocks", "Outstanding blocks or mappings per memory kind");
    let handles = gauge(&mut registry, "leakprof_outstanding_handles", "Open handles (fds) per handle kind");
    let with_cgroup = |kind: Kind, cgroup: Option<&str>| -> Labels {
        let mut l = vec![("kind", kind.to_string())];
        if let Some(cg) = cgroup {
            l.push(("cgroup", cg.to_string()));
        }
        l
    };
    if cgroup_mode {
        // Every kind of every cgroup seen, zero included: a container that
        // frees everything shows 0, not a vanished series.
        let mut per: BTreeMap<(Kind, &str), (u64, u64)> = BTreeMap::new();
        for p in &report.processes {
            let cg = p.cgroup.as_deref().unwrap_or("unknown");
            for &kind in report.totals.keys() {
                let t = p.totals.get(&kind).copied().unwrap_or_default();
                let sum = per.entry((kind, cg)).or_default();
                sum.0 += t.bytes;
                sum.1 += t.count;
            }
        }
        for ((kind, cg), (b, c)) in per {
            emit_total(&bytes, &blocks, &handles, with_cgroup(kind, Some(cg)), kind, b, c);
        }
    } else {
        for (&kind, t) in &report.totals {
            emit_total(&bytes, &blocks, &handles, with_cgroup(kind, None), kind, t.bytes, t.count);
        }
    }

    let growth_bytes = gauge(
        &mut registry,
        "leakprof_growth_bytes_per_second",
        "Growth rate of the outstanding bytes per memory kind (robust slope over the last samples)",
    );
    let growth_handles = gauge(
        &mut registry,
        "leakprof_growth_handles_per_second",
        "Growth rate of the open handles per handle kind",
    );
    if let Some(series) = &report.series {
        for (&kind, values) in &series.totals {
            let Some(rate) = crate::trend::recent_rate(&series.times, values) else { continue };
            let family = if kind.is_handle() { &growth_handles } else { &growth_bytes };
            set(family, vec![("kind", kind.to_string())], rate);
        }
    }

    let level = gauge(&mut registry, "leakprof_leak_level", "Overall growth level: 0 normal, 1 slow leak, 2 active leak, 3 critical (absent until enough samples)");
    let memory = gauge(
        &mut registry,
        "leakprof_memory_bytes",
        "The memory the level is judged on (RSS, cgroup usage or outstanding)",
    );
    let memory_growth =
        gauge(&mut registry, "leakprof_memory_growth_bytes_per_second", "Growth rate of that memory");
    let limit = gauge(
        &mut registry,
        "leakprof_memory_limit_bytes",
        "The memory limit (--limit or the cgroup's), when there is one",
    );
    let to_limit = gauge(
        &mut registry,
        "leakprof_seconds_to_limit",
        "Seconds until the limit at the measured rate (absent when not growing)",
    );
    if let Some(status) = &report.status {
        let on = vec![("measured_on", status.measured_on.clone())];
        set(&memory, on.clone(), status.current_bytes as f64);
        let rate = status.growth_mib_per_min * 1024.0 * 1024.0 / 60.0;
        set(&memory_growth, on, rate);
        if let Some(n) =
            ["normal", "slow leak", "active leak", "critical"].iter().position(|l| *l == status.level)
        {
            set(&level, vec![], n as f64);
        }
        if let Some(l) = status.limit_bytes {
            set(&limit, vec![("source", status.limit_source.clone().unwrap_or_default())], l as f64);
        }
        if let Some(s) = status.time_to_limit_s {
            set(&to_limit, vec![], s);
        }
    }

    v8_heap(&mut registry, report);

    let stack_bytes = gauge(
        &mut registry,
        "leakprof_stack_outstanding_bytes",
        "Outstanding bytes of the top stacks per memory kind",
    );
    let stack_handles = gauge(
        &mut registry,
        "leakprof_stack_outstanding_handles",
        "Open handles of the top stacks per handle kind",
    );
    for &kind in report.totals.keys() {
        let handle = kind.is_handle();
        let mut entries: Vec<_> = report.entries(kind).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(if handle { e.count } else { e.bytes }));
        for e in entries.into_iter().take(TOP_STACKS) {
            let mut labels = vec![
                ("kind", kind.to_string()),
                ("stack", stack_id(&e.frames)),
                ("function", e.frames.first().map_or("[no frames]".to_string(), |f| f.function.clone())),
            ];
            if let Some(cg) = cgroup_of.get(&e.pid).filter(|_| cgroup_mode) {
                labels.push(("cgroup", cg.to_string()));
            }
            // Two entries may share symbolized frames in different processes: add them up.
            let family = if handle { &stack_handles } else { &stack_bytes };
            let value = if handle { e.count } else { e.bytes } as f64;
            family.get_or_create(&labels).inc_by(value);
        }
    }

    let accuracy = Family::<Labels, Counter<f64, AtomicU64>>::default();
    registry.register(
        "leakprof_accuracy_events",
        "Events, calls and stacks lost or degraded, per counter of the report's accuracy section",
        accuracy.clone(),
    );
    for (name, value) in accuracy_counters(report) {
        accuracy.get_or_create(&vec![("counter", name)]).inc_by(value as f64);
    }
    let unprobed = gauge(
        &mut registry,
        "leakprof_unprobed_allocator_entries",
        "Allocator entry points that could not be probed",
    );
    set(&unprobed, vec![], report.accuracy.probes_skipped.len() as f64);

    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(own.cpu_seconds);
    registry.register("process_cpu_seconds", "The profiler's own CPU time", cpu);
    let rss = Gauge::<f64, AtomicU64>::default();
    rss.set(own.resident_bytes as f64);
    registry.register("process_resident_memory_bytes", "The profiler's own resident memory", rss);

    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

/// Node's own counts (read from its memory, any lens), V8's own numbers
/// (`--lens js-heap`) and its out-of-memory aborts.
fn v8_heap(registry: &mut Registry, report: &Report) {
    let aborts = Counter::<f64, AtomicU64>::default();
    aborts.inc_by(report.v8_out_of_memory.len() as f64);
    registry.register(
        "leakprof_v8_out_of_memory",
        "V8 out-of-memory aborts seen (node's OOMErrorHandler)",
        aborts,
    );
    if let Some(node) = &report.memory_split.node_counts {
        let figures = [
            (
                node.now.v8_heap_used_bytes,
                "leakprof_node_heap_used_bytes",
                "V8 heap in use (heapUsed less the young generation, every isolate) of the node processes, read from their memory",
            ),
            (
                node.now.array_buffers_bytes,
                "leakprof_node_array_buffers_bytes",
                "ArrayBuffer backing stores (arrayBuffers) of the node processes, read from node's allocator",
            ),
        ];
        for (bytes, name, help) in figures {
            if let Some(bytes) = bytes {
                plain_gauge(registry, name, help).set(bytes as f64);
            }
        }
    }
    let Some(h) = &report.v8_heap else { return };
    let pid = || vec![("pid", h.pid.to_string())];
    let used = gauge(registry, "leakprof_v8_heap_used_bytes", "V8 heap used per space (--lens js-heap)");
    for space in &h.spaces {
        set(&used, vec![("pid", h.pid.to_string()), ("space", space.name.clone())], space.used_bytes as f64);
    }
    let limit = gauge(registry, "leakprof_v8_heap_limit_bytes", "V8's heap limit (heap_size_limit)");
    set(&limit, pid(), h.limit_bytes as f64);
    let utilisation = gauge(
        registry,
        "leakprof_v8_heap_utilisation_ratio",
        "V8 heap used / its limit (0.8 warning, 0.9 critical)",
    );
    set(&utilisation, pid(), h.utilisation_pct / 100.0);
    let external = gauge(
        registry,
        "leakprof_v8_external_bytes",
        "process.memoryUsage().external (ArrayBuffers included)",
    );
    set(&external, pid(), h.external_bytes as f64);
    if let Some(s) = h.time_to_limit_s {
        let to_limit = gauge(
            registry,
            "leakprof_v8_seconds_to_heap_limit",
            "Seconds until the V8 heap limit at its growth rate (absent when not growing)",
        );
        set(&to_limit, pid(), s);
    }
}

fn emit_total(
    bytes: &GaugeFamily,
    blocks: &GaugeFamily,
    handles: &GaugeFamily,
    labels: Labels,
    kind: Kind,
    b: u64,
    count: u64,
) {
    if kind.is_handle() {
        set(handles, labels, count as f64);
    } else {
        set(bytes, labels.clone(), b as f64);
        set(blocks, labels, count as f64);
    }
}

/// The report's accuracy counters by name: every whole-number field of the
/// accuracy section (the ledger's included), and incomplete stacks per reason.
fn accuracy_counters(report: &Report) -> Vec<(String, u64)> {
    /// A setting, and a figure that is not a loss.
    const NOT_COUNTERS: [&str; 2] = ["sample_bytes", "fault_run_pages"];
    let mut out = Vec::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&report.accuracy) {
        for (name, value) in fields {
            if let Some(n) = value.as_u64().filter(|_| !NOT_COUNTERS.contains(&name.as_str())) {
                out.push((name, n));
            }
        }
    }
    let incomplete: u64 = report.accuracy.incomplete_stacks.iter().map(|s| s.events).sum();
    out.push(("incomplete_stacks".to_string(), incomplete));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_line(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
    }

    #[test]
    fn renders_totals_stacks_accuracy_and_own_cost() {
        let report = crate::report::sample::report();
        let text = render(&report, OwnCost { cpu_seconds: 1.5, resident_bytes: 4096 });
        let help: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        assert!(help.iter().all(|l| !l.ends_with("..")), "one period ends each help: {help:#?}");
        for line in [
            "leakprof_outstanding_bytes{kind=\"heap\"} 300.0",
            "leakprof_outstanding_blocks{kind=\"heap\"} 3.0",
            "leakprof_outstanding_handles{kind=\"sockets\"} 2.0",
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 4096.0",
            "leakprof_accuracy_events_total{counter=\"ringbuf_drops\"} 0.0",
            "# EOF",
        ] {
            assert_line(&text, line);
        }
        // The two heap entries with the same frames are one series of 250 bytes.
        let id = stack_id(&report.stacks[0].frames);
        let line = format!(
            "leakprof_stack_outstanding_bytes{{kind=\"heap\",stack=\"{id}\",function=\"leak_a\"}} 250.0"
        );
        assert!(text.contains(&line), "{line} missing in:\n{text}");
        assert!(!text.contains("leakprof_leak_level"), "no level without a status");
    }

    #[test]
    fn v8_heap_numbers_are_gauges_and_aborts_a_counter() {
        let mut report = crate::report::sample::report();
        report.v8_heap = Some(crate::report::model::V8Heap {
            pid: 42,
            limit_bytes: 1000,
            utilisation_pct: 85.0,
            time_to_limit_s: Some(30.0),
            spaces: vec![crate::report::model::V8Space {
                name: "old_space".into(),
                used_bytes: 700,
                size_bytes: 800,
                available_bytes: 100,
            }],
            ..Default::default()
        });
        let text = render(&report, OwnCost { cpu_seconds: 0.0, resident_bytes: 0 });
        for line in [
            "leakprof_v8_heap_used_bytes{pid=\"42\",space=\"old_space\"} 700.0",
            "leakprof_v8_heap_limit_bytes{pid=\"42\"} 1000.0",
            "leakprof_v8_heap_utilisation_ratio{pid=\"42\"} 0.85",
            "leakprof_v8_seconds_to_heap_limit{pid=\"42\"} 30.0",
            "leakprof_v8_out_of_memory_total 0.0",
        ] {
            assert_line(&text, line);
        }
        assert!(!text.contains("leakprof_node_"), "node's counts only when read");
        let counts = |v8_heap_used_bytes, array_buffers_bytes| crate::report::split::NodeCounts {
            v8_heap_used_bytes: Some(v8_heap_used_bytes),
            array_buffers_bytes,
        };
        report.memory_split.node_counts = Some(crate::report::split::NodeCountsThen {
            processes: 1,
            at_start: counts(100, Some(10)),
            now: counts(900, Some(90)),
        });
        let text = render(&report, OwnCost { cpu_seconds: 0.0, resident_bytes: 0 });
        assert_line(&text, "leakprof_node_heap_used_bytes 900.0");
        assert_line(&text, "leakprof_node_array_buffers_bytes 90.0");
    }

    #[test]
    fn cgroup_mode_labels_totals_per_cgroup() {
        let mut report = crate::report::sample::report();
        report.cgroup =
            Some(crate::report::model::CgroupInfo { path: "/sys/fs/cgroup/parent".into(), memory: None });
        report.processes = vec![crate::report::model::ProcessSummary {
            pid: 1,
            command: "demo".into(),
            cgroup: Some("/parent/a".into()),
            totals: [(Kind::Heap, crate::report::model::Total { bytes: 300, count: 3 })].into(),
        }];
        let text = render(&report, OwnCost::default());
        assert!(
            text.contains("leakprof_outstanding_bytes{kind=\"heap\",cgroup=\"/parent/a\"} 300.0"),
            "{text}"
        );
        assert!(
            text.contains("leakprof_outstanding_handles{kind=\"sockets\",cgroup=\"/parent/a\"} 0.0"),
            "{text}"
        );
    }
}
