//! Checks that must pass before anything is attached, each with an error
//! that says what is wrong and what to do.

use std::path::Path;

use anyhow::{bail, Result};

/// Raises our open-file limit to its hard maximum: every probe link is an
/// fd, and a traced process tree opens many (the usual soft limit is 1024).
pub fn raise_fd_limit() {
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the profiler must run as root (it loads eBPF programs and attaches probes); try `sudo`");
    }
    Ok(())
}

/// The kernel's BTF; `PROFILER_BTF` overrides the path (for testing).
pub fn require_btf() -> Result<()> {
    let path = std::env::var_os("PROFILER_BTF").unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into());
    if !Path::new(&path).exists() {
        bail!(
            "this kernel exposes no BTF ({} is missing); a kernel built with CONFIG_DEBUG_INFO_BTF=y is required",
            Path::new(&path).display()
        );
    }
    Ok(())
}

/// The `start_brk` of a process (field 47 of /proc/PID/stat).
pub fn start_brk(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(47 - 3)?.parse().ok()
}

/// Makes sure tracefs is mounted (classic tracepoints are attached through it).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status();
    if !matches!(status, Ok(s) if s.success()) || !Path::new("/sys/kernel/tracing/events").exists() {
        bail!("tracefs is not mounted and could not be mounted at /sys/kernel/tracing");
    }
    Ok(())
}
