//! V8's own heap numbers (`v8.getHeapStatistics()`, per space
//! `v8.getHeapSpaceStatistics()`, `process.memoryUsage()`), read at each
//! interval, and what the report says of them: utilisation against the
//! heap limit, its level, and the time left until the limit.

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{
    report::model::{V8Counts, V8Heap, V8Space},
    trend,
};

/// Evaluated in the target, from its event loop (`setImmediate`): a
/// `require` evaluated at an arbitrary point (the inspector interrupts node
/// wherever it is, even halfway through loading a module) can fail and leave
/// that module half loaded for the program. A few microseconds of its main thread.
pub const EXPRESSION: &str =
    "(() => { const load = require; return new Promise((resolve) => setImmediate(() => { \
     const v8 = load('v8'); const m = process.memoryUsage(); \
     resolve({ heap: v8.getHeapStatistics(), spaces: v8.getHeapSpaceStatistics(), \
     external: m.external, arrayBuffers: m.arrayBuffers }); })); })()";

/// Utilisation (of the limit) from which the level is `warning`, then `critical`,
/// as the seeds' `/api/health/memory` warned.
pub const WARNING_PCT: f64 = 80.0;
pub const CRITICAL_PCT: f64 = 90.0;
/// Readings kept for the series; beyond, every other one is dropped.
const MAX_READINGS: usize = 2048;

/// One reading of V8's numbers.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Reading {
    /// Seconds since recording started.
    #[serde(skip)]
    pub at_s: f64,
    pub heap: HeapStatistics,
    pub spaces: Vec<SpaceStatistics>,
    pub external: u64,
    #[serde(rename = "arrayBuffers")]
    pub array_buffers: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct HeapStatistics {
    pub heap_size_limit: u64,
    pub used_heap_size: u64,
    pub total_heap_size: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SpaceStatistics {
    pub space_name: String,
    pub space_size: u64,
    pub space_used_size: u64,
    pub space_available_size: u64,
}

impl Reading {
    pub fn parse(value: serde_json::Value, at_s: f64) -> Result<Self> {
        let mut reading: Reading = serde_json::from_value(value).context("V8's heap statistics")?;
        reading.at_s = at_s;
        Ok(reading)
    }

    fn utilisation_pct(&self) -> f64 {
        100.0 * self.heap.used_heap_size as f64 / self.heap.heap_size_limit.max(1) as f64
    }
}

/// The readings of one recording, thinned to [`MAX_READINGS`].
#[derive(Clone, Debug, Default)]
pub struct Readings {
    readings: Vec<Reading>,
    /// Readings taken (kept or thinned out).
    taken: u64,
}

impl Readings {
    pub fn push(&mut self, reading: Reading) {
        self.taken += 1;
        if self.readings.len() >= MAX_READINGS {
            super::drop_every_other(&mut self.readings);
        }
        self.readings.push(reading);
    }

    /// The report's section, from the readings so far; `None` before the first.
    pub fn report(&self, pid: u32, inspector: &str) -> Option<V8Heap> {
        let last = self.readings.last()?;
        let limit = last.heap.heap_size_limit;
        let mut times = Vec::with_capacity(self.readings.len());
        let mut used = Vec::with_capacity(self.readings.len());
        let mut utilisation = Vec::with_capacity(self.readings.len());
        let mut time_to_limit = Vec::with_capacity(self.readings.len());
        let mut points: Vec<(f64, f64)> = Vec::with_capacity(self.readings.len());
        for r in &self.readings {
            times.push(r.at_s);
            used.push(r.heap.used_heap_size);
            utilisation.push(round2(r.utilisation_pct()));
            points.push((r.at_s, r.heap.used_heap_size as f64));
            time_to_limit.push(time_to_limit_at(&points, r.heap.used_heap_size, r.heap.heap_size_limit));
        }
        let growth = trend::robust_slope(&points).unwrap_or(0.0) * 60.0;
        let pct = last.utilisation_pct();
        Some(V8Heap {
            pid,
            inspector: inspector.to_string(),
            limit_bytes: limit,
            used_bytes: last.heap.used_heap_size,
            committed_bytes: last.heap.total_heap_size,
            external_bytes: last.external,
            array_buffers_bytes: last.array_buffers,
            utilisation_pct: round2(pct),
            level: level(pct).to_string(),
            growth_mib_per_min: growth / (1024.0 * 1024.0),
            time_to_limit_s: *time_to_limit.last()?,
            spaces: last
                .spaces
                .iter()
                .map(|s| V8Space {
                    name: s.space_name.clone(),
                    used_bytes: s.space_used_size,
                    size_bytes: s.space_size,
                    available_bytes: s.space_available_size,
                })
                .collect(),
            readings: self.taken,
            first: self.readings.first().map(|f| V8Counts {
                at_s: f.at_s,
                committed_bytes: f.heap.total_heap_size,
                used_bytes: f.heap.used_heap_size,
                external_bytes: f.external,
                array_buffers_bytes: f.array_buffers,
            }),
            longest_call_ms: 0.0,
            times,
            used,
            utilisation_pct_series: utilisation,
            time_to_limit_s_series: time_to_limit,
        })
    }
}

/// `ok`, `warning` (from 80% of the limit) or `critical` (from 90%).
pub fn level(utilisation_pct: f64) -> &'static str {
    if utilisation_pct >= CRITICAL_PCT {
        "critical"
    } else if utilisation_pct >= WARNING_PCT {
        "warning"
    } else {
        "ok"
    }
}

