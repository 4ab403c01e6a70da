//! What is profiled: validating a `--pid`, launching a command stopped at
//! exec (see [`launch`]), a cgroup or container (see [`cgroup`]), finding a
//! process's C library, and noticing its exit. What a process already
//! holds: its fds described as `lsof` would ([`fds`]), its resident memory
//! by region ([`smaps`]), and what node counts of its own ([`node_memory`]).

pub mod cgroup;
pub mod fds;
pub mod held;
pub mod launch;
pub mod node_memory;
pub mod smaps;

use std::{
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

use crate::{report::model::TargetExit, stacks::procmaps::ProcessMaps};

/// Reads `buf.len()` bytes at `addr` in process `pid`'s memory; whether all were read.
pub fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: one local iovec over `buf`, which outlives the call.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// Most descendants looked at (a fork bomb is not walked to its end).
const MAX_DESCENDANTS: usize = 4096;

/// The processes `pid` started that are running now, and theirs, parents
/// before children (from each thread's `children` list).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else { continue };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if found.len() < MAX_DESCENDANTS && !found.contains(&child) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
    }
    found
}

/// A process found and ready to be probed.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The command line, for the report.
    pub command: String,
    /// Short name (comm), used in default output paths.
    pub name: String,
    pub maps: ProcessMaps,
}

impl ProcessInfo {
    /// Reads everything about a live process; fails with a clear message
    /// when it does not exist.
    pub fn inspect(pid: u32) -> Result<Self> {
        if pid == 0 || !PathBuf::from(format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        if field("Tgid:") != pid.to_string() && !field("Tgid:").is_empty() {
            bail!(
                "{pid} is a thread of process {}, not a process: use --pid {}",
                field("Tgid:"),
                field("Tgid:")
            );
        }
        if is_kernel_thread(pid) {
            bail!("pid {pid} ({}) is a kernel thread: it has no user space to profile", field("Name:"));
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
        Ok(Self { pid, command, name, maps })
    }

    /// Fails with a clear message when the process has no allocator for the alloc lens to probe.
    pub fn require_allocator(&self) -> Result<()> {
        if crate::kernel::allocators::find(self.pid, &self.maps).is_empty() {
            bail!("process {} ({}): {}", self.pid, self.name, crate::kernel::allocators::NOT_FOUND);
        }
        Ok(())
    }
}

/// Whether `pid` is a kernel thread (`PF_KTHREAD` in the flags of /proc/PID/stat).
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesized command: state is field 3, flags field 9.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_comm
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

/// How process `pid` ended, read once its pidfd says it exited: the exit
/// code is in /proc/PID/stat while the process is a zombie (not yet reaped
/// by its parent).
pub fn exit_of_zombie(pid: u32) -> TargetExit {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // Field 3 is the state, field 52 the wait status (fields counted from 1, 2 is the command).
    match (fields.first(), fields.get(49).and_then(|f| f.parse::<i32>().ok())) {
        (Some(&"Z"), Some(status)) => launch::exit_of_wait_status(status),
        _ => TargetExit::Unknown,
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

/// Resident set size of a process, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
