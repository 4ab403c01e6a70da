//! The live view while recording. On a terminal: a small table redrawn in
//! place (indicatif): elapsed and time left, events and losses every second;
//! the level, the time to the limit, every kind's total and the fastest
//! growing stacks at every `--interval` (from a report built for it).
//! Elsewhere (CI logs, pipes): one plain line per `--interval`, from the
//! ledger's totals and the time series alone (no report is built for it:
//! that would hold the event loop while events pile up). At the end: what is
//! being done.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    collector::Collector,
    kernel::probes::Probes,
    kind::Kind,
    report::{
        flame::{frame_label, human_bytes, rate_per_min},
        model::Status,
        origin::naming_frame,
        Report,
    },
};

/// Stacks listed in the live table.
const STACKS_SHOWN: usize = 5;

pub(super) struct Live {
    /// Present on a terminal.
    bar: Option<ProgressBar>,
    duration: Option<Duration>,
    /// The table of the latest report (terminal), below the header.
    table: String,
    header: String,
    last_events: (Instant, u64),
}

impl Live {
    pub(super) fn new(interactive: bool, duration: Option<Duration>) -> Self {
        let bar = interactive.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
            bar
        });
        Self { bar, duration, table: String::new(), header: String::new(), last_events: (Instant::now(), 0) }
    }

    fn elapsed(&self, elapsed: Duration) -> String {
        match self.duration {
            Some(d) => format!(
                "{:.1}s of {:.0}s ({:.0}s left)",
                elapsed.as_secs_f64(),
                d.as_secs_f64(),
                d.saturating_sub(elapsed).as_secs_f64()
            ),
            None => format!("{:.1}s", elapsed.as_secs_f64()),
        }
    }

    /// Every second: the header (terminal only).
    pub(super) fn tick(&mut self, collector: &Collector, probes: &Probes, elapsed: Duration) {
        let Some(bar) = &self.bar else { return };
        let (since, before) = self.last_events;
        let rate = (collector.events_received - before) as f64 / since.elapsed().as_secs_f64().max(1e-3);
        self.last_events = (Instant::now(), collector.events_received);
        let lost = probes.counters().map(|c| c.ringbuf_drops).unwrap_or(0);
        self.header = format!(
            "recording {} | {rate:.0} events/s | lost {lost} | Ctrl-C ends it",
            self.elapsed(elapsed)
        );
        bar.set_message(format!("{}\n{}", self.header, self.table));
    }

    /// Whether [`update`](Self::update) wants a report (the terminal table).
    pub(super) fn wants_report(&self) -> bool {
        self.bar.is_some()
    }

    /// Every `--interval`: on a terminal, the table of the latest report.
    pub(super) fn update(&mut self, report: &Report) {
        let Some(bar) = &self.bar else { return };
        let mut table = format!("{}\n{}\n", status(report.status.as_ref()), totals(report));
        let stacks = growing(report);
        if !stacks.is_empty() {
            table.push_str("top stacks (kind, outstanding, growth, program frame):\n");
            for line in &stacks {
                table.push_str(&format!("  {line}\n"));
            }
        }
        self.table = table;
        bar.set_message(format!("{}\n{}", self.header, self.table));
    }

    /// Every `--interval` when not on a terminal: one plain line, each
    /// kind's total and growth (robust slope over the recent samples), events and losses.
    pub(super) fn line(
        &self,
        collector: &Collector,
        probes: &Probes,
        now: Option<&Status>,
        elapsed: Duration,
    ) {
        if self.bar.is_some() {
            return;
        }
        let series = &collector.series;
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .filter_map(|k| {
                let total = collector.ledger.total(*k);
                let values = series.totals.get(k)?;
                if total.count == 0 {
                    return None;
                }
                let rate = crate::trend::recent_rate(&series.times, values)
                    .map_or(String::new(), |r| format!(" ({})", rate_per_min(*k, r * 60.0)));
                Some(if k.is_memory() {
                    format!("{} {}{rate}", k.name(), human_bytes(total.bytes))
                } else {
                    format!("{} {} open{rate}", k.name(), total.count)
                })
            })
            .collect();
        let lost = probes.counters().map(|c| c.ringbuf_drops).unwrap_or(0);
        eprintln!(
            "[{}] {} | {} | {} events, lost {lost}",
            self.elapsed(elapsed),
            status(now),
            if kinds.is_empty() { "nothing outstanding".to_string() } else { kinds.join(", ") },
            collector.events_received
        );
    }

    /// A message above the view.
    pub(super) fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// Ends the view and says what is being done now.
    pub(super) fn finish(&mut self, doing: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{doing}");
    }
}

fn status(status: Option<&Status>) -> String {
    let Some(st) = status else { return "status: no samples yet".into() };
    if st.level == crate::trend::LEVEL_UNKNOWN {
        return format!("status: {} samples, a trend needs {}", st.samples, crate::trend::MIN_SAMPLES);
    }
    let limit = match (st.limit_bytes, st.time_to_limit_s) {
        (Some(l), Some(t)) => format!(", limit {} in ~{:.0}s", human_bytes(l), t),
        (Some(l), None) => format!(", limit {}", human_bytes(l)),
        _ => String::new(),
    };
    format!(
        "status: {} ({}, now {}{limit})",
        st.level,
        crate::report::text::growth(st),
        human_bytes(st.current_bytes)
    )
}

fn totals(report: &Report) -> String {
    let parts: Vec<String> = report
        .totals
        .iter()
        .filter(|(_, t)| t.count > 0)
        .map(|(k, t)| {
            if k.is_handle() {
                format!("{k} {} open", t.count)
            } else {
                format!("{k} {}", human_bytes(t.bytes))
            }
        })
        .collect();
    if parts.is_empty() {
        "nothing outstanding".into()
    } else {
        parts.join(", ")
    }
}

/// The fastest growing stacks of every kind (by size while no trend is known).
fn growing(report: &Report) -> Vec<String> {
    let growth =
        |e: &crate::report::model::StackEntry| e.trend.map_or(f64::NEG_INFINITY, |t| t.growth_per_min);
    let mut entries: Vec<_> = report.stacks.iter().filter(|e| e.count > 0).collect();
    entries.sort_by(|a, b| {
        growth(b)
            .total_cmp(&growth(a))
            .then(crate::report::flame::value(b).cmp(&crate::report::flame::value(a)))
    });
    entries
        .into_iter()
        .take(STACKS_SHOWN)
        .map(|e| {
            let handles = e.kind.is_handle();
            let value = if handles { format!("{} open", e.count) } else { human_bytes(e.bytes) };
            let rate = e.trend.map_or("no trend yet".into(), |t| rate_per_min(e.kind, t.growth_per_min));
            let frame = naming_frame(&e.frames).map_or("[stack unavailable]".to_string(), frame_label);
            format!("{:<9} {value:>10}  {rate:>14}  {frame}", e.kind)
        })
        .collect()
}
