//! Growth over time: per-stack time series sampled at `--interval`, a robust
//! growth rate (Theil-Sen slope), a verdict per stack (growing, plateaued,
//! transient), and the overall status against the growth thresholds the
//! incident reports use, with the time left until the memory limit.

pub use crate::report::model::{Trend, Verdict};
use serde::{Deserialize, Serialize};

/// Slopes are estimated on at most this many evenly spaced samples.
const MAX_POINTS: usize = 64;

/// Fewer samples than this tell no trend: a verdict, an overall level and a
/// ranking by growth all wait for them (with two samples, anything that
/// appeared after the first looks like fast growth).
pub const MIN_SAMPLES: usize = 4;

/// The overall level while there are fewer than [`MIN_SAMPLES`] samples.
pub const LEVEL_UNKNOWN: &str = "unknown";

/// Theil-Sen estimator: the median of the slopes between all pairs of
/// points. Robust to outliers and to a burst at one end. `None` with fewer
/// than two distinct times.
pub fn robust_slope(points: &[(f64, f64)]) -> Option<f64> {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let pts: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dt = pts[j].0 - pts[i].0;
            if dt > 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(|a, b| a.total_cmp(b));
    let mid = slopes.len() / 2;
    Some(if slopes.len() % 2 == 1 { slopes[mid] } else { (slopes[mid - 1] + slopes[mid]) / 2.0 })
}

/// Samples the current growth rate of a total is measured over (the most recent).
pub const RECENT_WINDOW: usize = 30;

/// The current growth of a total sampled at `times`: the robust slope (per
/// second) over its last [`RECENT_WINDOW`] samples; `None` with fewer than
/// [`MIN_SAMPLES`].
pub fn recent_rate(times: &[f64], values: &[u64]) -> Option<f64> {
    let points: Vec<(f64, f64)> = times.iter().zip(values).map(|(t, v)| (*t, *v as f64)).collect();
    let recent = &points[points.len().saturating_sub(RECENT_WINDOW)..];
    (recent.len() >= MIN_SAMPLES).then(|| robust_slope(recent)).flatten()
}

/// Judges a series of (seconds, value) samples. `old_share` is the share of
/// the final value older than `--min-age`; growth below `min_growth` (in the
/// series' unit) never makes a stack growing or plateaued.
pub fn judge(series: &[(f64, f64)], old_share: f64, min_growth: f64) -> Trend {
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return Trend {
            growth_per_min: 0.0,
            recent_growth_per_min: 0.0,
            retained_per_min: 0.0,
            verdict: Verdict::Unknown,
        };
    };
    let span = last.0 - first.0;
    let overall = robust_slope(series).unwrap_or(0.0) * 60.0;
    let second_half: Vec<(f64, f64)> =
        series.iter().filter(|p| p.0 >= first.0 + span / 2.0).copied().collect();
    let recent = robust_slope(&second_half).unwrap_or(0.0) * 60.0;
    let final_value = last.1.max(1.0);
    // A net increase of less than 5% of the value (or below `min_growth`) is noise.
    let grew = last.1 - first.1 > (0.05 * final_value).max(min_growth);
    let still_growing = recent * (span / 2.0) / 60.0 > 0.05 * final_value && recent > 0.25 * overall;
    let retained = retained_per_min(series).unwrap_or(0.0);
    // At least half of what it holds arrived while recording and stayed: young, but not work in flight.
    let kept = grew && retained * span / 60.0 > 0.5 * final_value;
    let verdict = if series.len() < MIN_SAMPLES {
        Verdict::Unknown
    } else if old_share < 0.5 && !still_growing && !kept {
        Verdict::Transient
    } else if grew && still_growing && overall > 0.0 && rises(series) {
        Verdict::Growing
    } else if grew {
        Verdict::Plateaued
    } else {
        Verdict::Stable
    };
    Trend { growth_per_min: overall, recent_growth_per_min: recent, retained_per_min: retained, verdict }
}

