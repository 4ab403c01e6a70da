//! The CI leak gate: run a command under the profiler (once or `--runs N`
//! times), compare what it left outstanding with the budgets of a committed
//! TOML config and optionally a committed baseline, and decide. Exit codes
//! (see `main.rs`): 0 pass, 1 leak regression, 2 the gate itself failed.

pub mod config;
pub mod decide;
pub mod output;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    kind::Kind,
    lens::Lenses,
    record::{record, RecordOptions, TargetSpec, Warmup},
    report::{
        flame,
        model::{Frame, TargetExit},
        origin::{is_library_frame, is_runtime_stack},
        Report,
    },
};
use config::Config;
use decide::{decide, Baseline, Check, Decision, Observed};

/// Used when present in the working directory and no `--config` is given.
pub const DEFAULT_CONFIG: &str = "leakgate.toml";
pub const DEFAULT_BASELINE: &str = "leakgate-baseline.json";

#[derive(Clone, Debug)]
pub struct GateOptions {
    pub command: Vec<OsString>,
    pub config: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub update_baseline: bool,
    pub warmup: Warmup,
    pub runs: usize,
    /// End each run after this long (a checkpoint while the program is alive)
    /// instead of at its exit.
    pub duration: Option<std::time::Duration>,
    pub output: PathBuf,
    pub top: usize,
    /// Exit codes of the command that do not fail the gate (0 always passes).
    pub accept_exit_codes: Vec<i32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    LeakRegression,
}

/// Leading frames (from the allocating one) in the runtime or standard
/// libraries, or matching the configured `drop_frames`.
fn library_frames(frames: &[Frame], drop_frames: &[config::Pattern]) -> usize {
    frames
        .iter()
        .take_while(|f| {
            is_library_frame(f)
                || drop_frames.iter().any(|p| p.matches_any(std::iter::once(f.function.as_str())))
        })
        .count()
}

/// Per-stack values of one run, identical names merged.
fn observe(report: &Report, config: &Config) -> BTreeMap<(Kind, String), Observed> {
    let mut out: BTreeMap<(Kind, String), Observed> = BTreeMap::new();
    for e in &report.stacks {
        let stack = e.identity();
        let runtime = is_runtime_stack(&e.frames);
        let o = out.entry((e.kind, stack.clone())).or_insert_with(|| Observed {
            kind: e.kind,
            stack,
            value: 0,
            noise: 0,
            runtime,
            library_frames: library_frames(&e.frames, &config.drop_frames),
            frames: e.frames.iter().map(flame::frame_label).collect(),
        });
        o.value += flame::value(e);
    }
    out
}

/// Combines runs: the value is the minimum over runs (a stack absent from a
/// run counts 0 there), the noise is the spread.
fn combine(runs: &[BTreeMap<(Kind, String), Observed>]) -> Vec<Observed> {
    let mut all: BTreeMap<(Kind, String), Observed> = BTreeMap::new();
    for run in runs {
        for (k, o) in run {
            all.entry(k.clone()).or_insert_with(|| o.clone());
        }
    }
    all.into_iter()
        .map(|(k, mut o)| {
            let values: Vec<u64> = runs.iter().map(|r| r.get(&k).map_or(0, |x| x.value)).collect();
            let (min, max) = (*values.iter().min().unwrap_or(&0), *values.iter().max().unwrap_or(&0));
            o.value = min;
            o.noise = max - min;
            o
        })
        .collect()
}

fn load_config(opts: &GateOptions) -> Result<Config> {
    match &opts.config {
        Some(path) => Config::load(path),
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG)),
        None => Ok(Config::default()),
    }
}

fn load_baseline(opts: &GateOptions) -> Result<Option<Baseline>> {
    if opts.update_baseline {
        return Ok(None);
    }
    let path = opts.baseline.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BASELINE));
    if !path.exists() {
        if opts.baseline.is_some() {
            bail!("baseline {} does not exist (create it with --update-baseline)", path.display());
        }
        return Ok(None);
    }
    let text =
        crate::files::read_input(&path).with_context(|| format!("reading baseline {}", path.display()))?;
    let baseline =
        Baseline::from_json(&text).with_context(|| format!("invalid baseline {}", path.display()))?;
    Ok(Some(baseline))
}

/// The decision over reports already recorded (one per run).
pub fn judge(reports: &[Report], config: &Config, baseline: Option<&Baseline>) -> Decision {
    let runs: Vec<_> = reports.iter().map(|r| observe(r, config)).collect();
    decide(&combine(&runs), config, baseline)
}

