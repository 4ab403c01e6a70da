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
use crate::{report::model::TargetExit, stacks::procmaps::ProcessMaps};

/// How a new program image appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewImage {
    /// A forked child process (it shares its parent's image and libc).
    Fork,
    /// A process exec'd a program; its C library is mapped.
    Exec,
    /// A process exec'd a program without a C library (static): no heap probes.
    ExecWithoutLibc,
}

/// What the tracer thread reports.
#[derive(Debug)]
pub enum TargetEvent {
    /// A process of the tree has a new image and is held stopped: attach its
    /// probes, then send [`Control::Resume`].
    NewImage { pid: u32, how: NewImage },
    /// A process of the tree exits; `last` when no other lives. When `held`,
    /// it is stopped at its exit with its address space intact: take its
    /// last events and send [`Control::Resume`] (for the last one, send
    /// [`Control::Release`] once the report is written). Not held: it is
    /// already gone (SIGKILL), or it is the `--pid` target.
    Exit { pid: u32, how: TargetExit, last: bool, held: bool },
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
/// maps. Returns at once for a static binary (its allocator, if any, is in
/// the executable, mapped already), and when the program's own code runs
/// before any C library is mapped.
pub(super) fn run_until_libc_mapped(pid: Pid) -> Result<()> {
    let maps = ProcessMaps::read(pid.as_raw() as u32)?;
    if maps.libc_code_mapped() {
        return Ok(()); // musl: the loader is the C library
    }
    let rip = ptrace::getregs(pid)?.rip;
    let loader = maps.find(rip).and_then(|m| m.file()).map(str::to_string);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    match (&loader, &exe) {
        (Some(l), Some(e)) if std::path::Path::new(l) != e.as_path() => {}
        _ => return Ok(()),
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
                        return Ok(());
                    }
                }
                at_exit = !at_exit;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                bail!("exited before its C library was loaded")
            }
            // A seized process's interrupt stop (see `held`): resumed by the next step.
            WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_STOP => {}
            WaitStatus::PtraceEvent(_, _, _) => bail!("exited before its C library was loaded"),
            _ => {}
        }
    }
}

/// Whether `pid` is a process (thread-group leader) rather than a thread.
fn is_process(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| st.lines().find_map(|l| l.strip_prefix("Tgid:")).map(|t| t.trim().to_string()))
        .is_some_and(|tgid| tgid == pid.to_string())
}

/// Tells the session about a new image and holds it until probes are attached.
fn announce(
    pid: Pid,
    how: NewImage,
    control: &mpsc::Receiver<Control>,
    events: &tokio::sync::mpsc::UnboundedSender<TargetEvent>,
) -> Option<Control> {
    let _ = events.send(TargetEvent::NewImage { pid: pid.as_raw() as u32, how });
    match control.recv() {
        Ok(Control::Resume) => None,
        Ok(other) => Some(other),
        Err(_) => Some(Control::Kill),
    }
}

/// Detaches from every tracee, leaving the programs running: first `held`
/// (in a stop we were told about), then each other task once it stops for
/// a SIGSTOP sent to it alone, which is suppressed at the detach (no job-
/// control stop; a SIGCONT would also resume the threads still to be
/// stopped). A task that reports nothing within 500 ms is dying (a zombie
/// leader, an exiting thread) and is left.
fn detach_all(tracees: &std::collections::BTreeSet<Pid>, held: Option<Pid>) {
    if let Some(pid) = held {
        let _ = ptrace::detach(pid, None);
    }
    for &tid in tracees.iter().filter(|t| Some(**t) != held) {
        // SAFETY: tkill takes plain integers.
        if unsafe { libc::syscall(libc::SYS_tkill, tid.as_raw(), libc::SIGSTOP) } != 0 {
            continue; // gone
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            match waitpid(tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => thread::sleep(Duration::from_millis(1)),
                Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {
                    let _ = ptrace::detach(tid, None);
                    break;
                }
                Ok(WaitStatus::Stopped(_, sig)) => {
                    let _ = ptrace::cont(tid, Some(sig));
                }
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => break,
                Ok(_) => {
                    // An event stop from before: our SIGSTOP is still pending,
                    // and would stop the program once untraced. SIGCONT discards it.
                    let _ = ptrace::detach(tid, None);
                    let _ = unsafe { libc::syscall(libc::SYS_tkill, tid.as_raw(), libc::SIGCONT) };
                    break;
                }
            }
        }
    }
}

