//! Which processes carry allocator probes: each image exactly once (pid-
//! scoped, or process-wide per C library in cgroup mode), and following
//! forks, execs and cgroup membership as they happen.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use profiler_common::AllocApi;

use super::preflight;
use crate::{
    collector::Collector,
    kernel::allocators::{self, AllocatorImage},
    kernel::probes::Probes,
    process::{
        cgroup::{CgroupMounts, CgroupTarget},
        held::HeldExec,
    },
    stacks::procmaps::ProcessMaps,
};

/// Which allocator images each process has probes on, so each image is
/// probed exactly once (two probes at one address would count calls twice).
pub(super) struct ProbedProcesses {
    /// False when the alloc lens is off: nothing gets allocator probes.
    enabled: bool,
    /// Process trees and cgroups: one set of probes per image for every
    /// process, filtered in the kernel (targets come and go; per-process
    /// probes would cost ~20 links each: 500 children, 10,000 fds).
    shared: bool,
    /// Per process, the (device, inode) of every image probed for it.
    images_of: std::collections::HashMap<u32, std::collections::HashSet<(u64, u64)>>,
    /// Processes whose C library was not mapped yet when we looked.
    pending: std::collections::HashMap<u32, Instant>,
    /// Images probed for every process (cgroup mode), by (device, inode).
    everywhere: std::collections::HashSet<(u64, u64)>,
}

/// The allocator images of process `pid` not `known` yet, once the process
/// is ready to probe: its C library mapped, or statically linked. Fails (to
/// be retried) before that, and when no image defines an allocator entry point.
fn allocators_of(pid: u32, known: &dyn Fn((u64, u64)) -> bool) -> Result<Vec<AllocatorImage>> {
    let maps = ProcessMaps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
    if !maps.libc_code_mapped() && !maps.is_static() {
        anyhow::bail!("no C library mapped yet");
    }
    let (images, any_known) = allocators::find_new(pid, &maps, known);
    if !any_known && !images.iter().any(|i| i.entries.iter().any(|e| e.api != AllocApi::Free)) {
        anyhow::bail!("{}", allocators::NOT_FOUND);
    }
    Ok(images)
}

impl ProbedProcesses {
    pub(super) fn new(enabled: bool, shared: bool) -> Self {
        Self {
            enabled,
            shared,
            images_of: Default::default(),
            pending: Default::default(),
            everywhere: Default::default(),
        }
    }

    /// Attaches the allocator probes for `pid` to each of its allocator
    /// images that has none yet. Fails when the process has no C library
    /// (yet) or no allocator.
    pub(super) fn ensure(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        if self.shared {
            return self.ensure_everywhere(probes, pid);
        }
        if !self.enabled {
            self.pending.remove(&pid);
            return Ok(());
        }
        let probed = self.images_of.get(&pid);
        for image in allocators_of(pid, &|id| probed.is_some_and(|ids| ids.contains(&id)))? {
            probes.attach_allocator(&image, pid)?;
            self.images_of.entry(pid).or_default().insert(image.id);
        }
        self.pending.remove(&pid);
        Ok(())
    }

    /// Cgroup mode: probes the allocator images of this (the profiler's)
    /// process for every process, before any target is found (see the caller).
    pub(super) fn prime_with_own_images(&mut self, probes: &mut Probes) {
        if let Err(e) = self.ensure_everywhere(probes, std::process::id()) {
            eprintln!("warning: cannot probe this machine's C library in advance: {e:#}");
        }
    }

    /// Cgroup mode: probes the process's allocator images for every process
    /// using them (once per image), filtered in the kernel by cgroup.
    fn ensure_everywhere(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        if !self.enabled {
            self.pending.remove(&pid);
            return Ok(());
        }
        for image in allocators_of(pid, &|id| self.everywhere.contains(&id))? {
            probes.attach_allocator_everywhere(&image)?;
            self.everywhere.insert(image.id);
        }
        self.pending.remove(&pid);
        Ok(())
    }

