//! A reply of node's inspector, which the target writes: parsed with its
//! nesting bounded, then read as the js-heap lens reads it (V8's heap
//! statistics, a sampling heap profile followed across a reading).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::inspector::{
    cdp::parse_bounded,
    heap::Reading,
    sampling::{stacks_of, Sampled},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = parse_bounded(text) else { return };
    let _ = Reading::parse(value.clone(), 0.0);
    if let Ok(stacks) = stacks_of(value) {
        let mut sampled = Sampled::default();
        sampled.push(0.0, stacks);
        let _ = sampled.entries(1, "node", 1.0);
    }
});