/// The tracer loop after setup: follow forks and execs (holding each new
/// image until its probes are attached), forward signals, hold every
/// process's exit until the session has its last events, obey controls. It
/// ends when the last process of the tree is gone, which may be long after
/// the launched one.
fn trace(
    root: Pid,
    control: mpsc::Receiver<Control>,
    events: tokio::sync::mpsc::UnboundedSender<TargetEvent>,
) {
    use std::collections::BTreeSet;
    match control.recv() {
        Ok(Control::Resume) => {}
        _ => {
            let _ = nix::sys::signal::kill(root, Signal::SIGKILL);
            let _ = waitpid(root, None);
            return;
        }
    }
    let follow = Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC;
    let options =
        Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_EXITKILL | follow;
    let _ = ptrace::setoptions(root, options);
    let _ = ptrace::cont(root, None);
    // Every traced task (threads included), and the processes among them that have not begun to exit.
    let mut tracees: BTreeSet<Pid> = [root].into();
    let mut live: BTreeSet<Pid> = [root].into();
    // New tasks whose first stop (a SIGSTOP before they ever ran) is still to come.
    let mut unborn: BTreeSet<Pid> = BTreeSet::new();
    // Once the last process was released: its remaining threads are let
    // finish, and nothing is announced any more (the session is over).
    let mut released_at: Option<std::time::Instant> = None;
    loop {
        if let Ok(Control::Detach) = control.try_recv() {
            detach_all(&tracees, None);
            return;
        }
        if released_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            // Still not gone (a leader that called pthread_exit, a stuck thread): let it be.
            detach_all(&tracees, None);
            return;
        }
        let status = match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) => {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            Ok(s) => s,
            Err(_) => return, // no tracees left
        };
        match status {
            WaitStatus::PtraceEvent(pid, _, ev) if ev == ptrace::Event::PTRACE_EVENT_EXIT as i32 => {
                if live.remove(&pid) {
                    // Hold the exit: the session takes the process's last events
                    // (and, for the last one, writes the report) while its maps exist.
                    let how =
                        ptrace::getevent(pid).map_or(TargetExit::Unknown, |s| exit_of_wait_status(s as i32));
                    let last = live.is_empty();
                    let _ =
                        events.send(TargetEvent::Exit { pid: pid.as_raw() as u32, how, last, held: true });
                    if let Ok(Control::Detach) | Err(_) = control.recv() {
                        detach_all(&tracees, Some(pid));
                        return;
                    }
                    if last {
                        released_at = Some(std::time::Instant::now());
                    }
                }
                let _ = ptrace::cont(pid, None);
            }
            WaitStatus::PtraceEvent(pid, _, ev) if ev == ptrace::Event::PTRACE_EVENT_EXEC as i32 => {
                // A new program: let its loader map libc, then attach before it runs.
                if released_at.is_none() {
                    let ready = run_until_libc_mapped(pid).is_ok();
                    let how = if ready { NewImage::Exec } else { NewImage::ExecWithoutLibc };
                    if let Some(Control::Detach) = announce(pid, how, &control, &events) {
                        detach_all(&tracees, Some(pid));
                        return;
                    }
                }
                let _ = ptrace::cont(pid, None);
            }
            WaitStatus::PtraceEvent(pid, _, ev) => {
                // fork / vfork / clone: the new task reports its own first stop.
                // It counts as live from now, so a parent exiting first does not end the tree.
                if let Ok(new) = ptrace::getevent(pid) {
                    let new = Pid::from_raw(new as i32);
                    if tracees.insert(new) {
                        unborn.insert(new);
                    }
                    let clone = ev == ptrace::Event::PTRACE_EVENT_CLONE as i32;
                    if !clone || is_process(new) {
                        live.insert(new);
                    }
                }
                let _ = ptrace::cont(pid, None);
            }
            WaitStatus::Stopped(pid, Signal::SIGSTOP) if unborn.remove(&pid) || tracees.insert(pid) => {
                if is_process(pid) && released_at.is_none() {
                    live.insert(pid);
                    if let Some(Control::Detach) = announce(pid, NewImage::Fork, &control, &events) {
                        detach_all(&tracees, Some(pid));
                        return;
                    }
                }
                let _ = ptrace::cont(pid, None);
            }
            WaitStatus::Stopped(pid, sig) => {
                let _ = ptrace::cont(pid, Some(sig));
            }
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                tracees.remove(&pid);
                if live.remove(&pid) {
                    // Gone without an exit stop (killed by SIGKILL).
                    let how = match status {
                        WaitStatus::Exited(_, code) => TargetExit::Code(code),
                        WaitStatus::Signaled(_, sig, _) => TargetExit::Signal(sig.to_string()),
                        _ => unreachable!(),
                    };
                    let last = live.is_empty();
                    let _ =
                        events.send(TargetEvent::Exit { pid: pid.as_raw() as u32, how, last, held: false });
                }
                // With no live process left, the remaining tasks are threads on
                // their way out: the loop lets them finish (a zombie leader
                // cannot be waited for while its threads are stopped) and ends
                // when none is left.
            }
            WaitStatus::PtraceSyscall(pid) | WaitStatus::Continued(pid) => {
                let _ = ptrace::cont(pid, None);
            }
            _ => {}
        }
    }
}

/// The exit code or killing signal in a wait(2) status word.
pub fn exit_of_wait_status(status: i32) -> TargetExit {
    if libc::WIFSIGNALED(status) {
        let sig = Signal::try_from(libc::WTERMSIG(status))
            .map_or_else(|_| libc::WTERMSIG(status).to_string(), |s| s.to_string());
        TargetExit::Signal(sig)
    } else {
        TargetExit::Code(libc::WEXITSTATUS(status))
    }
}
