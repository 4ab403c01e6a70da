//! Choosing and ranking a report's stacks: the order `record` writes them in
//! (`--sort`), and the views `profiler report` takes of a saved report
//! (`--sort`, `--focus`/`--ignore` by frame regex, `--min-bytes`, `--pid`).

use std::collections::HashMap;

use regex::Regex;

use super::origin::is_runtime_stack;
use super::{
    flame,
    model::{ProcessSummary, StackEntry, Total},
    Report,
};
use crate::{kind::Kind, trend::Verdict};

/// How stacks are ranked within each kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Fastest growing first; stacks with too few samples for a trend follow, by size.
    #[default]
    Growth,
    /// Most outstanding bytes (or handles) first.
    Size,
    /// Most outstanding blocks first.
    Count,
}

/// Ranks entries: the program first. Kinds go by how much the program's
/// own code holds (memory kinds by bytes, then handle kinds by handles;
/// kinds only the runtime holds last); within a kind the program's stacks
/// come first, ranked by `by`, then the runtime's (C/C++ runtime, standard
/// library start-up, loader: see [`origin`](super::origin)). By growth, only
/// stacks with enough samples for a trend are ranked by it; the others
/// follow, by size.
pub fn sort_entries(entries: &mut [StackEntry], by: SortBy) {
    let runtime: Vec<bool> = entries.iter().map(|e| is_runtime_stack(&e.frames)).collect();
    let mut own: HashMap<Kind, u64> = HashMap::new();
    for (e, _) in entries.iter().zip(&runtime).filter(|(_, r)| !**r) {
        *own.entry(e.kind).or_default() += flame::value(e);
    }
    let kind_rank = |e: &StackEntry| {
        let held = own.get(&e.kind).copied().unwrap_or(0);
        (held == 0, e.kind.is_handle(), std::cmp::Reverse(held), Kind::ALL.iter().position(|k| *k == e.kind))
    };
    let known = |e: &StackEntry| e.trend.is_some_and(|t| t.verdict != Verdict::Unknown);
    let key = |e: &StackEntry| -> (f64, u64) {
        match by {
            // The larger of the slope and the rise that stayed: a step leak ranks by its height.
            SortBy::Growth if known(e) => {
                (e.trend.map_or(0.0, |t| t.growth_per_min.max(t.retained_per_min)), flame::value(e))
            }
            SortBy::Growth | SortBy::Size => (flame::value(e) as f64, e.count),
            SortBy::Count => (e.count as f64, flame::value(e)),
        }
    };
    let unranked = |e: &StackEntry| by == SortBy::Growth && !known(e);
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (&entries[i], &entries[j]);
        let (ka, kb) = (key(a), key(b));
        kind_rank(a)
            .cmp(&kind_rank(b))
            .then(runtime[i].cmp(&runtime[j]))
            .then(unranked(a).cmp(&unranked(b)))
            .then(kb.0.total_cmp(&ka.0))
            .then(kb.1.cmp(&ka.1))
    });
    let sorted: Vec<StackEntry> = order.into_iter().map(|i| entries[i].clone()).collect();
    entries.clone_from_slice(&sorted);
}

/// The report's kinds in the order its stacks rank them (the program's
/// first), then those with nothing outstanding.
pub fn kind_order(report: &Report) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for k in report.stacks.iter().map(|e| e.kind).chain(report.totals.keys().copied()) {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    kinds
}

/// A view of a report: which stacks, in which order.
#[derive(Debug, Default)]
pub struct Selection {
    pub sort: Option<SortBy>,
    /// Keep stacks with a frame (function or file) matching this.
    pub focus: Option<Regex>,
    /// Drop stacks with a frame matching this.
    pub ignore: Option<Regex>,
    /// Drop memory stacks holding fewer bytes.
    pub min_bytes: u64,
    /// Keep one process's stacks.
    pub pid: Option<u32>,
}

impl Selection {
    fn filters(&self) -> bool {
        self.focus.is_some() || self.ignore.is_some() || self.min_bytes > 0 || self.pid.is_some()
    }

    fn keeps(&self, e: &StackEntry) -> bool {
        let matches = |re: &Regex| {
            e.frames
                .iter()
                .any(|f| re.is_match(&f.function) || f.file.as_deref().is_some_and(|p| re.is_match(p)))
        };
        self.pid.is_none_or(|pid| e.pid == pid)
            && self.focus.as_ref().is_none_or(matches)
            && !self.ignore.as_ref().is_some_and(matches)
            && (e.kind.is_handle() || e.bytes >= self.min_bytes)
    }

