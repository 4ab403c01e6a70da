//! The one table of outputs: every format a report is rendered in, its file
//! name, and the renderer behind it. `record` (and its snapshots) writes the
//! whole set with [`write_all`]; `profiler report --format` renders one with
//! [`render`]. Adding a format: a [`Format`] variant, its arm in
//! [`Format::file_name`] and in [`render`], and whether it is per kind.

use anyhow::{bail, Result};

use super::{flame, html, pprof, text, Report};
use crate::{files::output::OutputDir, kind::Kind};

/// A rendering of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The summary for people (report.txt).
    Text,
    /// The model itself (report.json; schema in docs/report-schema.md).
    Json,
    /// The self-contained page (index.html), every kind's flamegraph embedded.
    Html,
    /// One kind's folded stacks (`<kind>.folded`).
    Folded,
    /// One kind's inferno flamegraph (`<kind>.svg`).
    Svg,
    /// One kind's pprof profile, as Go writes heap profiles (`<kind>.pb.gz`).
    Pprof,
}

impl Format {
    /// Every format: those written once per report (index.html last, as it
    /// links the others), and those written once per kind.
    pub const ALL: [Format; 6] =
        [Format::Json, Format::Text, Format::Folded, Format::Svg, Format::Pprof, Format::Html];

    /// Rendered for one kind at a time.
    pub const fn per_kind(self) -> bool {
        matches!(self, Format::Folded | Format::Svg | Format::Pprof)
    }

    /// The file it is written as in a report directory (`kind` names the
    /// per-kind files; the others ignore it).
    pub fn file_name(self, kind: Kind) -> String {
        match self {
            Format::Text => "report.txt".into(),
            Format::Json => "report.json".into(),
            Format::Html => "index.html".into(),
            Format::Folded => format!("{kind}.folded"),
            Format::Svg => format!("{kind}.svg"),
            Format::Pprof => format!("{kind}.pb.gz"),
        }
    }
}

/// What renderers may be told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stacks shown per kind (text and html).
    pub top: usize,
    /// How flamegraphs and folded stacks are rooted.
    pub group_by: flame::GroupBy,
    /// Files linked from the html page (those written beside it).
    pub linked: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { top: 10, group_by: flame::GroupBy::None, linked: Vec::new() }
    }
}

/// Renders one format; `kind` is used by the per-kind formats, which fail
/// with the kinds present when it has nothing outstanding.
pub fn render(report: &Report, format: Format, kind: Kind, options: &Options) -> Result<Vec<u8>> {
    let lines = || -> Result<Vec<String>> {
        let lines = flame::folded(report, kind, options.group_by);
        if lines.is_empty() {
            let present: Vec<&str> = kinds_present(report).map(Kind::name).collect();
            bail!(
                "nothing of kind {:?} is outstanding; kinds present: {} (choose one with --kind)",
                kind.name(),
                if present.is_empty() { "none".to_string() } else { present.join(", ") }
            );
        }
        Ok(lines)
    };
    Ok(match format {
        Format::Text => text::render(report, options.top).into_bytes(),
        Format::Json => serde_json::to_vec_pretty(report)?,
        Format::Html => {
            html::render(report, &flamegraphs(report, options)?, &options.linked, options.top).into_bytes()
        }
        Format::Folded => (lines()?.join("\n") + "\n").into_bytes(),
        Format::Svg => flame::svg(report, kind, &lines()?)?,
        Format::Pprof => {
            lines()?;
            pprof::encode(report, kind)?
        }
    })
}

/// The kinds with a stack holding something.
pub fn kinds_present(report: &Report) -> impl Iterator<Item = Kind> + '_ {
    report.totals.keys().copied().filter(|k| report.entries(*k).any(|e| flame::value(e) > 0))
}

/// Each present kind's flamegraph.
pub fn flamegraphs(report: &Report, options: &Options) -> Result<Vec<(Kind, Vec<u8>)>> {
    let mut out = Vec::new();
    for kind in report.totals.keys().copied() {
        let lines = flame::folded(report, kind, options.group_by);
        if !lines.is_empty() {
            out.push((kind, flame::svg(report, kind, &lines)?));
        }
    }
    Ok(out)
}

/// Writes the whole set into `dir`: every format once, the per-kind ones for
/// each kind with anything outstanding, index.html last (linking the
/// others); removes per-kind files an earlier run left for kinds this report
/// does not have. Returns the names written.
pub fn write_all(report: &Report, dir: &OutputDir, options: &Options) -> Result<Vec<String>> {
    let whole =
        Format::ALL.into_iter().filter(|f| !f.per_kind() && *f != Format::Html).map(|f| (f, Kind::Heap));
    let per_kind = kinds_present(report)
        .flat_map(|kind| Format::ALL.into_iter().filter(|f| f.per_kind()).map(move |f| (f, kind)));
    let mut written = Vec::new();
    let mut svgs = Vec::new();
    for (format, kind) in whole.chain(per_kind) {
        let name = format.file_name(kind);
        let data = render(report, format, kind, options)?;
        dir.write(&name, &data)?;
        written.push(name);
        if format == Format::Svg {
            svgs.push((kind, data));
        }
    }
    // The page embeds the flamegraphs just written rather than rendering them again.
    let page = html::render(report, &svgs, &written, options.top);
    dir.write(&Format::Html.file_name(Kind::Heap), page.as_bytes())?;
    let stale = Format::ALL
        .into_iter()
        .filter(|f| f.per_kind())
        .flat_map(|f| Kind::ALL.map(|k| f.file_name(k)))
        .filter(|n| !written.contains(n));
    for name in stale {
        dir.remove(&name);
    }
    written.push(Format::Html.file_name(Kind::Heap));
    Ok(written)
}
