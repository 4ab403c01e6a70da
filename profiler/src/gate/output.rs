//! The gate's outputs: a human summary for the CI log, `gate.json`, JUnit
//! XML (one test case per budget) and a Markdown summary, also appended to
//! `$GITHUB_STEP_SUMMARY` when that is set.

use std::{fmt::Write as _, io::Write as _};

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

use super::{
    decide::{Check, Decision},
    GateOptions,
};
use crate::report::flame::human_bytes;

/// Offending stacks listed per failed check.
const OFFENDERS_SHOWN: usize = 5;
/// Frames shown per offending stack.
const FRAMES_SHOWN: usize = 4;

fn amount(value: u64, unit: &str) -> String {
    if unit == "bytes" {
        human_bytes(value)
    } else {
        format!("{value} {unit}")
    }
}

/// A stack for people, leaf first: its leading runtime and standard-library
/// frames collapsed (`[3 library frames] <- grow_vector() <- main`), so the
/// first frame shown is the program's.
fn stack_line(frames: &[String], library_frames: usize, fallback: &str) -> String {
    if frames.is_empty() {
        return fallback.to_string();
    }
    let skip = if library_frames < frames.len() { library_frames } else { 0 };
    let mut shown: Vec<String> = frames[skip..].iter().take(FRAMES_SHOWN).cloned().collect();
    if skip > 0 {
        shown.insert(0, format!("[{skip} library {}]", if skip == 1 { "frame" } else { "frames" }));
    }
    let mut s = shown.join(" <- ");
    if frames.len() > skip + FRAMES_SHOWN {
        s.push_str(" <- ...");
    }
    s
}

fn check_line(c: &Check) -> String {
    let over =
        if c.passed { String::new() } else { format!(" ({} over)", amount(c.actual - c.limit, &c.unit)) };
    format!(
        "{}: {} outstanding, budget {}{over}",
        c.name,
        amount(c.actual, &c.unit),
        amount(c.limit, &c.unit)
    )
}

pub fn text(d: &Decision, opts: &GateOptions) -> String {
    let mut s = String::new();
    let failed = d.checks.iter().filter(|c| !c.passed).count();
    let verdict =
        if d.passed { "PASS".to_string() } else { format!("FAIL ({failed} of {} checks)", d.checks.len()) };
    let _ = writeln!(s, "leak gate: {verdict}");
    for c in &d.checks {
        let _ = writeln!(s, "  [{}] {}", if c.passed { "ok" } else { "FAIL" }, check_line(c));
        if c.passed {
            continue;
        }
        for o in c.offenders.iter().take(OFFENDERS_SHOWN) {
            let unit = o.kind.unit();
            let allowed =
                o.allowed.map(|a| format!(" (baseline allows {})", amount(a, unit))).unwrap_or_default();
            let _ = writeln!(
                s,
                "      {} {}{allowed}: {}",
                o.kind,
                amount(o.value, unit),
                stack_line(&o.frames, o.library_frames, &o.stack)
            );
        }
        if c.offenders.len() > OFFENDERS_SHOWN {
            let _ = writeln!(s, "      ... {} more stacks in gate.json", c.offenders.len() - OFFENDERS_SHOWN);
        }
    }
    if !d.runtime.is_empty() {
        let bytes: u64 = d.runtime.iter().filter(|o| o.kind.is_memory()).map(|o| o.value).sum();
        let _ = writeln!(
            s,
            "  allowed: {} runtime stacks (C/C++ runtime, standard-library start-up, loader only), {}",
            d.runtime.len(),
            human_bytes(bytes)
        );
    }
    for (o, reason) in &d.allowed {
        let _ = writeln!(
            s,
            "  allowed by rule ({reason}): {} {}",
            o.kind,
            stack_line(&o.frames, o.library_frames, &o.stack)
        );
    }
    let _ = writeln!(s, "  details: {} (flamegraphs in run-*/)", opts.output.display());
    s
}

pub fn markdown(d: &Decision) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Leak gate: {}\n", if d.passed { "passed" } else { "FAILED" });
    let _ = writeln!(s, "| check | outstanding | budget | result |\n| --- | --- | --- | --- |");
    for c in &d.checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.name,
            amount(c.actual, &c.unit),
            amount(c.limit, &c.unit),
            if c.passed { "pass" } else { "**FAIL**" }
        );
    }
    for c in d.checks.iter().filter(|c| !c.passed) {
        let _ = writeln!(s, "\n### {}\n", c.name);
        for o in c.offenders.iter().take(OFFENDERS_SHOWN) {
            let unit = o.kind.unit();
            let _ = writeln!(
                s,
                "- `{}` {}: `{}`",
                o.kind,
                amount(o.value, unit),
                stack_line(&o.frames, o.library_frames, &o.stack)
            );
        }
    }
    s
}

pub fn junit(d: &Decision) -> Result<String> {
    let mut suite = TestSuite::new("leak-gate");
    for c in &d.checks {
        let status = if c.passed {
            TestCaseStatus::success()
        } else {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            st.set_message(check_line(c));
            let details: Vec<String> = c
                .offenders
                .iter()
                .map(|o| {
                    format!("{} {}: {}", o.kind, o.value, stack_line(&o.frames, o.library_frames, &o.stack))
                })
                .collect();
            st.set_description(details.join("\n"));
            st
        };
        suite.add_test_case(TestCase::new(c.name.clone(), status));
    }
    let mut report = JunitReport::new("leak-gate");
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

pub fn write_all(d: &Decision, opts: &GateOptions) -> Result<()> {
    let dir = crate::files::output::OutputDir::create(&opts.output, false)?;
    let write = |name: &str, data: &[u8]| dir.write(name, data);
    write("gate.json", &serde_json::to_vec_pretty(d)?)?;
    write("junit.xml", junit(d)?.as_bytes())?;
    let md = markdown(d);
    write("summary.md", md.as_bytes())?;
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .context("$GITHUB_STEP_SUMMARY")?;
        f.write_all(md.as_bytes())?;
    }
    Ok(())
}