    /// What the selection is, for the report's header.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(re) = &self.focus {
            parts.push(format!("--focus {:?}", re.as_str()));
        }
        if let Some(re) = &self.ignore {
            parts.push(format!("--ignore {:?}", re.as_str()));
        }
        if self.min_bytes > 0 {
            parts.push(format!("--min-bytes {}", self.min_bytes));
        }
        if let Some(pid) = self.pid {
            parts.push(format!("--pid {pid}"));
        }
        parts.join(" ")
    }

    /// Applies the view: drops the stacks it excludes (totals and processes
    /// then count only the stacks kept, and the report says so) and re-ranks.
    pub fn apply(&self, report: &mut Report) {
        if self.filters() {
            let before = report.stacks.len();
            report.stacks.retain(|e| self.keeps(e));
            for total in report.totals.values_mut() {
                *total = Total::default();
            }
            for e in &report.stacks {
                let t = report.totals.entry(e.kind).or_default();
                t.bytes += e.bytes;
                t.count += e.count;
            }
            let kept: std::collections::BTreeSet<u32> = report.stacks.iter().map(|e| e.pid).collect();
            report.processes.retain(|p| kept.contains(&p.pid));
            for p in &mut report.processes {
                *p = summarize(p, &report.stacks);
            }
            report.selection = Some(format!(
                "{} ({} of {before} stacks; totals are of these)",
                self.describe(),
                report.stacks.len()
            ));
        }
        if let Some(by) = self.sort {
            sort_entries(&mut report.stacks, by);
        }
    }
}

fn summarize(p: &ProcessSummary, stacks: &[StackEntry]) -> ProcessSummary {
    let mut totals = std::collections::BTreeMap::<Kind, Total>::new();
    for e in stacks.iter().filter(|e| e.pid == p.pid) {
        let t = totals.entry(e.kind).or_default();
        t.bytes += e.bytes;
        t.count += e.count;
    }
    ProcessSummary { totals, ..p.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focus_ignore_and_min_bytes_keep_the_right_stacks_and_recount_totals() {
        let mut report = crate::report::sample::report();
        Selection { focus: Some(Regex::new("^leak_").unwrap()), ..Default::default() }.apply(&mut report);
        assert_eq!(report.stacks.len(), 3, "two heap stacks and the socket stack pass through leak_*");
        assert_eq!(report.totals[&Kind::Heap], Total { bytes: 250, count: 2 });
        assert!(report.selection.as_deref().unwrap().contains("3 of 4 stacks"));

        let mut report = crate::report::sample::report();
        Selection { ignore: Some(Regex::new("sock").unwrap()), min_bytes: 120, ..Default::default() }
            .apply(&mut report);
        let kept: Vec<u64> = report.stacks.iter().map(|e| e.bytes).collect();
        assert_eq!(kept, [150]);
        assert_eq!(report.totals[&Kind::Sockets], Total::default());

        let mut report = crate::report::sample::report();
        Selection { sort: Some(SortBy::Size), ..Default::default() }.apply(&mut report);
        let sizes: Vec<u64> = report.entries(Kind::Heap).map(|e| e.bytes).collect();
        assert_eq!(sizes, [150, 100, 50]);
        assert_eq!(kind_order(&report), [Kind::Heap, Kind::Sockets]);
        assert!(report.selection.is_none(), "sorting alone changes no total");
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;
    use crate::report::origin::tests::frames;

    #[test]
    fn the_programs_kinds_and_stacks_come_first_and_the_runtimes_after() {
        let mut report = crate::report::sample::report();
        let loader = frames(&[
            ("_dl_map_segments", "ld-linux-x86-64.so.2"),
            ("_dl_start_user", "ld-linux-x86-64.so.2"),
        ]);
        let mut mapping = report.stacks[0].clone();
        mapping.kind = Kind::FileMmap;
        mapping.bytes = 1 << 20;
        mapping.frames = loader.clone();
        let mut brk = report.stacks[0].clone();
        brk.kind = Kind::Brk;
        brk.bytes = 4096;
        let mut runtime_heap = report.stacks[0].clone();
        runtime_heap.bytes = 1 << 20;
        runtime_heap.frames = loader;
        report.stacks.extend([mapping, brk, runtime_heap]);
        sort_entries(&mut report.stacks, SortBy::Size);
        // heap: the program holds 300 B; brk 4 KiB; file-mmap only the loader.
        assert_eq!(kind_order(&report), [Kind::Brk, Kind::Heap, Kind::Sockets, Kind::FileMmap]);
        let heap: Vec<u64> = report.entries(Kind::Heap).map(|e| e.bytes).collect();
        assert_eq!(heap, [150, 100, 50, 1 << 20], "the runtime's megabyte after the program's stacks");
    }
}
