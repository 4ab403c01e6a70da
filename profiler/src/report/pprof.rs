//! pprof output (`profile.pb.gz`): the profile.proto format that `go tool
//! pprof`, Pyroscope and Parca read. Sample types: `inuse_space/bytes` and
//! `inuse_objects/count` for memory kinds, `open_handles/count` for fds;
//! every sample carries `kind` and `pid` labels. The messages are declared
//! with prost's derive; prost does the encoding.

use std::{collections::HashMap, io::Write};

use anyhow::Result;
use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::Report;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self::default();
        s.id(""); // index 0 is the empty string, by definition
        s
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Builds the pprof profile of a report.
pub fn profile(report: &Report) -> Profile {
    let mut strings = Strings::new();
    let value_type =
        |strings: &mut Strings, t: &str, u: &str| ValueType { r#type: strings.id(t), unit: strings.id(u) };
    let sample_type = vec![
        value_type(&mut strings, "inuse_space", "bytes"),
        value_type(&mut strings, "inuse_objects", "count"),
        value_type(&mut strings, "open_handles", "count"),
    ];
    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut location_ids: HashMap<(String, String, Option<u32>, String), u64> = HashMap::new();
    let mut samples = Vec::new();
    let (kind_key, pid_key) = (strings.id("kind"), strings.id("pid"));
    for e in &report.stacks {
        let mut location_id = Vec::new();
        for f in &e.frames {
            let file = f.file.clone().unwrap_or_default();
            let key = (f.function.clone(), file.clone(), f.line, f.offset.clone());
            let id = match location_ids.get(&key) {
                Some(id) => *id,
                None => {
                    let fkey = (f.function.clone(), file.clone());
                    let function_id = match function_ids.get(&fkey) {
                        Some(id) => *id,
                        None => {
                            let id = functions.len() as u64 + 1;
                            let name = strings.id(&f.function);
                            functions.push(Function {
                                id,
                                name,
                                system_name: name,
                                filename: strings.id(&file),
                            });
                            function_ids.insert(fkey, id);
                            id
                        }
                    };
                    let id = locations.len() as u64 + 1;
                    let line = Line { function_id, line: f.line.unwrap_or(0) as i64 };
                    locations.push(Location { id, mapping_id: 1, line: vec![line] });
                    location_ids.insert(key, id);
                    id
                }
            };
            location_id.push(id);
        }
        let value = if Report::is_handle_kind(&e.kind) {
            vec![0, 0, e.count as i64]
        } else {
            vec![e.bytes as i64, e.count as i64, 0]
        };
        let label = vec![
            Label { key: kind_key, str: strings.id(&e.kind), num: 0 },
            Label { key: pid_key, str: 0, num: e.pid as i64 },
        ];
        samples.push(Sample { location_id, value, label });
    }
    let command = strings.id(&report.target.command);
    Profile {
        sample_type,
        sample: samples,
        mapping: vec![Mapping { id: 1, filename: command, has_functions: true }],
        location: locations,
        function: functions,
        time_nanos: report.started_at as i64 * 1_000_000_000,
        duration_nanos: (report.duration_s * 1e9) as i64,
        comment: vec![strings.id(&format!("outstanding when recording ended ({})", report.end_reason))],
        string_table: strings.table,
        ..Default::default()
    }
}

/// The gzipped, encoded profile (`profile.pb.gz`).
pub fn encode(report: &Report) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile(report).encode_to_vec())?;
    Ok(gz.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_table_starts_empty_and_dedups() {
        let mut s = Strings::new();
        assert_eq!(s.id("a"), 1);
        assert_eq!(s.id("a"), 1);
        assert_eq!(s.table[0], "");
    }
}
