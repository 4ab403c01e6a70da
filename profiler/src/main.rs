//! `profiler`: find what a process leaks (heap, mappings, sockets) and which
//! code leaked it.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use profiler::record::{record, RecordOptions, TargetSpec};

#[derive(Parser)]
#[command(
    name = "profiler",
    version,
    about = "eBPF leak profiler: outstanding memory and handles by call stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a process (or launch a command) and report what it still holds when recording ends.
    ///
    /// Ends when the target exits, after --duration, or on Ctrl-C / SIGTERM; in
    /// every case the complete report is written: report.txt, report.json and,
    /// per kind with anything outstanding, <kind>.folded and <kind>.svg.
    #[command(
        after_help = "Examples:\n  profiler record --pid 1234 --duration 60\n  profiler record -- ./my-program --its-args"
    )]
    Record(RecordArgs),
}

#[derive(Args)]
struct RecordArgs {
    /// Attach to this running process.
    #[arg(
        long,
        short,
        conflicts_with = "command",
        required_unless_present = "command"
    )]
    pid: Option<u32>,

    /// Stop after this many seconds.
    #[arg(long, short, value_name = "SECS")]
    duration: Option<f64>,

    /// Output directory [default: ./profile-<target>-<timestamp>].
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,

    /// Stacks shown per kind in the text summary.
    #[arg(long, default_value_t = 10)]
    top: usize,

    /// Ring buffer size in MiB (a power of two). Dropped events are reported.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    ringbuf_mb: u32,

    /// Do not print the summary at the end (it is still written to report.txt).
    #[arg(long, short)]
    quiet: bool,

    /// Command to launch and profile from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Exit codes: 0 success, 1 the profiler failed (bad input, cannot attach), 2 usage error (clap).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Record(args) = cli.command;
    if let Some(d) = args.duration {
        if !(d > 0.0 && d.is_finite()) {
            eprintln!("error: --duration must be a positive number of seconds");
            return ExitCode::from(2);
        }
    }
    if !args.ringbuf_mb.is_power_of_two() {
        eprintln!("error: --ringbuf-mb must be a power of two");
        return ExitCode::from(2);
    }
    let target = match args.pid {
        Some(pid) => TargetSpec::Pid(pid),
        None => TargetSpec::Command(args.command),
    };
    let opts = RecordOptions {
        target,
        duration: args.duration.map(Duration::from_secs_f64),
        output: args.output,
        top: args.top,
        ringbuf_bytes: args.ringbuf_mb * 1024 * 1024,
        print_summary: !args.quiet,
    };
    match record(opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
