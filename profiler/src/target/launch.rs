//! Launch mode: start a command under ptrace, stopped at exec, run it up to
//! the moment its C library is mapped (before any libc code runs), hand it
//! over for probing, then let it run. Its exit is held at
//! `PTRACE_EVENT_EXIT` (address space still intact) until the report is
//! written. All ptrace calls happen on one dedicated thread, the tracer.

use std::{
    ffi::OsString, os::unix::process::CommandExt, process::Command, sync::mpsc, thread, time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::{
        ptrace::{self, Options},
        signal::Signal,
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

use super::ProcessInfo;
use crate::procmaps::ProcessMaps;

/// What the tracer thread reports.
#[derive(Debug)]
pub enum TargetEvent {
    /// The process is exiting and held stopped; send [`Control::Release`] when done.
    Exiting,
    /// The process is gone, with its exit code or the signal that killed it.
    Exited(String),
}

/// What the session tells the tracer thread.
#[derive(Debug)]
pub enum Control {
    /// Probes are attached: let the program run.
    Resume,
    /// Let a process held at exit finish exiting.
    Release,
    /// Stop tracing and leave the program running.
    Detach,
    /// Setup failed: kill the program.
    Kill,
}

pub struct Launched {
    pub info: ProcessInfo,
    /// The program's stdout, when it was asked to be piped to us.
    pub stdout: Option<std::process::ChildStdout>,
    pub control: mpsc::Sender<Control>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<TargetEvent>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Launched {
    /// Waits for the tracer thread (after Release/Detach/Kill).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `argv` stopped, runs it until its C library is mapped, and returns
/// it still stopped; nothing of it has run but the dynamic loader.
pub fn launch(argv: &[OsString], pipe_stdout: bool) -> Result<Launched> {
    type Ready = Result<(ProcessInfo, Option<std::process::ChildStdout>)>;
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let (control_tx, control_rx) = mpsc::channel();
    let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
    let argv = argv.to_vec();
    let thread = thread::Builder::new().name("tracer".into()).spawn(move || {
        let (child, stdout) = match start_stopped(&argv, pipe_stdout) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(ProcessInfo::inspect(child.as_raw() as u32).map(|i| (i, stdout)));
        trace(child, control_rx, event_tx);
    })?;
    let (info, stdout) = ready_rx.recv().map_err(|_| anyhow!("tracer thread died"))??;
    Ok(Launched { info, stdout, control: control_tx, events: event_rx, thread: Some(thread) })
}

fn start_stopped(argv: &[OsString], pipe_stdout: bool) -> Result<(Pid, Option<std::process::ChildStdout>)> {
    let (program, args) = argv.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    if pipe_stdout {
        cmd.stdout(std::process::Stdio::piped());
    }
    // SAFETY: ptrace(TRACEME) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take();
    match waitpid(pid, None)? {
        WaitStatus::Stopped(_, Signal::SIGTRAP) => {}
        other => bail!("{} did not stop at exec: {other:?}", program.to_string_lossy()),
    }
    ptrace::setoptions(
        pid,
        Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_EXITKILL,
    )?;
    if let Err(e) = run_until_libc_mapped(pid) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e.context(format!("{}", program.to_string_lossy())));
    }
    Ok((pid, stdout))
}

/// Steps through the dynamic loader's syscalls until libc appears in the
/// maps. Fails when the program's own code runs first (static binary).
fn run_until_libc_mapped(pid: Pid) -> Result<()> {
    let maps = ProcessMaps::read(pid.as_raw() as u32)?;
    if maps.libc_code_mapped() {
        return Ok(()); // musl: the loader is the C library
    }
    let rip = ptrace::getregs(pid)?.rip;
    let loader = maps.find(rip).and_then(|m| m.file()).map(str::to_string);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let no_libc = || {
        anyhow!("no C library: the program is statically linked or does not use libc, so the allocator probes have nothing to attach to")
    };
    match (&loader, &exe) {
        (Some(l), Some(e)) if std::path::Path::new(l) != e.as_path() => {}
        _ => return Err(no_libc()),
    }
    let mut at_exit = false;
    loop {
        ptrace::syscall(pid, None)?;
        match waitpid(pid, None)? {
            WaitStatus::PtraceSyscall(_) => {
                if at_exit {
                    let regs = ptrace::getregs(pid)?;
                    let maps = ProcessMaps::read(pid.as_raw() as u32)?;
                    if maps.libc_code_mapped() {
                        return Ok(());
                    }
                    if maps.find(regs.rip).and_then(|m| m.file()) != loader.as_deref() {
                        return Err(no_libc());
                    }
                }
                at_exit = !at_exit;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                bail!("exited before its C library was loaded")
            }
            WaitStatus::PtraceEvent(_, _, _) => bail!("exited before its C library was loaded"),
            _ => {}
        }
    }
}

/// The tracer loop after setup: forward signals, hold the exit, obey controls.
fn trace(
    pid: Pid,
    control: mpsc::Receiver<Control>,
    events: tokio::sync::mpsc::UnboundedSender<TargetEvent>,
) {
    match control.recv() {
        Ok(Control::Resume) => {}
        _ => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return;
        }
    }
    let _ = ptrace::cont(pid, None);
    loop {
        match control.try_recv() {
            Ok(Control::Detach) => {
                // Detaching requires a stopped tracee.
                let _ = nix::sys::signal::kill(pid, Signal::SIGSTOP);
                loop {
                    match waitpid(pid, None) {
                        Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {
                            let _ = ptrace::detach(pid, Some(Signal::SIGCONT));
                            return;
                        }
                        Ok(WaitStatus::Stopped(_, sig)) => {
                            let _ = ptrace::cont(pid, Some(sig));
                        }
                        Ok(WaitStatus::PtraceEvent(..)) => {
                            let _ = ptrace::detach(pid, None);
                            return;
                        }
                        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
                        Ok(_) => {
                            let _ = ptrace::cont(pid, None);
                        }
                    }
                }
            }
            Ok(Control::Kill) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            _ => {}
        }
        let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Ok(s) => s,
            Err(_) => return,
        };
        match status {
            WaitStatus::PtraceEvent(_, _, ev) if ev == ptrace::Event::PTRACE_EVENT_EXIT as i32 => {
                let _ = events.send(TargetEvent::Exiting);
                // Hold the exit until the report is written (or we are told to go).
                loop {
                    match control.recv() {
                        Ok(Control::Release) | Ok(Control::Detach) | Ok(Control::Kill) | Err(_) => break,
                        Ok(Control::Resume) => {}
                    }
                }
                let _ = ptrace::cont(pid, None);
            }
            WaitStatus::Stopped(_, sig) => {
                let _ = ptrace::cont(pid, Some(sig));
            }
            WaitStatus::Exited(_, code) => {
                let _ = events.send(TargetEvent::Exited(format!("exit code {code}")));
                return;
            }
            WaitStatus::Signaled(_, sig, _) => {
                let _ = events.send(TargetEvent::Exited(format!("killed by {sig}")));
                return;
            }
            _ => {
                let _ = ptrace::cont(pid, None);
            }
        }
    }
}
