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
