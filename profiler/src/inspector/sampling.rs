//! V8's sampling heap profiler (`--lens js-heap`): about one JS object in
//! every [`SAMPLING_INTERVAL_BYTES`] allocated is sampled with its JS stack,
//! and V8 scales each sample to the bytes it stands for. The live samples
//! at each interval become the `js-heap` kind's stacks, each with its
//! series, so a JS object leak gets a trend and a verdict like any other.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{
    kind::Kind,
    report::{
        model::{Frame, StackEntry},
        split,
    },
};

/// The module of a JS frame named from V8's profile (no native code behind it).
pub const JS_MODULE: &str = "[js]";
/// V8's default (DevTools uses the same): cheap enough for production.
pub const SAMPLING_INTERVAL_BYTES: u64 = 32 * 1024;
/// Distinct stacks followed, and taken from one reading; the bytes of the
/// rest are summed under one [`OTHER_STACKS`] entry.
pub(crate) const MAX_STACKS: usize = 4096;
/// The frame of the entry that sums the stacks past [`MAX_STACKS`].
pub const OTHER_STACKS: &str = "[other js-heap stacks]";
/// Deepest JS stack read (V8 records at most 128 frames).
const MAX_DEPTH: usize = 128;
/// Longest function name or script URL kept, in bytes.
const MAX_NAME: usize = 256;
/// Readings kept per stack; beyond, every other one is dropped.
const MAX_READINGS: usize = 512;

