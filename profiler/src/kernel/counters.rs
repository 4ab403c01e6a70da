//! The kernel side's counters, typed: what `Probes::counters` reads from
//! the per-CPU `COUNTERS` array (slots in `profiler_common::counters`),
//! summed over CPUs, under names.

use std::collections::BTreeMap;

use profiler_common::{counters as slot, syscalls, ALLOC_APIS};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Calls seen per probe: allocator entry points by symbol, syscalls by name.
    pub calls_seen: BTreeMap<String, u64>,
    pub stack_failed: u64,
    pub ringbuf_drops: u64,
    pub inflight_map_full: u64,
    pub nested_calls: u64,
    pub failed_allocs: u64,
    pub unmatched_returns: u64,
    pub inflight_syscall_map_full: u64,
    pub unsampled_calls: u64,
    pub sampled_map_full: u64,
    pub page_faults: u64,
    pub scratch_busy: u64,
    pub missed_returns: u64,
    pub own_read_faults: u64,
}

impl KernelCounters {
    /// Names the raw slots.
    pub fn from_slots(raw: &[u64; slot::COUNT]) -> Self {
        let mut calls_seen = BTreeMap::new();
        for api in ALLOC_APIS {
            calls_seen.insert(api.symbol().to_string(), raw[slot::API_CALLS + api as usize]);
        }
        for (i, (_, name)) in syscalls::TRACED.iter().enumerate() {
            calls_seen.insert(name.to_string(), raw[slot::SYSCALLS + i]);
        }
        Self {
            calls_seen,
            stack_failed: raw[slot::STACK_FAILED],
            ringbuf_drops: raw[slot::RINGBUF_DROPS],
            inflight_map_full: raw[slot::INFLIGHT_MAP_FULL],
            nested_calls: raw[slot::NESTED_CALLS],
            failed_allocs: raw[slot::FAILED_ALLOCS],
            unmatched_returns: raw[slot::UNMATCHED_RETURNS],
            inflight_syscall_map_full: raw[slot::INFLIGHT_SYSCALL_MAP_FULL],
            unsampled_calls: raw[slot::UNSAMPLED_CALLS],
            sampled_map_full: raw[slot::SAMPLED_MAP_FULL],
            page_faults: raw[slot::PAGE_FAULTS],
            scratch_busy: raw[slot::SCRATCH_BUSY],
            missed_returns: raw[slot::MISSED_RETURNS],
            own_read_faults: raw[slot::OWN_READ_FAULTS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_lands_under_its_name() {
        let mut raw = [0u64; slot::COUNT];
        for (i, v) in raw.iter_mut().enumerate() {
            *v = i as u64 + 1;
        }
        let k = KernelCounters::from_slots(&raw);
        assert_eq!(k.calls_seen["malloc"], 1);
        assert_eq!(k.calls_seen["mmap"], slot::SYSCALLS as u64 + 1);
        assert_eq!(k.calls_seen.len(), ALLOC_APIS.len() + syscalls::TRACED.len());
        assert_eq!(k.own_read_faults, slot::OWN_READ_FAULTS as u64 + 1);
        assert_eq!(k.stack_failed, slot::STACK_FAILED as u64 + 1);
    }
}
