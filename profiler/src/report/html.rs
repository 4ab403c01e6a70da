//! `index.html`: one page per report that opens offline, with nothing
//! fetched from anywhere (no script, style, font or image from elsewhere):
//! the headline, a chart per kind of the outstanding total and the top stacks
//! over time (from the series, with their verdicts), the top stacks, every
//! kind's flamegraph (embedded; the interactive `<kind>.svg` beside it), the
//! open handles, the full text report with the accuracy counters, and links
//! to the raw files.

use std::fmt::Write as _;

use base64::Engine as _;

use super::{flame::human_bytes, Report};
use crate::kind::Kind;

/// Stacks drawn per chart, besides the total.
const CHART_STACKS: usize = 4;
/// Stacks listed per kind in the table.
const TABLE_STACKS: usize = 10;
const COLORS: [&str; 5] = ["#222222", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn amount(kind: Kind, value: u64) -> String {
    if kind.is_handle() {
        format!("{value} open")
    } else {
        human_bytes(value)
    }
}

/// A line chart of `lines` (label, values at `times`), as inline SVG.
fn chart(kind: Kind, times: &[f64], lines: &[(String, Vec<u64>)]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 80.0;
    const BOTTOM: f64 = 24.0;
    let max = lines.iter().flat_map(|(_, v)| v.iter().copied()).max().unwrap_or(0).max(1) as f64;
    let (t0, t1) = (times.first().copied().unwrap_or(0.0), times.last().copied().unwrap_or(1.0));
    let span = (t1 - t0).max(1e-9);
    let x = |t: f64| LEFT + (t - t0) / span * (W - LEFT - 10.0);
    let y = |v: u64| 10.0 + (1.0 - v as f64 / max) * (H - BOTTOM - 10.0);
    let mut s = format!(
        "<svg class=\"chart\" data-kind=\"{}\" viewBox=\"0 0 {W} {}\" width=\"{W}\" role=\"img\" aria-label=\"{} over time\">",
        esc(kind.name()),
        H + 18.0 * lines.len() as f64,
        esc(kind.name())
    );
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\"/><line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{0}\" stroke=\"#999\"/>",
        H - BOTTOM,
        W - 10.0
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"16\" text-anchor=\"end\" font-size=\"11\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">0</text>",
        LEFT - 4.0,
        esc(&amount(kind, max as u64)),
        LEFT - 4.0,
        H - BOTTOM
    );
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{0}\" font-size=\"11\">{t0:.0} s</text><text x=\"{1}\" y=\"{0}\" text-anchor=\"end\" font-size=\"11\">{t1:.0} s</text>",
        H - 8.0,
        W - 10.0
    );
    for (i, (label, values)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> =
            times.iter().zip(values).map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\" points=\"{}\"/>",
            if i == 0 { 2.5 } else { 1.5 },
            points.join(" ")
        );
        let _ = write!(
            s,
            "<rect x=\"{LEFT}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            H + 18.0 * i as f64 - 4.0,
            LEFT + 16.0,
            H + 18.0 * i as f64 + 5.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// The page. `flamegraphs` are the `<kind>.svg` files written beside it,
/// `files` the names of every file in the directory (linked).
pub fn render(report: &Report, flamegraphs: &[(Kind, Vec<u8>)], files: &[String], top: usize) -> String {
    let t = &report.target;
    let title = if t.mode == "cgroup" {
        format!("Leak report for {}", t.command)
    } else {
        format!("Leak report for pid {} ({})", t.pid, t.command)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}} table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}} td.n{{text-align:right}}\
         .status{{font-size:16px;font-weight:600}} img.flamegraph{{width:100%;border:1px solid #ddd}}\
         pre{{background:#f6f6f6;padding:8px;overflow:auto}} .frames{{font-family:monospace;font-size:12px}}\
         </style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    let _ = write!(s, "<p>Recorded {:.1} s; ended: {}.", report.duration_s, esc(&report.end_reason));
    if let Some(w) = &report.warmup {
        let _ = write!(s, " Warm-up: {}.", esc(w));
    }
    if let Some(sel) = &report.selection {
        let _ = write!(s, " Showing: {}.", esc(sel));
    }
    s.push_str("</p>");
    if let Some(st) = &report.status {
        let limit = match (st.limit_bytes, st.time_to_limit_s) {
            (Some(l), Some(secs)) => format!("; limit {}, ~{:.0} s to it", human_bytes(l), secs),
            (Some(l), None) => format!("; limit {}", human_bytes(l)),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "<p class=\"status\">Status: {} ({}, now {}{limit})</p>",
            esc(&st.level),
            esc(&super::text::growth(st)),
            human_bytes(st.current_bytes)
        );
    }

    s.push_str("<h2>Outstanding</h2><table><tr><th>kind</th><th>outstanding</th><th>count</th></tr>");
    let kinds = super::select::kind_order(report);
    for (kind, total) in kinds
        .iter()
        .map(|k| (*k, report.totals.get(k).copied().unwrap_or_default()))
        .filter(|(_, t)| t.count > 0)
    {
        let value = if kind.is_handle() { total.count } else { total.bytes };
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(kind.name()),
            amount(kind, value),
            total.count
        );
    }
    s.push_str("</table>");

    if let Some(series) = report.series.as_ref().filter(|s| s.times.len() >= 2) {
        s.push_str("<h2>Over time</h2>");
        for kind in super::select::kind_order(report) {
            let Some(totals) = series.totals.get(&kind).filter(|v| v.iter().any(|x| *x > 0)) else {
                continue;
            };
            let mut lines = vec![(format!("{kind} total"), totals.clone())];
            for e in report.entries(kind).filter(|e| e.series.len() == series.times.len()).take(CHART_STACKS)
            {
                let leaf = super::origin::naming_frame(&e.frames)
                    .map_or("[stack unavailable]", |f| f.function.as_str());
                let verdict = e.trend.map_or("no trend", |t| t.verdict.name());
                lines.push((format!("{leaf} ({verdict})"), e.series.clone()));
            }
            let _ = write!(s, "<h3>{}</h3>{}", esc(kind.name()), chart(kind, &series.times, &lines));
        }
    }

    if let Some(h) = report.v8_heap.as_ref().filter(|h| h.times.len() >= 2) {
        let to_limit = h.time_to_limit_s.map_or(String::new(), |t| format!(", ~{t:.0} s to the limit"));
        let _ = write!(
            s,
            "<h2>V8 heap</h2><p class=\"status\">{}: {:.1}% of the {} limit used ({:+.2} MiB/min{})</p>{}",
            esc(&h.level),
            h.utilisation_pct,
            human_bytes(h.limit_bytes),
            h.growth_mib_per_min,
            to_limit,
            chart(
                Kind::JsHeap,
                &h.times,
                &[
                    ("V8 heap used".into(), h.used.clone()),
                    ("limit".into(), vec![h.limit_bytes; h.times.len()])
                ]
            )
        );
    }

    s.push_str("<h2>Top stacks</h2>");
    for kind in kinds.iter().copied() {
        let entries: Vec<_> = report.entries(kind).take(TABLE_STACKS.min(top.max(1))).collect();
        if entries.is_empty() {
            continue;
        }
        let _ = write!(
            s,
            "<h3>{}</h3><table class=\"stacks\" data-kind=\"{}\"><tr><th>#</th><th>outstanding</th><th>count</th><th>trend</th><th>stack (allocating frame first)</th></tr>",
            esc(kind.name()),
            esc(kind.name())
        );
        for (i, e) in entries.iter().enumerate() {
            let value = super::flame::value(e);
            let trend = e.trend.map_or(String::new(), |t| {
                format!("{} {}", t.verdict.name(), super::flame::rate_per_min(kind, t.growth_per_min))
            });
            let frames: Vec<String> =
                e.frames.iter().take(8).map(|f| esc(&super::flame::frame_label(f))).collect();
            let _ = write!(
                s,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"frames\">{}</td></tr>",
                i + 1,
                amount(kind, value),
                e.count,
                esc(&trend),
                if frames.is_empty() { "[stack unavailable]".to_string() } else { frames.join("<br>") }
            );
        }
        s.push_str("</table>");
    }

    if !flamegraphs.is_empty() {
        s.push_str("<h2>Flamegraphs</h2>");
    }
    for (kind, svg) in flamegraphs {
        let data = base64::engine::general_purpose::STANDARD.encode(svg);
        let _ = write!(
            s,
            "<h3>{0}</h3><p><a href=\"{0}.svg\">{0}.svg</a> (interactive: search, zoom)</p><img class=\"flamegraph\" alt=\"{0} flamegraph\" data-kind=\"{0}\" src=\"data:image/svg+xml;base64,{data}\">",
            esc(kind.name())
        );
    }

    if !report.handles.is_empty() {
        s.push_str("<h2>Open handles by type</h2><table><tr><th>kind</th><th>type</th><th>opened while recording</th><th>pre-existing</th></tr>");
        for (kind, details) in &report.handles {
            for (detail, c) in details {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(kind.name()),
                    esc(detail),
                    c.open,
                    c.pre_existing
                );
            }
        }
        s.push_str("</table>");
    }

    let _ = write!(
        s,
        "<h2>Full report and accuracy</h2><pre class=\"text-report\">{}</pre>",
        esc(&super::text::render(report, top))
    );
    s.push_str("<h2>Files</h2><ul>");
    for f in files {
        let _ = write!(s, "<li><a href=\"{0}\">{0}</a></li>", esc(f));
    }
    s.push_str("</ul></body></html>\n");
    s
}

/// The page of `profiler diff -o DIR`: the per-stack deltas and each kind's
/// differential flamegraph (red grew, blue shrank), embedded.
pub fn diff_page(names: (&str, &str), deltas_text: &str, flamegraphs: &[(Kind, Vec<u8>)]) -> String {
    let title = format!("Diff: {} -> {}", names.0, names.1);
    let mut s = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}} img.flamegraph{{width:100%;border:1px solid #ddd}}\
         pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body><h1>{0}</h1><h2>Changed stacks</h2><pre class=\"text-report\">{1}</pre>",
        esc(&title),
        esc(deltas_text)
    );
    for (kind, svg) in flamegraphs {
        let data = base64::engine::general_purpose::STANDARD.encode(svg);
        let _ = write!(
            s,
            "<h2>{0}</h2><p><a href=\"diff-{0}.svg\">diff-{0}.svg</a> (interactive; red grew, blue shrank)</p><img class=\"flamegraph\" alt=\"{0} differential flamegraph\" src=\"data:image/svg+xml;base64,{data}\">",
            esc(kind.name())
        );
    }
    s.push_str("<p><a href=\"diff.json\">diff.json</a></p></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_names_the_stacks() {
        let report = crate::report::sample::report();
        let page = render(&report, &[(Kind::Heap, b"<svg/>".to_vec())], &["report.json".into()], 10);
        assert!(page.contains("leak_a"));
        assert!(page.contains("class=\"flamegraph\""));
        assert!(page.contains("<a href=\"report.json\">"));
        for external in ["http:", "https:", "//"] {
            assert!(!page.replace("data:image", "").contains(&format!("src=\"{external}")), "{external}");
        }
        assert!(!page.contains("<script"), "no script at all");
    }

    #[test]
    fn the_chart_scales_every_line_to_the_largest_value() {
        let svg = chart(Kind::Heap, &[0.0, 1.0, 2.0], &[("heap total".into(), vec![0, 50, 100])]);
        assert!(svg.starts_with("<svg class=\"chart\""));
        assert!(svg.contains("80.0,196.0 415.0,103.0 750.0,10.0"), "{svg}");
        assert!(svg.contains(">100 B<"));
    }
}
