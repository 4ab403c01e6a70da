//! A `report.json` handed to `profiler report` / `profiler diff`, and the
//! same report rendered by the `--serve` endpoints.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::{
    report::{diff, model::Report, outputs},
    serve::metrics,
};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = Report::from_json(data) else { return };
    let options = outputs::Options::default();
    for format in outputs::Format::ALL {
        for &kind in report.totals.keys() {
            let _ = outputs::render(&report, format, kind, &options);
        }
    }
    let _ = metrics::render(&report, metrics::OwnCost::default());
    let deltas = diff::diff(&report, &report);
    let _ = diff::text(&deltas, 10);
});
