//! The human summary (`report.txt`, also printed at the end of a run).

use crate::kind::Kind;
use std::fmt::Write;

use super::{flame::human_bytes, Report};
use crate::stacks::Handoff;

/// Frames shown per stack in the text summary.
const FRAMES_SHOWN: usize = 16;
/// Open fds shown per handle stack, and per kind of those held at the start.
const FDS_SHOWN: usize = 3;

/// The status's growth for people: `+12.00 MiB/min of rss`, and the rise
/// that stayed when the slope misses it (a step).
pub(crate) fn growth(st: &super::model::Status) -> String {
    let retained = if st.retained_mib_per_min > 2.0 * st.growth_mib_per_min.max(0.0) + 0.01 {
        format!(", rose and stayed: {:+.2} MiB/min retained", st.retained_mib_per_min)
    } else {
        String::new()
    };
    format!("{:+.2} MiB/min of {}{retained}", st.growth_mib_per_min, st.measured_on)
}

/// What the processes already held when recording started: origin unknown, not in the totals.
fn held_at_start(s: &mut String, report: &Report) {
    let Some(held) = &report.held_at_start else { return };
    if held.handle_counts.is_empty() && held.memory.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "Held when recording started (opened or allocated before; origin unknown, not in the totals):"
    );
    for (kind, count) in Kind::ALL.iter().filter_map(|k| Some((k, held.handle_counts.get(k)?))) {
        let shown: Vec<&str> = held
            .handles
            .iter()
            .filter(|h| h.kind == *kind)
            .take(FDS_SHOWN)
            .map(|h| h.description.as_str())
            .collect();
        let more = if *count as usize > shown.len() {
            format!("; {} more", *count as usize - shown.len())
        } else {
            String::new()
        };
        let _ = writeln!(s, "  {kind:<10} {count:>5}  {}{more}", shown.join("; "));
    }
    if !held.memory.is_empty() {
        let regions: Vec<String> =
            held.memory.iter().map(|r| format!("{} {}", r.class, human_bytes(r.rss_bytes))).collect();
        let _ = writeln!(s, "  memory (resident, by region): {}", regions.join(", "));
        // What V8 counts in its pages, and the backing stores smaps cannot tell from other malloc blocks.
        if let Some(first) = report.v8_heap.as_ref().and_then(|h| h.first) {
            let _ = writeln!(
                s,
                "  V8's own count {:.1}s in: V8 heap {} committed ({} used), ArrayBuffers {}, other external {}",
                first.at_s,
                human_bytes(first.committed_bytes),
                human_bytes(first.used_bytes),
                human_bytes(first.array_buffers_bytes),
                human_bytes(first.external_bytes.saturating_sub(first.array_buffers_bytes))
            );
        }
    }
}

