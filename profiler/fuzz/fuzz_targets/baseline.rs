//! A committed `leakgate-baseline.json`, judged against a run in which each
//! of its stacks doubled.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::gate::{
    config::Config,
    decide::{decide, Baseline, Observed},
};

fuzz_target!(|data: &[u8]| {
    let Ok(baseline) = Baseline::from_json(data) else { return };
    let observed: Vec<Observed> = baseline
        .stacks
        .iter()
        .map(|s| Observed {
            kind: s.kind.clone(),
            stack: s.stack.clone(),
            value: s.value.saturating_mul(2),
            noise: s.noise,
            runtime: false,
            frames: s.stack.rsplit(';').map(str::to_string).collect(),
            library_frames: 0,
        })
        .collect();
    let _ = decide(&observed, &Config::default(), Some(&baseline));
});
