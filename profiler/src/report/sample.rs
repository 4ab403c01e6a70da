//! A small report for unit tests of the renderers and endpoints.

use super::{
    model::{Accuracy, StackEntry, TargetInfo, Total},
    Report,
};
use crate::{kind::Kind, report::model::Frame};

/// Two heap stacks with the same frames (100 + 150 B), one without frames
/// (50 B) and one sockets stack (2 handles), all of pid 1.
pub fn report() -> Report {
    let entry = |kind: &str, bytes, count, frames: &[&str]| StackEntry {
        kind: kind.parse().unwrap(),
        pid: 1,
        command: "demo".into(),
        bytes,
        count,
        mean_age_s: 0.0,
        api: "malloc".into(),
        frames: frames.iter().map(|f| Frame::named(f)).collect(),
        trend: None,
        old_share: 0.0,
        series: Vec::new(),
        class: None,
        sites: 1,
        site_offsets: Vec::new(),
        fds: Vec::new(),
    };
    Report {
        schema_version: 1,
        profiler_version: "0".into(),
        target: TargetInfo { pid: 1, command: "demo".into(), mode: "launch".into(), libc: String::new() },
        started_at: 0,
        duration_s: 1.0,
        end_reason: "test".into(),
        target_exit: None,
        warmup: None,
        selection: None,
        totals: [(Kind::Heap, Total { bytes: 300, count: 3 }), (Kind::Sockets, Total { bytes: 0, count: 2 })]
            .into(),
        handles: Default::default(),
        held_at_start: None,
        v8_heap: None,
        v8_heap_snapshots: None,
        v8_out_of_memory: Vec::new(),
        hints: Vec::new(),
        processes: Vec::new(),
        cgroup: None,
        series: None,
        status: None,
        memory_split: Default::default(),
        modules: Vec::new(),
        stacks: vec![
            entry("heap", 100, 1, &["leak_a", "main", "_start"]),
            entry("heap", 150, 1, &["leak_a", "main", "_start"]),
            entry("heap", 50, 1, &[]),
            entry("sockets", 0, 2, &["leak_sock;x", "main"]),
        ],
        accuracy: Accuracy::default(),
    }
}