/// Runs the gate; `Err` means the gate itself failed (exit 2).
pub fn gate(opts: &GateOptions) -> Result<(Verdict, Decision)> {
    if opts.command.is_empty() {
        bail!("no command to gate: use `profiler gate [OPTIONS] -- CMD ARGS`");
    }
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let config = load_config(opts)?;
    let baseline = load_baseline(opts)?;
    let mut runs = Vec::new();
    let mut bad_exits = Vec::new();
    for i in 1..=opts.runs {
        let dir = opts.output.join(format!("run-{i}"));
        let recorded = record(RecordOptions {
            duration: opts.duration,
            output: Some(dir),
            top: opts.top,
            warmup: opts.warmup.clone(),
            // The gate judges heap bytes per allocating stack: exact accounting.
            lenses: Lenses::PRECISE,
            ..RecordOptions::new(TargetSpec::Command(opts.command.clone()))
        })
        .with_context(|| format!("run {i} of {}", opts.runs))?;
        match &recorded.report.target_exit {
            Some(TargetExit::Code(c)) if *c == 0 || opts.accept_exit_codes.contains(c) => {}
            Some(exit) => bad_exits.push(format!("run {i}: {exit}")),
            None => {}
        }
        runs.push(observe(&recorded.report, &config));
    }
    let observed = combine(&runs);
    if opts.update_baseline {
        if !bad_exits.is_empty() {
            bail!(
                "no baseline written: the command failed ({}); a baseline is taken from passing runs (--accept-exit-code to accept a code)",
                bad_exits.join("; ")
            );
        }
        let path = opts.baseline.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BASELINE));
        let baseline = Baseline::from_observed(&observed);
        crate::files::output::write_file(&path, &serde_json::to_vec_pretty(&baseline)?)
            .with_context(|| format!("writing baseline {}", path.display()))?;
        println!("leak gate: baseline of {} stacks written to {}", baseline.stacks.len(), path.display());
        let decision = decide(&observed, &config, Some(&baseline));
        return Ok((Verdict::Pass, decision));
    }
    let mut decision = decide(&observed, &config, baseline.as_ref());
    if !bad_exits.is_empty() {
        // A crashed or failing command leaks nothing it never reached: never a pass.
        decision.checks.insert(
            0,
            Check {
                name: format!("the command exits with 0 ({})", bad_exits.join("; ")),
                limit: 0,
                actual: bad_exits.len() as u64,
                passed: false,
                unit: "failed runs".into(),
                offenders: Vec::new(),
            },
        );
        decision.passed = false;
    }
    output::write_all(&decision, opts)?;
    print!("{}", output::text(&decision, opts));
    Ok((if decision.passed { Verdict::Pass } else { Verdict::LeakRegression }, decision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::origin::tests::frames;

    fn obs(stack: &str, value: u64) -> ((Kind, String), Observed) {
        let o = Observed {
            kind: Kind::Heap,
            stack: stack.into(),
            value,
            noise: 0,
            runtime: false,
            frames: vec![],
            library_frames: 0,
        };
        ((Kind::Heap, stack.into()), o)
    }

    #[test]
    fn runs_combine_to_minimum_with_spread_as_noise() {
        let a: BTreeMap<_, _> = [obs("main;x", 100), obs("main;flaky", 10)].into();
        let b: BTreeMap<_, _> = [obs("main;x", 130)].into();
        let combined = combine(&[a, b]);
        let x = combined.iter().find(|o| o.stack == "main;x").unwrap();
        assert_eq!((x.value, x.noise), (100, 30));
        let flaky = combined.iter().find(|o| o.stack == "main;flaky").unwrap();
        assert_eq!((flaky.value, flaky.noise), (0, 10));
    }

    #[test]
    fn standard_library_frames_lead_to_the_programs_frame() {
        let cxx = frames(&[
            ("operator new(unsigned long)", "libstdc++.so.6"),
            ("std::__new_allocator<int>::allocate(unsigned long, void const*)", "app"),
            ("void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(int const&)", "app"),
            ("grow_vector()", "app"),
            ("main", "app"),
        ]);
        assert_eq!(library_frames(&cxx, &[]), 3);
        let rust = frames(&[
            ("<alloc::alloc::Global as core::alloc::Allocator>::allocate", "app"),
            ("app::leak", "app"),
        ]);
        assert_eq!(library_frames(&rust, &[]), 1);
        let mine = frames(&[("my_pool_alloc", "app"), ("app::leak", "app")]);
        assert_eq!(library_frames(&mine, &[config::Pattern::new("my_pool_*").unwrap()]), 1);
    }
}
