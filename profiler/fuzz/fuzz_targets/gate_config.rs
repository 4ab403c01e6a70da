//! A `leakgate.toml`, then a decision under it over a few stacks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::gate::{
    config::Config,
    decide::{decide, Observed},
};

fn stack(kind: &str, stack: &str, value: u64) -> Observed {
    Observed {
        kind: kind.parse().expect("a kind"),
        stack: stack.into(),
        value,
        noise: 0,
        runtime: false,
        frames: stack.rsplit(';').map(str::to_string).collect(),
        library_frames: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::parse(text) else { return };
    let observed = [
        stack("heap", "main;cache_put;malloc", 65_536),
        stack("sockets", "main;connect_peer", 3),
        stack("files", "main;init_tls_once;open", 1),
        stack("mmap", "main;map_arena", 1 << 20),
    ];
    let _ = decide(&observed, &config, None);
});