/// Heap snapshots (`--heap-snapshot`): what each cost, and for each later
/// one what grew since the first, with the path that retains it.
fn heap_snapshots(s: &mut String, report: &Report) {
    let Some(h) = &report.v8_heap_snapshots else { return };
    let taken: Vec<String> = h
        .taken
        .iter()
        .map(|t| {
            format!(
                "{} at {:.0}s ({}, paused node {:.0} ms)",
                t.file,
                t.at_s,
                human_bytes(t.file_bytes),
                t.pause_ms
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "V8 heap snapshots: {}",
        if taken.is_empty() { "none taken".into() } else { taken.join("; ") }
    );
    if !taken.is_empty() {
        let _ = writeln!(
            s,
            "  (writing them grew node's own memory: what stacks under V8's HeapSnapshot serializer hold is theirs)"
        );
    }
    for c in &h.comparisons {
        let _ = writeln!(s, "  grew from {} to {} (new objects - those gone, by class):", c.base, c.to);
        for g in c.grew.iter().filter(|g| g.delta_bytes > 0).take(5) {
            let _ = writeln!(
                s,
                "    {:+.2} MiB ({} new, {} gone) {}",
                g.delta_bytes as f64 / (1 << 20) as f64,
                g.new_objects,
                g.deleted_objects,
                g.class
            );
            if !g.retained_by.is_empty() {
                let _ = writeln!(s, "      retained by {} ({})", g.retained_by.join(" -> "), g.path_share);
            }
        }
    }
}

/// V8's own view of its heap (`--lens js-heap`): used against the limit, per space.
fn v8_heap(s: &mut String, report: &Report) {
    let Some(h) = &report.v8_heap else { return };
    let to_limit = match h.time_to_limit_s {
        Some(t) => format!(", ~{} to the limit", duration(t)),
        None => String::new(),
    };
    let _ = writeln!(
        s,
        "V8 heap: {} ({:.1}% of the {} limit; {:+.2} MiB/min{to_limit}), {} committed; external {}, ArrayBuffers {}",
        h.level,
        h.utilisation_pct,
        human_bytes(h.limit_bytes),
        h.growth_mib_per_min,
        human_bytes(h.committed_bytes),
        human_bytes(h.external_bytes),
        human_bytes(h.array_buffers_bytes)
    );
    let spaces: Vec<String> = h
        .spaces
        .iter()
        .filter(|sp| sp.used_bytes > 0)
        .map(|sp| format!("{} {}", sp.name.trim_end_matches("_space"), human_bytes(sp.used_bytes)))
        .collect();
    let _ = writeln!(s, "  used {}: {}", human_bytes(h.used_bytes), spaces.join(", "));
}

pub fn render(report: &Report, top: usize) -> String {
    let mut s = String::new();
    let t = &report.target;
    if t.mode == "cgroup" {
        // t.command names the cgroup or container; there is no one pid.
        let _ = writeln!(s, "Leak report for {}, cgroup mode", t.command);
    } else {
        let _ = writeln!(s, "Leak report for pid {} ({}), {} mode", t.pid, t.command, t.mode);
    }
    let _ = writeln!(s, "Recorded {:.1}s; ended: {}", report.duration_s, report.end_reason);
    if let Some(w) = &report.warmup {
        let _ = writeln!(s, "Warm-up: {w}");
    }
    if let Some(selection) = &report.selection {
        let _ = writeln!(s, "Showing: {selection}");
    }
    if let Some(losses) = losses(report) {
        let _ = writeln!(s, "INCOMPLETE: {losses} (see Accuracy)");
    }
    for oom in &report.v8_out_of_memory {
        let heap = report.v8_heap.as_ref().filter(|h| h.pid == oom.pid).map_or(String::new(), |h| {
            format!(
                "; last reading: {} of the {} limit ({:.1}%)",
                human_bytes(h.used_bytes),
                human_bytes(h.limit_bytes),
                h.utilisation_pct
            )
        });
        let _ = writeln!(s, "V8 OUT OF MEMORY: pid {} at {:.1}s: {}{heap}", oom.pid, oom.at_s, oom.what);
    }
    for hint in &report.hints {
        let _ = writeln!(s, "Note: {hint}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Outstanding when recording ended:");
    if report.totals.values().all(|t| t.count == 0) {
        let _ = writeln!(s, "  nothing");
    }
    let kinds = super::select::kind_order(report);
    for kind in &kinds {
        let total = report.totals.get(kind).copied().unwrap_or_default();
        if total.count == 0 {
            continue;
        }
        if kind.is_handle() {
            let _ = writeln!(s, "  {kind:<10} {:>12} open handles", total.count);
        } else {
            let _ = writeln!(
                s,
                "  {kind:<10} {:>12} in {} {}",
                human_bytes(total.bytes),
                total.count,
                kind.items(total.count)
            );
        }
    }
    let split = &report.memory_split;
    if split.v8_heap_bytes > 0 || split.external_bytes > 0 {
        let ratio =
            split.external_to_heap.map_or(String::new(), |r| format!(", External/Heap {:.0}%", r * 100.0));
        let measured_on =
            if split.measured_on.is_empty() { "outstanding" } else { split.measured_on.as_str() };
        let counted =
            if split.node_counts.is_some() { "; V8 heap and external by node's own count" } else { "" };
        let unused = if split.held_unused_bytes > 0 {
            format!(", held unused {}", human_bytes(split.held_unused_bytes))
        } else {
            String::new()
        };
        let once =
            if split.node_counts.is_some() { "other native as measured" } else { "each byte counted once" };
        let _ = writeln!(
            s,
            "Memory split ({measured_on}{counted}): V8 heap {}, external (ArrayBuffers) {}, other native {}{unused}{ratio} ({once})",
            human_bytes(split.v8_heap_bytes),
            human_bytes(split.external_bytes),
            human_bytes(split.native_bytes)
        );
        if let Some(node) = &split.node_counts {
            let count = |bytes: Option<u64>| bytes.map_or("unknown".to_string(), human_bytes);
            let _ = writeln!(
                s,
                "  node's own count, read from its memory ({} process{}): V8 heap in use (heapUsed less the young generation, every isolate) {} -> {}, arrayBuffers {} -> {}{}",
                node.processes,
                if node.processes == 1 { "" } else { "es" },
                count(node.at_start.v8_heap_used_bytes),
                count(node.now.v8_heap_used_bytes),
                count(node.at_start.array_buffers_bytes),
                count(node.now.array_buffers_bytes),
                if split.held_unused_bytes > 0 {
                    "; held unused: V8 pages committed but not in use, and pages malloc keeps after buffers are freed"
                } else {
                    ""
                },
            );
        }
    }
    if let Some(st) = &report.status {
        let limit = match (st.limit_bytes, &st.limit_source, st.time_to_limit_s) {
            (Some(l), Some(src), Some(t)) => {
                format!("; limit {} ({src}): ~{} to the limit", human_bytes(l), duration(t))
            }
            (Some(l), Some(src), None) => format!("; limit {} ({src})", human_bytes(l)),
            _ => String::new(),
        };
        if st.level == crate::trend::LEVEL_UNKNOWN {
            let _ = writeln!(
                s,
                "Status: unknown, {} samples of {} (a trend needs {}: record longer or lower --interval), now {}{limit}",
                st.samples,
                st.measured_on,
                crate::trend::MIN_SAMPLES,
                human_bytes(st.current_bytes)
            );
        } else {
            let _ = writeln!(
                s,
                "Status: {} ({}, now {}){limit}",
                st.level,
                growth(st),
                human_bytes(st.current_bytes)
            );
        }
    }
    v8_heap(&mut s, report);
    heap_snapshots(&mut s, report);
    held_at_start(&mut s, report);
    if let Some(cg) = &report.cgroup {
        let memory = match &cg.memory {
            Some(m) => format!(
                "memory usage {} of limit {} ({})",
                human_bytes(m.usage),
                m.limit.map_or("none".to_string(), human_bytes),
                m.controller
            ),
            None => "no memory controller found".to_string(),
        };
        let _ = writeln!(s, "Cgroup {}: {memory}", cg.path);
    }
    if report.processes.len() > 1 {
        let _ = writeln!(s);
        let _ = writeln!(s, "Per process:");
        for p in &report.processes {
            let parts: Vec<String> = p
                .totals
                .iter()
                .map(|(k, t)| {
                    if k.is_handle() {
                        format!("{k} {}", t.count)
                    } else {
                        format!("{k} {}", human_bytes(t.bytes))
                    }
                })
                .collect();
            let _ = writeln!(s, "  {:>7} {:<40} {}", p.pid, p.command, parts.join(", "));
        }
    }
    if !report.handles.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Open handles by type (opened while recording / open before recording or during warm-up, origin unknown):"
        );
        for (kind, details) in &report.handles {
            let parts: Vec<String> =
                details.iter().map(|(d, c)| format!("{d} {}/{}", c.open, c.pre_existing)).collect();
            let _ = writeln!(s, "  {kind:<10} {}", parts.join(", "));
        }
    }
    for kind in kinds.iter().copied() {
        let (runtime, program): (Vec<_>, Vec<_>) =
            report.entries(kind).partition(|e| super::origin::is_runtime_stack(&e.frames));
        if program.is_empty() && runtime.is_empty() {
            continue;
        }
        let entries: Vec<_> = program.into_iter().take(top).collect();
        let _ = writeln!(s);
        let _ = writeln!(s, "Top {kind} stacks:");
        if kind == Kind::Resident {
            let _ = writeln!(
                s,
                "  (pages by the code that first touched them: memory an allocator frees and hands out again stays with its first toucher; `--lens alloc --sample-bytes 512K` names who holds each block now)"
            );
        }
        for (i, e) in entries.iter().enumerate() {
            let mut what = if kind.is_handle() {
                format!("{} open", e.count)
            } else if kind == Kind::Heap {
                // Each outstanding block is one allocating call.
                format!("{} over {} {}", human_bytes(e.bytes), e.count, plural(e.count, "call", "calls"))
            } else {
                format!("{} in {} {}", human_bytes(e.bytes), e.count, kind.items(e.count))
            };
            if e.sites > 1 {
                what.push_str(&format!(" from {} code paths", e.sites));
            }
            let trend = match e.trend {
                Some(t) if t.verdict != crate::trend::Verdict::Unknown => {
                    // A rise that stayed while the slope says ~0 (a step, a cache filled early).
                    let stepped = t.verdict == crate::trend::Verdict::Plateaued;
                    let retained = if stepped && t.retained_per_min > 2.0 * t.growth_per_min.max(0.0) {
                        format!(
                            " (rose and stayed: {} over the recording)",
                            super::flame::rate_per_min(kind, t.retained_per_min)
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        ", {} {}{retained}, {:.0}% old",
                        t.verdict.name(),
                        super::flame::rate_per_min(kind, t.growth_per_min),
                        e.old_share * 100.0
                    )
                }
                _ => String::new(),
            };
            // Sampled JS objects carry no age.
            let age =
                if kind == Kind::JsHeap { String::new() } else { format!(", mean age {:.1}s", e.mean_age_s) };
            let _ = writeln!(s, "  #{} {what} via {}{age}{trend}", i + 1, e.api);
            if kind == Kind::Resident && super::split::through_allocator(e) {
                let _ = writeln!(
                    s,
                    "      first touched inside the allocator: these pages may since hold other code's blocks; the verdict is about the pages, not this stack (check with --lens alloc)"
                );
            }
            let shown = e.fds.len().min(FDS_SHOWN);
            for fd in &e.fds[..shown] {
                let _ = writeln!(s, "      - {fd}");
            }
            if shown > 0 && e.count as usize > shown {
                let _ = writeln!(
                    s,
                    "      - and {} more open fds (report.json describes {})",
                    e.count as usize - shown,
                    e.fds.len()
                );
            }
            if e.frames.is_empty() {
                let _ = writeln!(s, "      [stack unavailable]");
            }
            // The first frames, and as many from the last handoff on (the code the stack acted for).
            let handoff =
                e.frames.iter().rposition(|f| Handoff::is_marker_name(&f.function)).unwrap_or(usize::MAX);
            let mut shown = 0;
            for (i, f) in e.frames.iter().enumerate() {
                if i >= FRAMES_SHOWN && !(handoff..handoff.saturating_add(FRAMES_SHOWN)).contains(&i) {
                    continue;
                }
                if i > shown {
                    let _ = writeln!(s, "      ... {} frames", i - shown);
                }
                shown = i + 1;
                let place = match (&f.file, f.line) {
                    // A JS frame's name has its place (`JS:f /srv/app.js:12:5`).
                    _ if f.module == crate::inspector::sampling::JS_MODULE => String::new(),
                    (Some(file), Some(line)) => format!(" ({file}:{line})"),
                    _ => format!(" [{}]", f.module),
                };
                let inl = if f.inlined { " (inlined)" } else { "" };
                let _ = writeln!(s, "      {}{place}{inl}", f.function);
            }
            if e.frames.len() > shown {
                let _ = writeln!(s, "      ... {} more frames", e.frames.len() - shown);
            }
        }
        if !runtime.is_empty() {
            let value: u64 = runtime.iter().map(|e| super::flame::value(e)).sum();
            let held = if kind.is_handle() { format!("{value} open") } else { human_bytes(value) };
            let _ = writeln!(
                s,
                "  + {held} in {} runtime {} (C/C++ runtime, standard-library start-up, dynamic loader: not the program's code; all in report.json)",
                runtime.len(),
                plural(runtime.len() as u64, "stack", "stacks")
            );
        }
    }
    let a = &report.accuracy;
    let _ = writeln!(s);
    let _ = writeln!(s, "Accuracy:");
    if !a.lenses.is_empty() {
        let c = &a.profiler_cost;
        let _ = writeln!(
            s,
            "  lenses: {} | first-touch page faults {} ({} continuing a run, recorded without a stack) | profiler CPU {:.2} s user {:.2} s system ({:.2} s before recording, mostly the kernel verifying the eBPF programs), peak RSS {}",
            a.lenses,
            a.page_faults,
            a.fault_run_pages,
            c.cpu_user_s,
            c.cpu_system_s,
            c.cpu_before_recording_s,
            human_bytes(c.peak_rss_bytes)
        );
    }
    if a.sample_bytes > 0 {
        let _ = writeln!(
            s,
            "  heap sampled about once per {}: bytes are scaled estimates, counts are sampled blocks | calls not sampled {} | sampled-block map full {}",
            human_bytes(a.sample_bytes),
            a.unsampled_calls,
            a.sampled_map_full
        );
    }
    let calls: Vec<String> = a.calls_seen.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(s, "  calls seen: {}", calls.join(" "));
    let _ = writeln!(
        s,
        "  events {} | lost to full ring buffer {} | undecodable {} | stack captures failed {} | stacks cut at a frame without frame pointer {}",
        a.events_received, a.ringbuf_drops, a.undecodable_events, a.stack_failures, a.truncated_stacks
    );
    let _ = writeln!(
        s,
        "  in-flight map full: allocator {} syscall {} | nested allocator calls {} | failed allocations {} | unmatched returns {} | missed returns {} | scratch records busy {} | own-read page faults {} | threadpool requests forgotten {} | handle creators forgotten {} | pages after a lost first touch {}",
        a.inflight_map_full,
        a.inflight_syscall_map_full,
        a.nested_calls,
        a.failed_allocations,
        a.unmatched_returns,
        a.missed_returns,
        a.scratch_busy,
        a.own_read_faults,
        a.threadpool_requests_forgotten,
        a.handle_creators_forgotten,
        a.fault_runs_unmatched
    );
    let l = &a.ledger;
    let _ = writeln!(
        s,
        "  frees of unknown addresses {} (and {} by the C library itself: thread-cache teardown) | reallocs of unknown blocks {} | overwritten blocks {} | untracked unmapped {} | closes of unknown fds {} | dups of unknown fds {} | reused fds {} | repeated page faults {}",
        l.unknown_frees,
        l.c_library_frees,
        l.unknown_reallocs,
        l.overwritten_blocks,
        human_bytes(l.untracked_unmap_bytes),
        l.unknown_closes,
        l.unknown_dups,
        l.reused_fds,
        l.repeated_faults
    );
    let js = &a.js_naming;
    if js.functions_named + js.functions_unreadable > 0 {
        let _ = writeln!(
            s,
            "  JS functions named from V8's heap: {} ({} not readable), read in {:.1} ms (V8's layout: {:.1} ms)",
            js.functions_named, js.functions_unreadable, js.read_ms, js.layout_ms
        );
    }
    if a.unnamed_jit_frames > 0 {
        let _ = writeln!(
            s,
            "  {} JIT frames unnamed (shown as [jit]+0x..., or JS:[function not readable] when V8's objects could not be read)",
            a.unnamed_jit_frames
        );
        if report.stacks.iter().any(|e| e.command.contains("node")) {
            let _ = writeln!(
                s,
                "  hint: V8 code outside JS functions (stubs, regular expressions), and JS in a node without V8's metadata, is named only by a perf map: node --perf-basic-prof"
            );
        }
    }
    if a.perf_map_unread_bytes > 0 {
        let _ = writeln!(
            s,
            "  perf map bytes past the {} read bound, not read: {}",
            human_bytes(crate::stacks::perfmap::MAX_TOTAL),
            human_bytes(a.perf_map_unread_bytes)
        );
    }
    if a.perf_map_garbage_lines > 0 {
        let _ = writeln!(s, "  perf map lines skipped as malformed: {}", a.perf_map_garbage_lines);
    }
    for skipped in &a.probes_skipped {
        let _ = writeln!(s, "  not probed: {skipped}");
    }
    let u = &a.unwind_tables;
    let _ = writeln!(
        s,
        "  unwind tables: {} modules, {} rows ({}) for {} of code, built in {:.0} ms",
        u.modules,
        u.rows,
        human_bytes(u.row_bytes),
        human_bytes(u.code_bytes),
        u.build_ms
    );
    for module in &u.modules_without_tables {
        let _ = writeln!(s, "  walked by frame pointer (no table): {module}");
    }
    if u.mappings_over_limit > 0 {
        let _ = writeln!(
            s,
            "  walked by frame pointer: {} executable mappings past the per-process limit",
            u.mappings_over_limit
        );
    }
    for cut in &a.incomplete_stacks {
        let _ = writeln!(s, "  incomplete stacks: {} {} at {}", cut.events, cut.reason, cut.captured_at);
    }
    s
}

fn plural(count: u64, one: &'static str, many: &'static str) -> &'static str {
    if count == 1 {
        one
    } else {
        many
    }
}

fn duration(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Every counted loss of data, for the headline; `None` when nothing was lost.
fn losses(report: &Report) -> Option<String> {
    let a = &report.accuracy;
    let counted = [
        (a.ringbuf_drops, "events lost to a full ring buffer"),
        (a.scratch_busy, "events lost to busy scratch records"),
        (a.inflight_map_full + a.inflight_syscall_map_full, "calls lost to a full in-flight map"),
        (a.sampled_map_full, "sampled blocks lost to a full map"),
        (a.missed_returns, "allocator calls whose return was missed"),
        (a.stack_failures, "stacks not captured"),
        (a.incomplete_stacks.iter().map(|c| c.events).sum(), "stacks cut short (marked in the stack)"),
        (a.undecodable_events, "undecodable events"),
        (a.late_processes, "processes found already running (their earlier allocations unseen)"),
        (
            a.threadpool_requests_forgotten,
            "threadpool requests forgotten (their opens not joined to the requester)",
        ),
        (
            a.handle_creators_forgotten,
            "socket, pipe and file-stream creators forgotten (their fds not joined to the JS that created them)",
        ),
        (a.fault_runs_unmatched, "pages touched after a lost first touch (not counted as resident)"),
    ];
    let parts: Vec<String> =
        counted.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Frame;

    /// A stack continued past a handoff deep down (a stream's fd, then the
    /// JS that created the stream): the first frames, then the handoff's.
    #[test]
    fn frames_from_a_deep_handoff_are_shown() {
        let mut report = crate::report::sample::report();
        let entry = &mut report.stacks[0];
        entry.frames = (0..30).map(|i| Frame::named(&format!("own_{i}"))).collect();
        entry.frames.push(Frame::named(Handoff::Stream.name()));
        entry.frames.extend((0..20).map(|i| Frame::named(&format!("creator_{i}"))));
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let at = |needle: &str| {
            let module = format!("{needle} [");
            lines
                .iter()
                .position(|l| *l == needle || l.starts_with(&module))
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        assert_eq!(at("... 14 frames"), at("own_15") + 1);
        assert_eq!(at(Handoff::Stream.name()), at("... 14 frames") + 1);
        assert_eq!(at("creator_14"), at(Handoff::Stream.name()) + 15);
        assert_eq!(at("... 5 more frames"), at("creator_14") + 1);
        assert!(!text.contains("own_16 ") && !text.contains("creator_15 "), "{text}");
    }
}
