//! Userspace side of the leak profiler.
//!
//! The pipeline, one module per stage (see `docs/architecture.md`):
//! `lens` (what to look at) -> `kernel` (load and attach the eBPF programs,
//! decode their ring-buffer records) -> `collector` (interpret each event) ->
//! `ledger` (outstanding bytes and handles per site) -> `stacks` (intern,
//! repair, unwind and name call stacks) -> `report` (the one builder, the
//! model and every output format) -> `gate`, `serve`. `record` drives a
//! whole session; `process` finds, launches and watches the profiled
//! processes and cgroups; `files` opens the target's files and writes outputs
//! safely as root; `kind` is the resource kind every stage shares.

pub mod collector;
pub mod files;
pub mod gate;
pub mod inspector;
pub mod kernel;
pub mod kind;
pub mod ledger;
pub mod lens;
pub mod process;
pub mod record;
pub mod report;
pub mod serve;
pub mod stacks;
pub mod trend;

/// Hands memory freed after a burst (loading the eBPF object, tabling a
/// large module) back to the system now rather than after the allocator's
/// purge delay, so the profiler's peak RSS is its largest burst, not the sum
/// of them (attached to node: 63 -> 50 MiB). Called at cold points only.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps (a no-op without them).
    unsafe { libmimalloc_sys::mi_collect(true) }
}
