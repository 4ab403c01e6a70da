//! Userspace side of the leak profiler.
//!
//! The pipeline, one module per stage:
//! `lens` (what to look at) -> `probes` (load and attach the eBPF programs) -> `events` (decode ring-buffer
//! records) -> `ledger` (outstanding bytes and handles per site) -> `stacks` and
//! `symbols` (intern, repair and name call stacks) -> `report` (model, text,
//! JSON, folded stacks and flamegraphs). `record` drives a whole session;
//! `target` finds, launches and watches the profiled process; `files` opens
//! the target's files and writes outputs safely as root.

pub mod allocators;
pub mod collector;
pub mod events;
pub mod files;
pub mod gate;
pub mod ledger;
pub mod lens;
pub mod perfmap;
pub mod placement;
pub mod preflight;
pub mod probes;
pub mod procmaps;
pub mod record;
pub mod report;
pub mod serve;
pub mod stacks;
pub mod symbols;
pub mod target;
pub mod trend;
pub mod unwind;
