//! A JIT's perf map (`/tmp/perf-PID.map`), written by the target and read
//! by root in pieces as it grows: the input is split where its first byte says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::stacks::perfmap::PerfMap;

fuzz_target!(|data: &[u8]| {
    let Some((&split, text)) = data.split_first() else { return };
    let at = (split as usize * text.len() / 256).min(text.len());
    let mut map = PerfMap::default();
    map.ingest(&text[..at]);
    map.ingest(&text[at..]);
    for probe in text.chunks(8).take(64) {
        let mut addr = [0u8; 8];
        addr[..probe.len()].copy_from_slice(probe);
        let _ = map.lookup(u64::from_le_bytes(addr));
    }
});