#[derive(Deserialize)]
struct Profile {
    head: Node,
    #[serde(default)]
    samples: Vec<Sample>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    call_frame: CallFrame,
    self_size: f64,
    id: u64,
    #[serde(default)]
    children: Vec<Node>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallFrame {
    function_name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    line_number: i64,
    #[serde(default)]
    column_number: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    node_id: u64,
}

/// The live sampled bytes of one JS stack at one reading.
#[derive(Clone, Debug, PartialEq)]
pub struct JsStack {
    /// Innermost first.
    pub frames: Vec<Frame>,
    pub bytes: u64,
    /// Live samples.
    pub samples: u64,
}

/// The stacks with live samples in `HeapProfiler.getSamplingProfile`'s result.
pub fn stacks_of(result: serde_json::Value) -> Result<Vec<JsStack>> {
    #[derive(Deserialize)]
    struct Reply {
        profile: Profile,
    }
    let Reply { profile } = serde_json::from_value(result).context("V8's sampling heap profile")?;
    let mut samples: HashMap<u64, u64> = HashMap::new();
    for s in &profile.samples {
        *samples.entry(s.node_id).or_default() += 1;
    }
    let mut stacks = Vec::new();
    let mut other = JsStack { frames: vec![other_frame()], bytes: 0, samples: 0 };
    // Depth first without recursion; `path` holds the frames root first.
    let mut path: Vec<Frame> = Vec::new();
    let mut pending: Vec<(&Node, usize)> = vec![(&profile.head, 0)];
    while let Some((node, depth)) = pending.pop() {
        path.truncate(depth);
        // The tree's root stands for no function.
        let frame_depth = if depth == 0 && node.call_frame.function_name == "(root)" {
            depth
        } else {
            path.push(frame_of(&node.call_frame));
            depth + 1
        };
        let (bytes, count) = (node.self_size as u64, samples.get(&node.id).copied().unwrap_or(0));
        if bytes > 0 && stacks.len() < MAX_STACKS {
            stacks.push(JsStack { frames: path.iter().rev().cloned().collect(), bytes, samples: count });
        } else if bytes > 0 {
            other.bytes += bytes;
            other.samples += count;
        }
        if frame_depth < MAX_DEPTH {
            pending.extend(node.children.iter().map(|c| (c, frame_depth)));
        }
    }
    if other.bytes > 0 {
        stacks.push(other);
    }
    Ok(stacks)
}

fn other_frame() -> Frame {
    Frame {
        function: OTHER_STACKS.into(),
        module: JS_MODULE.into(),
        offset: "0x0".into(),
        file: None,
        line: None,
        inlined: false,
    }
}

/// At most [`MAX_NAME`] bytes of a name the target chose, control characters shown.
fn bounded(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    crate::process::fds::printable(&name[..end])
}

/// Named as V8 names JS code in its perf maps (`JS:name url:line:column`),
/// without the tier, so a function reads the same under every lens.
fn frame_of(call: &CallFrame) -> Frame {
    let name =
        if call.function_name.is_empty() { "(anonymous)".to_string() } else { bounded(&call.function_name) };
    let url = bounded(&call.url);
    let (function, file, line) = if name.starts_with('(') {
        // V8's own categories: `(V8 API)`, `(BYTECODE_COMPILER)`, `(GC)`, ...
        (name.to_string(), None, None)
    } else if call.url.is_empty() {
        // A builtin (`String.prototype.repeat` is `repeat`).
        (format!("JS:{name}"), None, None)
    } else {
        let line = (call.line_number + 1).max(1) as u32;
        let column = call.column_number + 1;
        (format!("JS:{name} {url}:{line}:{column}"), Some(url), Some(line))
    };
    Frame { function, module: JS_MODULE.into(), offset: "0x0".into(), file, line, inlined: false }
}

/// The js-heap stacks of a recording, followed across readings.
#[derive(Clone, Debug, Default)]
pub struct Sampled {
    times: Vec<f64>,
    stacks: Vec<Followed>,
    index: HashMap<Vec<String>, usize>,
}

#[derive(Clone, Debug)]
struct Followed {
    frames: Vec<Frame>,
    /// Live bytes at each reading of `times`.
    series: Vec<u64>,
    samples: u64,
}

impl Sampled {
    /// Adds a reading taken `at_s` seconds into the recording.
    pub fn push(&mut self, at_s: f64, stacks: Vec<JsStack>) {
        if self.times.len() >= MAX_READINGS {
            self.thin();
        }
        self.times.push(at_s);
        let n = self.times.len();
        for f in &mut self.stacks {
            f.series.resize(n, 0);
            f.samples = 0;
        }
        for stack in stacks {
            let key: Vec<String> = stack.frames.iter().map(|f| f.function.clone()).collect();
            let key = if self.index.len() >= MAX_STACKS && !self.index.contains_key(&key) {
                vec![OTHER_STACKS.to_string()]
            } else {
                key
            };
            let i = match self.index.get(&key) {
                Some(i) => *i,
                None => {
                    let frames = if key.first().map(String::as_str) == Some(OTHER_STACKS) {
                        vec![other_frame()]
                    } else {
                        stack.frames
                    };
                    self.stacks.push(Followed { frames, series: vec![0; n], samples: 0 });
                    self.index.insert(key, self.stacks.len() - 1);
                    self.stacks.len() - 1
                }
            };
            let f = &mut self.stacks[i];
            f.series[n - 1] += stack.bytes;
            f.samples += stack.samples;
        }
    }

    fn thin(&mut self) {
        super::drop_every_other(&mut self.times);
        for f in &mut self.stacks {
            super::drop_every_other(&mut f.series);
        }
    }

    /// Live sampled bytes and samples now, over every stack.
    pub fn total(&self) -> (u64, u64) {
        self.stacks
            .iter()
            .fold((0, 0), |(b, n), f| (b + f.series.last().copied().unwrap_or(0), n + f.samples))
    }

