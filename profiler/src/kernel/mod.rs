//! The kernel side as userspace sees it: which allocator images to probe
//! (`allocators`), where the probes go (`placement`), loading and attaching
//! the eBPF programs (`probes`), reading their counters (`counters`), decoding their
//! ring-buffer records (`events`), and checks made before attaching (`preflight`).

pub mod allocators;
pub mod counters;
pub mod events;
pub mod placement;
pub mod preflight;
pub mod probes;
