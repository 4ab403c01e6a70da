//! The lenses (as root): the resident lens on `tests/fixtures/resident.c`
//! (dynamic and static), byte sampling and probe placement of the alloc lens
//! on `tests/fixtures/sampling.c`. Each fixture prints its ground truth.

mod common;

use std::{path::Path, process::Command};

use common::{through, PROFILER};
use serde_json::Value;

const PAGE: u64 = 4096;

fn record(dir: &Path, args: &[&str], program: &Path) -> Value {
    let out = Command::new(PROFILER)
        .args(["record", "-q", "-o"])
        .arg(dir)
        .args(args)
        .arg("--")
        .arg(program)
        .output()
        .unwrap();
    assert!(out.status.success(), "profiler failed: {}", String::from_utf8_lossy(&out.stderr));
    common::report_json(dir)
}

fn assert_resident_ground_truth(report: &Value) {
    assert_eq!(through(report, "resident", "touch_kept"), (40 * PAGE, 40), "kept pages");
    assert_eq!(through(report, "resident", "touch_moved"), (4 * PAGE, 4), "moved by mremap, half unmapped");
    for released in ["touch_unmapped", "touch_discarded", "touch_brk"] {
        assert_eq!(through(report, "resident", released), (0, 0), "{released} gave its pages back");
    }
    assert!(report["accuracy"]["page_faults"].as_u64().unwrap() >= 44 + 16 + 16 + 10);
}

#[test]
fn resident_lens_is_the_default_and_follows_pages_exactly() {
    let dir = common::fresh_dir("lens-resident");
    let report = record(&dir, &[], &common::fixture("resident"));
    assert_eq!(report["accuracy"]["lenses"], "resident,handles");
    assert_resident_ground_truth(&report);
    assert_eq!(report["totals"]["heap"]["count"], 0, "no allocator probes in the production lenses");
    assert_eq!(report["accuracy"]["calls_seen"]["malloc"], 0);
    assert!(dir.join("resident.svg").exists());
}

#[test]
fn resident_lens_needs_no_c_library() {
    let dir = common::fresh_dir("lens-resident-static");
    let report = record(&dir, &["--lens", "resident"], &common::fixture_with("cc", "resident", &["-static"]));
    assert_resident_ground_truth(&report);
    assert_eq!(report["accuracy"]["lenses"], "resident");
}

#[test]
fn byte_sampling_scales_without_bias_and_pairs_frees_exactly() {
    let exe = common::fixture("sampling");
    let dir = common::fresh_dir("lens-sampled");
    let report = record(&dir, &["--lens", "alloc", "--sample-bytes", "64K"], &exe);
    // Blocks at least as large as the mean are always taken: exact.
    assert_eq!(through(&report, "heap", "leak_big"), (100 << 20, 100));
    // 20000 x 1000 B, each taken with p = 1000/65536 (about 305 samples):
    // the scaled estimate is within 25% (over 4 standard deviations).
    let (small, samples) = through(&report, "heap", "leak_small");
    assert!((small as f64 - 20e6).abs() < 0.25 * 20e6, "estimated {small} B for 20,000,000 B");
    assert!((150..600).contains(&samples), "{samples} sampled blocks");
    // Freed blocks (including reallocs of sampled blocks) leave nothing behind.
    assert_eq!(through(&report, "heap", "churn_freed"), (0, 0));
    let accuracy = &report["accuracy"];
    assert_eq!(accuracy["unknown_frees"], 0, "frees are reported only for sampled blocks");
    assert_eq!(accuracy["unknown_reallocs"], 0);
    assert_eq!(accuracy["sample_bytes"], 65536);
    assert!(accuracy["unsampled_calls"].as_u64().unwrap() > 50_000);
}

#[test]
fn both_probe_placements_are_exact() {
    let exe = common::fixture("sampling");
    for placement in ["entry", "emulated"] {
        let dir = common::fresh_dir(&format!("lens-placement-{placement}"));
        let report = record(&dir, &["--lens", "alloc", "--probe-placement", placement], &exe);
        assert_eq!(through(&report, "heap", "leak_small"), (20_000_000, 20000), "{placement}");
        assert_eq!(through(&report, "heap", "leak_big"), (100 << 20, 100), "{placement}");
        assert_eq!(through(&report, "heap", "churn_freed"), (0, 0), "{placement}");
        let attached = report["accuracy"]["probes_attached"].to_string();
        let free_at_zero = attached.contains("uprobe:free at offset 0");
        assert_eq!(free_at_zero, placement == "entry", "{attached}");
    }
}