    /// The report's entries: the stacks live at the last reading. The
    /// share older than `min_age_s` is what each stack already held at the
    /// reading that long before the last (a lower bound: samples carry no age).
    pub fn entries(&self, pid: u32, command: &str, min_age_s: f64) -> Vec<StackEntry> {
        let Some(&last_at) = self.times.last() else { return Vec::new() };
        let old_reading = self.times.iter().rposition(|t| *t <= last_at - min_age_s);
        self.stacks
            .iter()
            .filter(|f| f.series.last().is_some_and(|b| *b > 0))
            .map(|f| {
                let bytes = *f.series.last().unwrap_or(&0);
                let old = old_reading.map_or(0, |i| f.series[i].min(bytes));
                let old_share = old as f64 / bytes.max(1) as f64;
                let points: Vec<(f64, f64)> =
                    self.times.iter().zip(&f.series).map(|(t, v)| (*t, *v as f64)).collect();
                StackEntry {
                    kind: Kind::JsHeap,
                    pid,
                    command: command.to_string(),
                    bytes,
                    count: f.samples,
                    mean_age_s: 0.0,
                    api: "V8 sampling heap profiler".into(),
                    frames: f.frames.clone(),
                    class: Some(split::V8_HEAP.into()),
                    trend: Some(crate::trend::judge(&points, old_share, SAMPLING_INTERVAL_BYTES as f64)),
                    old_share,
                    // Readings are at the inspector's times, not at `series.times`.
                    series: Vec::new(),
                    sites: 1,
                    site_offsets: Vec::new(),
                    fds: Vec::new(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(
        name: &str,
        url: &str,
        line: i64,
        id: u64,
        self_size: f64,
        children: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        json!({ "callFrame": { "functionName": name, "scriptId": "1", "url": url, "lineNumber": line, "columnNumber": 4 },
                "selfSize": self_size, "id": id, "children": children })
    }

    fn profile() -> serde_json::Value {
        let mark = node("markProcessed", "/srv/app.js", 11, 3, 65536.0, vec![]);
        let sync = node("syncCycle", "/srv/app.js", 20, 2, 0.0, vec![mark]);
        let api = node("(V8 API)", "", -1, 4, 32768.0, vec![]);
        json!({ "profile": { "head": node("(root)", "", -1, 1, 0.0, vec![sync, api]),
                             "samples": [ { "size": 40, "nodeId": 3, "ordinal": 1 },
                                          { "size": 40, "nodeId": 3, "ordinal": 2 },
                                          { "size": 64, "nodeId": 4, "ordinal": 3 } ] } })
    }

    #[test]
    fn each_node_with_live_bytes_is_a_stack_named_as_v8_names_js() {
        let mut stacks = stacks_of(profile()).unwrap();
        stacks.sort_by_key(|s| s.bytes);
        assert_eq!(stacks.len(), 2);
        let names: Vec<&str> = stacks[1].frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["JS:markProcessed /srv/app.js:12:5", "JS:syncCycle /srv/app.js:21:5"]);
        assert_eq!((stacks[1].bytes, stacks[1].samples), (65536, 2));
        assert_eq!(stacks[1].frames[0].line, Some(12));
        assert_eq!(stacks[0].frames[0].function, "(V8 API)");
    }

    #[test]
    fn a_stack_followed_across_readings_has_a_series_and_a_verdict() {
        let mut sampled = Sampled::default();
        let stack =
            |bytes| JsStack { frames: vec![Frame::named("JS:f a.js:1:1")], bytes, samples: bytes / 1000 };
        for i in 0..10u64 {
            let mut stacks = vec![stack((i + 1) * 1_000_000)];
            if i == 3 {
                stacks.push(JsStack { frames: vec![Frame::named("JS:g a.js:2:1")], bytes: 5000, samples: 1 });
            }
            sampled.push(i as f64, stacks);
        }
        let entries = sampled.entries(9, "node app.js", 5.0);
        assert_eq!(entries.len(), 1, "g's sample was collected: not live at the end");
        let e = &entries[0];
        assert_eq!((e.kind, e.bytes, e.count), (Kind::JsHeap, 10_000_000, 10_000));
        assert!(e.series.is_empty(), "not at the report's sample times");
        assert_eq!(e.trend.unwrap().verdict, crate::report::model::Verdict::Growing);
        // Held at 4 s: 5 of the final 10 MB.
        assert!((e.old_share - 0.5).abs() < 1e-9, "{}", e.old_share);
        assert_eq!(sampled.total(), (10_000_000, 10_000));
    }
}
