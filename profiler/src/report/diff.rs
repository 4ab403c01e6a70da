//! Comparing two reports (two snapshots of one run, or two runs): per-stack
//! deltas, identified by kind and function names so they survive rebuilds
//! and address-space layout changes, and a differential flamegraph.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    flame::{self, GroupBy},
    Report,
};
use crate::kind::Kind;

/// How one stack changed between two reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StackDelta {
    pub kind: Kind,
    /// The stack's identity ([`StackEntry::identity`](super::model::StackEntry::identity)).
    pub stack: String,
    /// Bytes (memory kinds) or open handles.
    pub before: u64,
    pub after: u64,
    pub delta: i64,
    /// Outstanding blocks, mappings or handles.
    pub before_count: u64,
    pub after_count: u64,
}

/// Frames of a stack shown in the text table, leaf first.
const FRAMES_SHOWN: usize = 8;

/// Per-stack deltas, largest growth first; unchanged stacks omitted.
pub fn diff(before: &Report, after: &Report) -> Vec<StackDelta> {
    let index = |r: &Report| {
        let mut m: BTreeMap<(Kind, String), (u64, u64)> = BTreeMap::new();
        for e in &r.stacks {
            let sum = m.entry((e.kind, e.identity())).or_default();
            sum.0 = sum.0.saturating_add(flame::value(e));
            sum.1 = sum.1.saturating_add(e.count);
        }
        m
    };
    let (a, b) = (index(before), index(after));
    let mut keys: Vec<&(Kind, String)> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut deltas: Vec<StackDelta> = keys
        .into_iter()
        .map(|k| {
            let ((x, xn), (y, yn)) =
                (a.get(k).copied().unwrap_or_default(), b.get(k).copied().unwrap_or_default());
            StackDelta {
                kind: k.0,
                stack: k.1.clone(),
                before: x,
                after: y,
                delta: (i128::from(y) - i128::from(x)).clamp(i64::MIN.into(), i64::MAX.into()) as i64,
                before_count: xn,
                after_count: yn,
            }
        })
        .filter(|d| d.delta != 0)
        .collect();
    deltas.sort_by(|x, y| y.delta.cmp(&x.delta).then_with(|| x.stack.cmp(&y.stack)));
    deltas
}

/// The deltas as a table for people, `top` rows per kind.
pub fn text(deltas: &[StackDelta], top: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut kinds: Vec<Kind> = deltas.iter().map(|d| d.kind).collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        s.push_str("no stack changed\n");
    }
    for kind in kinds {
        let rows: Vec<&StackDelta> = deltas.iter().filter(|d| d.kind == kind).collect();
        let handles = kind.is_handle();
        let amount = |v: u64| if handles { format!("{v}") } else { flame::human_bytes(v) };
        let signed = |v: i64| format!("{}{}", if v < 0 { "-" } else { "+" }, amount(v.unsigned_abs()));
        let total = rows.iter().fold(0i64, |t, d| t.saturating_add(d.delta));
        let unit = if handles { " handles" } else { "" };
        let _ = writeln!(s, "{kind}: {}{unit} overall, {} stacks changed", signed(total), rows.len());
        for d in rows.iter().take(top) {
            let calls = i128::from(d.after_count) - i128::from(d.before_count);
            let verb = if d.delta >= 0 { "grew" } else { "shrank" };
            let over = if handles { String::new() } else { format!(" over {calls:+} blocks") };
            let _ = writeln!(
                s,
                "  {verb} {}{unit}{over}: {} -> {}",
                signed(d.delta),
                amount(d.before),
                amount(d.after)
            );
            let frames: Vec<&str> = d.stack.rsplit(';').collect();
            for f in frames.iter().take(FRAMES_SHOWN) {
                let _ = writeln!(s, "      {f}");
            }
            if frames.len() > FRAMES_SHOWN {
                let _ = writeln!(
                    s,
                    "      ... {} more frames (diff.json has the whole stack)",
                    frames.len() - FRAMES_SHOWN
                );
            }
        }
    }
    s
}

