//! A `report.json` handed to `profiler report` / `profiler diff`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::report::{diff, model::Report, pprof, text};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = Report::from_json(data) else { return };
    let _ = text::render(&report, 10);
    let _ = pprof::encode(&report);
    let deltas = diff::diff(&report, &report);
    let _ = diff::text(&deltas, 10);
});
