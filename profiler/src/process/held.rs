//! Processes the kernel stopped at exec (cgroup and `--follow` modes with
//! the alloc lens: the exec tracepoint sends SIGSTOP before the new
//! program's first instruction). A [`HeldExec`] runs one under ptrace until
//! its C library is mapped, so the allocator it really uses (a container's
//! own libc, a preloaded jemalloc) is probed before its first allocation;
//! dropping it lets the process go, whatever happened in between.

use anyhow::{Context, Result};
use nix::{
    sys::{
        ptrace::{self, Options},
        signal::{kill, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

pub struct HeldExec {
    pid: Pid,
    traced: bool,
    /// It had entered the job-control stop before we took over: end it with SIGCONT.
    group_stopped: bool,
}

impl HeldExec {
    /// Takes over process `pid`, stopped (or about to stop) by the kernel's
    /// SIGSTOP, and runs it until its C library is mapped: ready to probe.
    /// On failure (another tracer has it, it exited) the process is let go.
    pub fn run_until_libc_mapped(pid: u32) -> Result<Self> {
        let pid = Pid::from_raw(pid as i32);
        let mut held = Self { pid, traced: false, group_stopped: false };
        ptrace::seize(pid, Options::PTRACE_O_TRACESYSGOOD).context("ptrace(SEIZE)")?;
        held.traced = true;
        // Stops it even if the kernel's signal was refused (an interrupt stop).
        ptrace::interrupt(pid).context("ptrace(INTERRUPT)")?;
        // The first stop: our SIGSTOP being delivered (suppressed below, so
        // the process never enters a job-control stop its parent would see),
        // the group stop it already entered, or the interrupt.
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)).context("waiting for the held process")? {
                WaitStatus::Stopped(_, Signal::SIGSTOP) => break,
                WaitStatus::PtraceEvent(_, sig, _) => {
                    // The group stop our SIGSTOP caused before we took over
                    // (a pending one is suppressed when it is delivered), or the interrupt (SIGTRAP).
                    held.group_stopped = sig != Signal::SIGTRAP;
                    break;
                }
                WaitStatus::Stopped(_, sig) => ptrace::cont(pid, Some(sig))?,
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    held.traced = false;
                    anyhow::bail!("exited while held at exec");
                }
                _ => ptrace::cont(pid, None)?,
            }
        }
        super::launch::run_until_libc_mapped(pid)?;
        Ok(held)
    }
}

impl Drop for HeldExec {
    fn drop(&mut self) {
        if self.traced {
            let _ = ptrace::detach(self.pid, None);
        }
        // A group stop entered before we took over, or the kernel's SIGSTOP
        // still pending (it came after our interrupt, and the process never
        // got as far as delivering it): either would leave it stopped.
        if self.group_stopped || !self.traced || stop_pending(self.pid) {
            let _ = kill(self.pid, Signal::SIGCONT);
        }
    }
}

/// Whether a SIGSTOP is pending for the process (`/proc/PID/status`).
fn stop_pending(pid: Pid) -> bool {
    let bit = 1u64 << (libc::SIGSTOP - 1);
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status.lines().any(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & bit != 0)
        })
    })
}
