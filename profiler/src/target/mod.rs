//! What is profiled: validating a `--pid`, launching a command stopped at
//! exec (see [`launch`]), a cgroup or container (see [`cgroup`]), finding a
//! process's C library, and noticing its exit.

pub mod cgroup;
pub mod launch;

use std::{
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

use crate::procmaps::ProcessMaps;

/// A process found and ready to be probed.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The command line, for the report.
    pub command: String,
    /// Short name (comm), used in default output paths.
    pub name: String,
    /// Its C library, as a path we can open (through `/proc/PID/root`);
    /// none for static binaries.
    pub libc: Option<PathBuf>,
    pub maps: ProcessMaps,
}

impl ProcessInfo {
    /// Reads everything about a live process; fails with a clear message
    /// when it does not exist.
    pub fn inspect(pid: u32) -> Result<Self> {
        if pid == 0 || !PathBuf::from(format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
        let maps = ProcessMaps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| pid.to_string());
        let command = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let libc = maps.libc().map(|libc| PathBuf::from(format!("/proc/{pid}/root{libc}")));
        Ok(Self { pid, command, name, libc, maps })
    }

    /// Fails with a clear message when the process has no C library for the alloc lens to probe.
    pub fn require_libc(&self) -> Result<()> {
        if self.libc.is_none() {
            bail!(
                "process {} ({}) has no C library mapped (statically linked, or not a libc program): \
                 the allocator probes of --lens alloc have nothing to attach to (--lens resident works without)",
                self.pid,
                self.name
            );
        }
        Ok(())
    }
}

/// A file descriptor that becomes readable when the process exits.
pub fn pidfd(pid: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("pidfd_open({pid})"));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
