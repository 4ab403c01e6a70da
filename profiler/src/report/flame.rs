//! Folded stacks (Brendan Gregg's format: root first, `;`-separated, then the
//! value) and inferno flamegraphs of the same data, one per kind.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};

use super::{model::StackEntry, Report};
use crate::kind::Kind;

fn frame_name(name: &str) -> String {
    super::model::frame_name(name)
}

/// `root;...;leaf` for an entry (its frames are stored innermost first).
fn folded_path(entry: &StackEntry) -> String {
    if entry.frames.is_empty() {
        return UNAVAILABLE.to_string();
    }
    entry.frames.iter().rev().map(|f| frame_name(&f.function)).collect::<Vec<_>>().join(";")
}

const UNAVAILABLE: &str = "[stack unavailable]";

/// The value a kind is measured in: bytes, or open handles.
pub fn value(entry: &StackEntry) -> u64 {
    if entry.kind.is_handle() {
        entry.count
    } else {
        entry.bytes
    }
}

/// How flamegraphs are rooted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// Stacks of all processes merged.
    #[default]
    None,
    /// One tower per process, rooted at `command [pid]`.
    Process,
    /// One tower per memory class: `[v8-heap]`, `[external]`, `[native]`.
    Class,
}

/// Folded lines for one kind, identical paths merged, sorted.
pub fn folded(report: &Report, kind: Kind, group: GroupBy) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for e in report.entries(kind) {
        let path = match group {
            GroupBy::None => folded_path(e),
            GroupBy::Process => format!("{} [{}];{}", frame_name(&e.command), e.pid, folded_path(e)),
            GroupBy::Class => {
                format!("[{}];{}", e.class.as_deref().unwrap_or(e.kind.name()), folded_path(e))
            }
        };
        *merged.entry(path).or_default() += value(e);
    }
    merged.into_iter().filter(|(_, v)| *v > 0).map(|(p, v)| format!("{p} {v}")).collect()
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A growth rate for people: `+1.2 MiB/min` for memory kinds, `+1.5/min` for handle kinds.
pub fn rate_per_min(kind: Kind, per_min: f64) -> String {
    if kind.is_handle() {
        format!("{per_min:+.1}/min")
    } else {
        format!("{}{}/min", if per_min < 0.0 { "-" } else { "+" }, human_bytes(per_min.abs() as u64))
    }
}

/// A frame for people: `function (file.c:12)`, or the function alone.
pub fn frame_label(f: &crate::report::model::Frame) -> String {
    match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            format!("{} ({}:{line})", f.function, file.rsplit('/').next().unwrap_or(file))
        }
        _ => f.function.clone(),
    }
}

/// Renders the flamegraph SVG of one kind from its folded lines.
pub fn svg(report: &Report, kind: Kind, lines: &[String]) -> Result<Vec<u8>> {
    let total = report.totals.get(&kind).copied().unwrap_or_default();
    let handles = kind.is_handle();
    let mut options = Options::default();
    options.title = if handles {
        format!(
            "{kind}: {} open handles - {} (pid {})",
            total.count, report.target.command, report.target.pid
        )
    } else {
        format!(
            "{kind}: {} outstanding in {} {} - {} (pid {})",
            human_bytes(total.bytes),
            total.count,
            kind.items(total.count),
            report.target.command,
            report.target.pid
        )
    };
    options.count_name = if handles { "handles".into() } else { "bytes".into() };
    options.colors = Palette::Basic(if handles { BasicPalette::Io } else { BasicPalette::Mem });
    // Colors by function name: the same function has the same color in every flamegraph and run.
    options.hash = true;
    options.subtitle = Some(format!("outstanding when recording ended ({})", report.end_reason));
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .with_context(|| format!("rendering the {kind} flamegraph"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::report;

    #[test]
    fn folded_is_root_first_merged_and_typed_by_kind() {
        let r = report();
        assert_eq!(
            folded(&r, Kind::Heap, GroupBy::None),
            vec!["[stack unavailable] 50", "_start;main;leak_a 250"]
        );
        assert_eq!(folded(&r, Kind::Sockets, GroupBy::None), vec!["main;leak_sock:x 2"]);
        assert_eq!(folded(&r, Kind::Sockets, GroupBy::Process), vec!["demo [1];main;leak_sock:x 2"]);
    }

    #[test]
    fn svg_is_rendered_with_names() {
        let r = report();
        let svg =
            String::from_utf8(svg(&r, Kind::Heap, &folded(&r, Kind::Heap, GroupBy::None)).unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("leak_a"));
        assert!(svg.contains("300 B outstanding"));
    }
}
