//! Embeds the eBPF object built by `cargo xtask build-ebpf`. Without it the
//! binary still builds (so unit tests run anywhere) but refuses to record.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("profiler.bpf.o");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = env::var_os("PROFILER_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/profiler"));
    println!("cargo:rerun-if-env-changed=PROFILER_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!("cargo:warning=eBPF object {} not found; run `cargo xtask build`", object.display());
            fs::write(&out, []).unwrap();
        }
    }
}