/// The rise that stayed, per minute: the median of the last quarter of the
/// samples minus the median of the first quarter, over the time between the
/// quarters' middles. A steady leak gives its slope; a step that stays (a
/// one-time 60 MiB rise) gives its height over the recording, where the
/// Theil-Sen slope of a series mostly flat on both sides of the step is 0.
/// The first sample is left out (at the start of a launched program it is
/// taken before the program has loaded anything), and each quarter needs 2
/// samples: `None` with fewer than 9.
pub fn retained_per_min(series: &[(f64, f64)]) -> Option<f64> {
    let series = series.get(1..)?;
    if series.len() < 8 {
        return None;
    }
    let quarter = series.len() / 4;
    let median = |part: &[(f64, f64)], of: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = part.iter().map(of).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let mid = v.len() / 2;
        if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        }
    };
    let (early, late) = (&series[..quarter], &series[series.len() - quarter..]);
    let span = median(late, |p| p.0) - median(early, |p| p.0);
    (span > 0.0).then(|| (median(late, |p| p.1) - median(early, |p| p.1)) / span * 60.0)
}

/// Whether the value rose at enough samples to be a trend rather than a
/// step: at least 3 rises, and at least a quarter of the intervals.
fn rises(series: &[(f64, f64)]) -> bool {
    let n = series.windows(2).filter(|w| w[1].1 > w[0].1).count();
    n >= 3 && n * 4 >= series.len() - 1
}

/// Overall growth levels, in MiB per minute (the incident reports' table).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub slow: f64,
    pub active: f64,
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { slow: 10.0, active: 50.0, critical: 500.0 }
    }
}

impl Thresholds {
    /// The level of a growth rate (MiB per minute); callers judge the larger
    /// of the slope and the retained rise, so a step that stays counts.
    pub fn level(&self, mib_per_min: f64) -> &'static str {
        match mib_per_min {
            r if r > self.critical => "critical",
            r if r > self.active => "active leak",
            r if r > self.slow => "slow leak",
            _ => "normal",
        }
    }
}