/// A differential flamegraph (inferno) of one kind: frames are sized by the
/// second report and colored by how much they grew (red) or shrank (blue);
/// titled with both inputs (`names`) and their totals.
pub fn svg(before: &Report, after: &Report, kind: Kind, names: (&str, &str)) -> Result<Vec<u8>> {
    let a = flame::folded(before, kind, GroupBy::None).join("\n");
    let b = flame::folded(after, kind, GroupBy::None).join("\n");
    let mut differential = Vec::new();
    inferno::differential::from_readers(Default::default(), a.as_bytes(), b.as_bytes(), &mut differential)
        .context("computing the differential stacks")?;
    let mut options = inferno::flamegraph::Options::default();
    let handles = kind.is_handle();
    let total = |r: &Report| r.entries(kind).fold(0u64, |t, e| t.saturating_add(flame::value(e)));
    let amount = |v: u64| if handles { format!("{v} handles") } else { flame::human_bytes(v) };
    options.title = format!("{kind}: {} -> {}", names.0, names.1);
    options.subtitle = Some(format!(
        "{} -> {}; size: second report; red: grew, blue: shrank",
        amount(total(before)),
        amount(total(after))
    ));
    options.count_name = if handles { "handles".into() } else { "bytes".into() };
    let text = String::from_utf8_lossy(&differential).into_owned();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, text.lines(), &mut out)
        .with_context(|| format!("rendering the {kind} differential flamegraph"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{Accuracy, Frame, StackEntry, TargetInfo};

    fn report(entries: &[(&str, &str, u64)]) -> Report {
        Report {
            schema_version: 1,
            profiler_version: "0".into(),
            target: TargetInfo { pid: 1, command: "x".into(), mode: "launch".into(), libc: String::new() },
            started_at: 0,
            duration_s: 1.0,
            end_reason: "t".into(),
            target_exit: None,
            warmup: None,
            selection: None,
            totals: Default::default(),
            series: None,
            status: None,
            memory_split: Default::default(),
            cgroup: None,
            processes: vec![],
            handles: Default::default(),
            held_at_start: None,
            v8_heap: None,
            v8_heap_snapshots: None,
            v8_out_of_memory: Vec::new(),
            hints: Vec::new(),
            modules: Vec::new(),
            stacks: entries
                .iter()
                .map(|(kind, leaf, v)| StackEntry {
                    kind: kind.parse().unwrap(),
                    pid: 1,
                    command: "x".into(),
                    bytes: if *kind == "sockets" { 0 } else { *v },
                    count: if *kind == "sockets" { *v } else { 1 },
                    mean_age_s: 0.0,
                    api: "malloc".into(),
                    frames: vec![Frame::named(leaf), Frame::named("main")],
                    trend: None,
                    old_share: 0.0,
                    series: vec![],
                    class: None,
                    sites: 1,
                    site_offsets: vec![],
                    fds: Vec::new(),
                })
                .collect(),
            accuracy: Accuracy::default(),
        }
    }

    #[test]
    fn deltas_are_exact_and_ranked_by_growth() {
        let a = report(&[
            ("heap", "grows", 100),
            ("heap", "shrinks", 500),
            ("heap", "same", 7),
            ("sockets", "conn", 2),
        ]);
        let b = report(&[
            ("heap", "grows", 400),
            ("heap", "shrinks", 100),
            ("heap", "same", 7),
            ("heap", "new", 50),
            ("sockets", "conn", 5),
        ]);
        let d = diff(&a, &b);
        let rows: Vec<(&str, i64)> = d.iter().map(|x| (x.stack.as_str(), x.delta)).collect();
        assert_eq!(
            rows,
            vec![("main;grows", 300), ("main;new", 50), ("main;conn", 3), ("main;shrinks", -400)]
        );
        let svg =
            String::from_utf8(svg(&a, &b, Kind::Heap, ("a/report.json", "b/report.json")).unwrap()).unwrap();
        assert!(svg.contains("grows"));
        assert!(
            svg.contains("heap: a/report.json -&gt; b/report.json")
                || svg.contains("heap: a/report.json -> b/report.json"),
            "title"
        );
        assert!(
            svg.contains("607 B -&gt; 557 B") || svg.contains("607 B -> 557 B"),
            "totals in the subtitle"
        );
    }

    #[test]
    fn the_table_speaks_units_counts_and_whole_stacks() {
        let a = report(&[("heap", "grows", 100), ("sockets", "conn", 2)]);
        let b = report(&[("heap", "grows", 2048), ("heap", "grows", 2048), ("sockets", "conn", 5)]);
        let t = text(&diff(&a, &b), 10);
        assert!(t.contains("heap: +3.9 KiB overall, 1 stacks changed"), "{t}");
        assert!(
            t.contains("  grew +3.9 KiB over +1 blocks: 100 B -> 4.0 KiB\n      grows\n      main\n"),
            "{t}"
        );
        assert!(t.contains("sockets: +3 handles overall"), "{t}");
        assert!(t.contains("  grew +3 handles: 2 -> 5\n"), "{t}");
    }

    #[test]
    fn deltas_saturate_instead_of_wrapping() {
        let a = report(&[("heap", "huge", u64::MAX), ("heap", "huge", u64::MAX), ("heap", "gone", u64::MAX)]);
        let b = report(&[("heap", "new", u64::MAX)]);
        let d = diff(&a, &b);
        let rows: Vec<(&str, i64)> = d.iter().map(|x| (x.stack.as_str(), x.delta)).collect();
        assert_eq!(rows, vec![("main;new", i64::MAX), ("main;gone", i64::MIN), ("main;huge", i64::MIN)]);
    }
}