    /// Processes the kernel stopped at exec (cgroup and `--follow` modes):
    /// each runs under ptrace until its C library is mapped and is probed
    /// there, before its first allocation, then goes on.
    pub(super) fn release_held(&mut self, probes: &mut Probes, collector: &mut Collector) {
        for pid in collector.held_at_exec.drain(..) {
            match HeldExec::run_until_libc_mapped(pid) {
                Ok(_held) => {
                    super::session::track_stacks(probes, pid);
                    if let Err(e) = self.ensure(probes, pid) {
                        eprintln!("warning: no heap probes for pid {pid} at its exec: {e:#}");
                    }
                }
                Err(e) => eprintln!(
                    "warning: pid {pid} could not be held at exec ({e:#}): its first allocations may be missed"
                ),
            }
        }
    }

    /// `--follow` without ptrace: probe forked and exec'd processes as soon
    /// as their C library is mapped (retrying for a while).
    pub(super) fn follow_up(&mut self, probes: &mut Probes, collector: &mut Collector) {
        let forks: Vec<u32> = collector.forks.drain(..).map(|(_, child)| child).collect();
        let execs: Vec<u32> = collector.execs.drain(..).collect();
        for pid in forks.into_iter().chain(execs) {
            // note_process already ran when the event was ingested.
            super::session::track_stacks(probes, pid);
            self.pending.insert(pid, Instant::now());
        }
        self.retry_pending(probes, false);
    }

    fn retry_pending(&mut self, probes: &mut Probes, everywhere: bool) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            let done =
                if everywhere { self.ensure_everywhere(probes, pid) } else { self.ensure(probes, pid) };
            if done.is_err() && self.pending[&pid].elapsed() > Duration::from_secs(5) {
                self.pending.remove(&pid);
            }
        }
    }

    /// Cgroup mode: picks up cgroups and processes that appeared, and
    /// processes that exec'd a new program.
    pub(super) fn follow_cgroup(
        &mut self,
        probes: &mut Probes,
        collector: &mut Collector,
        cgroup: &mut CgroupState,
    ) {
        // Processes found by a scan after the first were already running: unless we saw
        // them fork or exec, what they allocated before is unseen.
        let late = std::mem::replace(&mut cgroup.scanned, true);
        if let (None, Some(id)) = (&cgroup.target, &cgroup.awaited) {
            match CgroupTarget::from_container(id, &cgroup.mounts) {
                Ok(found) => {
                    eprintln!("container {id} started: {}", found.dir.display());
                    cgroup.target = Some(found);
                }
                Err(e) if CgroupTarget::not_started(&e) => return,
                Err(e) => {
                    // e.g. two containers now match the prefix: say so once, and keep looking.
                    if !std::mem::replace(&mut cgroup.warned, true) {
                        eprintln!("warning: {e:#}");
                    }
                    return;
                }
            }
        }
        let Some(target) = &cgroup.target else { return };
        let ids: Vec<u64> = target.ids().into_iter().filter(|id| cgroup.ids.insert(*id)).collect();
        if let Err(e) = probes.add_cgroups(&ids) {
            eprintln!("warning: {e:#}");
        }
        for pid in target.processes() {
            if cgroup.processes.insert(pid) {
                if let Ok(maps) = crate::stacks::procmaps::ProcessMaps::read(pid) {
                    let brk = maps.heap_end().or_else(|| preflight::start_brk(pid));
                    collector.add_process(pid, maps, brk);
                }
                if late {
                    collector.found_running(pid);
                }
                super::session::track_stacks(probes, pid);
                self.pending.insert(pid, Instant::now());
            }
        }
        for pid in collector.execs.drain(..) {
            super::session::track_stacks(probes, pid);
            self.pending.insert(pid, Instant::now());
        }
        collector.forks.clear();
        self.retry_pending(probes, true);
    }
}

/// What cgroup mode has seen so far.
pub(super) struct CgroupState {
    /// None while an awaited container has not started.
    pub(super) target: Option<CgroupTarget>,
    /// `--container ID --wait`: the id looked for until it starts.
    pub(super) awaited: Option<String>,
    /// The first scan (at the start of recording) is done.
    pub(super) scanned: bool,
    /// A problem finding the awaited container was reported.
    pub(super) warned: bool,
    pub(super) mounts: CgroupMounts,
    pub(super) ids: std::collections::HashSet<u64>,
    pub(super) processes: std::collections::BTreeSet<u32>,
    pub(super) last_scan: Instant,
}