/// Seconds until the limit at the rate the heap grew over the readings so
/// far; `None` until a trend can be judged, or when it is not growing.
fn time_to_limit_at(points: &[(f64, f64)], used: u64, limit: u64) -> Option<f64> {
    if points.len() < trend::MIN_SAMPLES {
        return None;
    }
    let per_min = trend::robust_slope(points)? * 60.0;
    trend::time_to_limit(used, limit, per_min).map(|s| (s * 10.0).round() / 10.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_s: f64, used_mib: u64) -> Reading {
        Reading {
            at_s,
            heap: HeapStatistics {
                heap_size_limit: 100 << 20,
                used_heap_size: used_mib << 20,
                total_heap_size: (used_mib + 4) << 20,
            },
            ..Default::default()
        }
    }

    #[test]
    fn utilisation_is_of_the_limit_and_the_time_to_it_shrinks_as_the_heap_grows() {
        let mut readings = Readings::default();
        for (i, used) in [10, 20, 30, 40, 50, 60, 70, 85].into_iter().enumerate() {
            readings.push(reading(i as f64, used));
        }
        let heap = readings.report(7, "test").unwrap();
        assert_eq!(heap.utilisation_pct, 85.0);
        assert_eq!(heap.level, "warning");
        // 10 MiB/s, 15 MiB left.
        let left = heap.time_to_limit_s.unwrap();
        assert!((1.0..=2.0).contains(&left), "{left}");
        let series: Vec<Option<f64>> = heap.time_to_limit_s_series.clone();
        assert_eq!(series[..3], [None, None, None], "too few readings to judge");
        assert!(series[3].unwrap() > left, "{series:?}");
        assert_eq!(level(90.0), "critical");
        assert_eq!(level(79.9), "ok");
    }

    #[test]
    fn the_series_is_thinned_not_unbounded() {
        let mut readings = Readings::default();
        for i in 0..(MAX_READINGS * 3) {
            readings.push(reading(i as f64, 10));
        }
        let heap = readings.report(1, "test").unwrap();
        assert!(heap.times.len() <= MAX_READINGS);
        assert_eq!(heap.readings, (MAX_READINGS * 3) as u64);
        assert_eq!(*heap.times.last().unwrap(), (MAX_READINGS * 3 - 1) as f64);
    }

    #[test]
    fn parses_what_node_returns() {
        let value = serde_json::json!({
            "heap": { "heap_size_limit": 4345298944u64, "used_heap_size": 4000000, "total_heap_size": 6000000,
                      "total_available_size": 1, "malloced_memory": 2 },
            "spaces": [{ "space_name": "old_space", "space_size": 3000000, "space_used_size": 2500000,
                         "space_available_size": 100000, "physical_space_size": 3000000 }],
            "external": 1500000, "arrayBuffers": 10000
        });
        let r = Reading::parse(value, 2.5).unwrap();
        assert_eq!(r.heap.used_heap_size, 4000000);
        assert_eq!(r.spaces[0].space_name, "old_space");
        assert_eq!(r.array_buffers, 10000);
    }
}
