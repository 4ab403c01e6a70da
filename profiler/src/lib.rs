//! Userspace side of the leak profiler.
//!
//! The pipeline, one module per stage:
//! `probes` (load and attach the eBPF programs) -> `events` (decode ring-buffer
//! records) -> `ledger` (outstanding bytes and handles per site) -> `stacks` and
//! `symbols` (intern, repair and name call stacks) -> `report` (model, text,
//! JSON, folded stacks and flamegraphs). `record` drives a whole session;
//! `target` finds, launches and watches the profiled process.

pub mod ledger;
