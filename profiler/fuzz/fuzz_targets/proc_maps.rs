//! `/proc/PID/maps` as a target shapes it (its file names are its own).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::stacks::procmaps::ProcessMaps;

fuzz_target!(|data: &[u8]| {
    let maps = ProcessMaps::parse(&String::from_utf8_lossy(data));
    for m in &maps.mappings {
        if let Some(found) = maps.find(m.start) {
            let _ = found.file_offset(m.start);
        }
        let _ = m.file();
    }
    let _ = (maps.libc(), maps.libc_code_mapped(), maps.is_static(), maps.heap_end());
});
