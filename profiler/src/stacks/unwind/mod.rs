//! User stack unwinding without frame pointers.
//!
//! The kernel walks every captured stack itself (profiler-ebpf's `unwind`)
//! from per-module call-frame tables that this module builds ([`table`]: a
//! module's `.eh_frame` and `.debug_frame` as compact rows) and loads into its
//! maps for each profiled process ([`kernel`]). [`return_slot`] serves the
//! frame-pointer fallback of a process whose tables are not loaded yet.
//!
//! Why in the kernel: a leak profiler captures a stack per allocation, and
//! walking there costs a table lookup and two 8-byte reads per frame, where
//! copying a stack window for userspace to unwind (`perf --call-graph dwarf`)
//! costs 450-1,600 ns per event measured on these machines, stops at the
//! window's end, and multiplies the ring buffer's traffic by the window size.

pub mod kernel;
pub mod return_slot;
pub mod table;

pub use return_slot::Unwinder;

/// How user stacks are walked (`--stack-walk`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StackWalk {
    /// Call-frame tables in the kernel: complete on code without frame pointers.
    #[default]
    Tables,
    /// The kernel's frame-pointer walk only (for comparison): stops or skips
    /// at every function built without frame pointers.
    FramePointers,
}

/// How JS frames of a V8 process are named (`--js-names`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JsNames {
    /// The walker records each JS frame's function, named from V8's heap
    /// (node started with no flag).
    #[default]
    V8Heap,
    /// The walker records code addresses, named from the JIT's perf map
    /// (`node --perf-basic-prof`), for comparison.
    PerfMap,
}
