//! A module's ELF file through the unwinder: `.eh_frame` / `.debug_frame`
//! into rows, the separate debug file's names, the load bias.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::stacks::unwind::table;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = table::build(data) {
        assert!(t.rows.windows(2).all(|w| w[0].pc <= w[1].pc), "rows sorted");
        let _ = t.mostly_bare();
    }
    let _ = table::build_with_debug_file(data, data);
    let _ = table::debug_file_candidates(data, "/usr/lib/x/module.so");
    let _ = table::vaddr_delta(data, 0x1000);
});