/// Seconds until `current` reaches `limit` at `bytes_per_min`; `None` when not growing.
pub fn time_to_limit(current: u64, limit: u64, bytes_per_min: f64) -> Option<f64> {
    (bytes_per_min > 0.0).then(|| limit.saturating_sub(current) as f64 / bytes_per_min * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_rate_needs_enough_samples_and_follows_the_last_ones() {
        let times: Vec<f64> = (0..40).map(f64::from).collect();
        // Flat for 10 samples, then +5 per second.
        let values: Vec<u64> = (0..40u64).map(|i| if i < 10 { 0 } else { (i - 10) * 5 }).collect();
        assert_eq!(recent_rate(&times[..3], &values[..3]), None);
        assert!((recent_rate(&times, &values).unwrap() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn verdict_names_are_the_json_ones() {
        for v in [Verdict::Growing, Verdict::Plateaued, Verdict::Transient, Verdict::Stable, Verdict::Unknown]
        {
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
    }

    fn series(f: impl Fn(f64) -> f64, n: usize) -> Vec<(f64, f64)> {
        (0..n).map(|i| (i as f64 * 10.0, f(i as f64 * 10.0))).collect()
    }

    #[test]
    fn slope_is_exact_on_a_line_and_robust_to_outliers() {
        let line = series(|t| 100.0 + 2.0 * t, 30);
        assert!((robust_slope(&line).unwrap() - 2.0).abs() < 1e-9);
        let mut spiky = line.clone();
        spiky[5].1 += 1e6;
        spiky[20].1 -= 1e6;
        assert!((robust_slope(&spiky).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(robust_slope(&[(1.0, 5.0)]), None);
    }

    #[test]
    fn verdicts() {
        let leak = series(|t| 1000.0 * t, 30);
        assert_eq!(judge(&leak, 0.9, 0.0).verdict, Verdict::Growing);
        assert!((judge(&leak, 0.9, 0.0).growth_per_min - 60_000.0).abs() < 1e-6);
        let cache = series(|t| (t * 1000.0).min(100_000.0), 30);
        assert_eq!(judge(&cache, 0.9, 0.0).verdict, Verdict::Plateaued);
        // Filled early and flat since: the whole-run slope is ~0, but it did grow.
        let early_cache = series(|t| if t < 20.0 { t * 1000.0 } else { 20_000.0 }, 30);
        assert_eq!(judge(&early_cache, 0.9, 0.0).verdict, Verdict::Plateaued);
        let churn = series(|t| if (t as i64 / 10) % 2 == 0 { 5000.0 } else { 7000.0 }, 30);
        assert_eq!(judge(&churn, 0.1, 0.0).verdict, Verdict::Transient);
        let once = series(|_| 4096.0, 30);
        assert_eq!(judge(&once, 1.0, 0.0).verdict, Verdict::Stable);
        assert_eq!(judge(&leak[..2], 1.0, 0.0).verdict, Verdict::Unknown);
        let tiny = series(|t| 100.0 + t, 30);
        assert_eq!(judge(&tiny, 1.0, 4096.0).verdict, Verdict::Stable, "300 bytes of growth is noise");
        let late_jump = series(|t| if t < 280.0 { 1000.0 } else { 9000.0 }, 30);
        assert_eq!(
            judge(&late_jump, 1.0, 4096.0).verdict,
            Verdict::Plateaued,
            "one late step is not a trend"
        );
        let mid_step = series(|t| if t < 200.0 { 0.0 } else { 262_144.0 }, 30);
        assert_eq!(judge(&mid_step, 1.0, 4096.0).verdict, Verdict::Plateaued, "one step is not a trend");
    }

    #[test]
    fn a_rise_that_stays_is_seen_whatever_its_shape() {
        let line = series(|t| 100.0 + 2.0 * t, 30);
        assert!((retained_per_min(&line).unwrap() - 120.0).abs() < 1e-9, "a steady leak: its slope");
        // A 60 MiB step a fifth of the way in: the slope is 0, the rise is not.
        let mib = 1024.0 * 1024.0;
        let step = series(|t| if t < 60.0 { 10.0 * mib } else { 70.0 * mib }, 30);
        assert_eq!(robust_slope(&step), Some(0.0));
        let retained = retained_per_min(&step).unwrap() / mib;
        assert!(retained > 10.0, "{retained} MiB/min");
        // A rise that was given back is not retained.
        let spike = series(|t| if (100.0..200.0).contains(&t) { 70.0 * mib } else { 10.0 * mib }, 30);
        assert_eq!(retained_per_min(&spike), Some(0.0));
        // Younger than --min-age but kept: a step, not work in flight.
        assert_eq!(judge(&step, 0.0, 4096.0).verdict, Verdict::Plateaued);
        let churn = series(|t| if (t as i64 / 10) % 2 == 0 { 5000.0 } else { 7000.0 }, 30);
        assert_eq!(judge(&churn, 0.0, 0.0).verdict, Verdict::Transient);
        assert_eq!(retained_per_min(&step[..8]), None, "9 samples at least");
        // A program loading at the start (the first sample is before it): no rise that stayed.
        let start = series(|t| if t < 5.0 { 1.0 * mib } else { 50.0 * mib }, 12);
        assert_eq!(retained_per_min(&start), Some(0.0));
    }

    #[test]
    fn levels_and_time_to_limit() {
        let t = Thresholds::default();
        assert_eq!(t.level(5.0), "normal");
        assert_eq!(t.level(20.0), "slow leak");
        assert_eq!(t.level(100.0), "active leak");
        assert_eq!(t.level(600.0), "critical");
        assert_eq!(time_to_limit(1 << 30, 2 << 30, (1 << 30) as f64), Some(60.0));
        assert_eq!(time_to_limit(1, 2, 0.0), None);
    }
}
