//! A `report.json` handed to `profiler report` / `profiler diff`, and the
//! same report rendered by the `--serve` endpoints.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::{
    report::{diff, model::Report, pprof, text},
    serve::metrics,
};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = Report::from_json(data) else { return };
    let _ = text::render(&report, 10);
    for kind in report.totals.keys() {
        let _ = pprof::encode(&report, kind);
    }
    let _ = metrics::render(&report, metrics::OwnCost::default());
    let deltas = diff::diff(&report, &report);
    let _ = diff::text(&deltas, 10);
});
