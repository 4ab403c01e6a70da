//! Which processes carry allocator probes: each image exactly once (pid-
//! scoped, or process-wide per C library in cgroup mode), and following
//! forks, execs and cgroup membership as they happen.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::preflight;
use crate::{
    collector::Collector,
    files::target::{open_path_mapped, ModuleFile},
    probes::Probes,
    target::cgroup::{CgroupMounts, CgroupTarget},
};

/// Which C library each process has allocator probes on, so each image is
/// probed exactly once (two probes at one address would count calls twice).
pub(super) struct ProbedProcesses {
    /// False when the alloc lens is off: nothing gets allocator probes.
    enabled: bool,
    libc_of: std::collections::HashMap<u32, (u64, u64)>,
    /// Processes whose C library was not mapped yet when we looked.
    pending: std::collections::HashMap<u32, Instant>,
    /// C libraries probed for every process (cgroup mode), by (device, inode).
    everywhere: std::collections::HashSet<(u64, u64)>,
}

/// A process's C library, opened as it is mapped (so a container's own libc
/// is the one probed, and a swapped path cannot redirect us), its path as the
/// process sees it, and its (device, inode) identity.
fn libc_of(pid: u32) -> Result<(ModuleFile, String, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let maps =
        crate::procmaps::ProcessMaps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let Some(libc) = maps.libc().filter(|_| maps.libc_code_mapped()) else {
        anyhow::bail!("no C library mapped");
    };
    let module =
        open_path_mapped(pid, &maps, libc).with_context(|| format!("opening {libc} of pid {pid}"))?;
    let meta = module.file.metadata()?;
    Ok((module, libc.to_string(), (meta.dev(), meta.ino())))
}

impl ProbedProcesses {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            libc_of: Default::default(),
            pending: Default::default(),
            everywhere: Default::default(),
        }
    }

    /// Attaches the allocator probes for `pid` unless its current C library
    /// already has them. Fails when the process has no C library (yet).
    pub(super) fn ensure(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        if !self.enabled {
            self.pending.remove(&pid);
            return Ok(());
        }
        let (libc, path, id) = libc_of(pid)?;
        if self.libc_of.get(&pid) == Some(&id) {
            return Ok(());
        }
        probes.attach_allocator(&libc, &path, pid)?;
        self.libc_of.insert(pid, id);
        self.pending.remove(&pid);
        Ok(())
    }

    /// Cgroup mode: probes the process's C library for every process using
    /// it (once per library), filtered in the kernel by cgroup.
    fn ensure_everywhere(&mut self, probes: &mut Probes, pid: u32) -> Result<()> {
        if !self.enabled {
            self.pending.remove(&pid);
            return Ok(());
        }
        let (libc, path, id) = libc_of(pid)?;
        if self.everywhere.insert(id) {
            if let Err(e) = probes.attach_allocator_everywhere(&libc, &path) {
                self.everywhere.remove(&id);
                return Err(e);
            }
        }
        self.pending.remove(&pid);
        Ok(())
    }

    /// `--follow` without ptrace: probe forked and exec'd processes as soon
    /// as their C library is mapped (retrying for a while).
    pub(super) fn follow_up(&mut self, probes: &mut Probes, collector: &mut Collector) {
        let forks: Vec<u32> = collector.forks.drain(..).map(|(_, child)| child).collect();
        let execs: Vec<u32> = collector.execs.drain(..).collect();
        for pid in forks.into_iter().chain(execs) {
            // note_process already ran when the event was ingested.
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
        let ids: Vec<u64> = cgroup.target.ids().into_iter().filter(|id| cgroup.ids.insert(*id)).collect();
        if let Err(e) = probes.add_cgroups(&ids) {
            eprintln!("warning: {e:#}");
        }
        for pid in cgroup.target.processes() {
            if cgroup.processes.insert(pid) {
                if let Ok(maps) = crate::procmaps::ProcessMaps::read(pid) {
                    let brk = maps.heap_end().or_else(|| preflight::start_brk(pid));
                    collector.add_process(pid, maps, brk);
                }
                self.pending.insert(pid, Instant::now());
            }
        }
        for pid in collector.execs.drain(..) {
            self.pending.insert(pid, Instant::now());
        }
        collector.forks.clear();
        self.retry_pending(probes, true);
    }
}

/// What cgroup mode has seen so far.
pub(super) struct CgroupState {
    pub(super) target: CgroupTarget,
    pub(super) mounts: CgroupMounts,
    pub(super) ids: std::collections::HashSet<u64>,
    pub(super) processes: std::collections::BTreeSet<u32>,
    pub(super) last_scan: Instant,
}
