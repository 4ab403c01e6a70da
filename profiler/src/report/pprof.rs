//! pprof output: one profile.proto per kind (`<kind>.pb.gz`, and the
//! `/debug/pprof/<kind>` endpoints), as Go writes heap profiles so that
//! `go tool pprof`, Pyroscope and Parca open them right:
//!
//! - memory kinds: `inuse_objects/count` and `inuse_space/bytes`, opening on
//!   `inuse_space`; handle kinds: `<kind>/count` (e.g. `sockets/count`);
//! - one Location per code address, its inlined functions as `Line`s
//!   (innermost first, the caller last), so `-noinlines` and `-lines` work;
//! - one Mapping per module with its path, build id and executable segment,
//!   locations at the module's link address of the call instruction, so
//!   `-disasm` reads the code from the file;
//! - labels `pid`, `command` and, in cgroup mode, `cgroup`.
//!
//! The messages are declared with prost's derive; prost does the encoding.

use std::{collections::HashMap, io::Write};

use anyhow::Result;
use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::{model::ModuleInfo, Report};
use crate::{kind::Kind, report::model::Frame};

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
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
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

/// One frame of a location: module, offset, function, line.
type LineKey = (String, String, String, Option<u32>);

/// Where each module is placed: at its link addresses (no load bias), as
/// `go tool pprof` translates no addresses (its -disasm reads the file at
/// the location's address); mappings say which module a location is in.
const MODULE_BASE: u64 = 0;

/// Interns functions, locations and mappings as the profile is built.
struct Builder<'a> {
    modules: HashMap<&'a str, &'a ModuleInfo>,
    strings: Strings,
    functions: Vec<Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Vec<LineKey>, u64>,
    mappings: Vec<Mapping>,
    /// Per module: its mapping and the base its linked addresses are moved by.
    mapping_ids: HashMap<String, (u64, u64)>,
}

impl<'a> Builder<'a> {
    fn new(modules: &'a [ModuleInfo]) -> Self {
        Self {
            modules: modules.iter().map(|m| (m.name.as_str(), m)).collect(),
            strings: Strings::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
        }
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType { r#type: self.strings.id(r#type), unit: self.strings.id(unit) }
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let file = frame.file.clone().unwrap_or_default();
        let key = (frame.function.clone(), file);
        if let Some(id) = self.function_ids.get(&key) {
            return *id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.strings.id(&frame.function);
        let filename = self.strings.id(&key.1);
        self.functions.push(Function { id, name, system_name: name, filename });
        self.function_ids.insert(key, id);
        id
    }

    /// The mapping of a module and the base of its addresses.
    fn mapping(&mut self, module: &str) -> (u64, u64) {
        if let Some(ids) = self.mapping_ids.get(module) {
            return *ids;
        }
        let id = self.mappings.len() as u64 + 1;
        let base = MODULE_BASE;
        let mut mapping = Mapping {
            id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Default::default()
        };
        match self.modules.get(module).copied() {
            Some(info) => {
                mapping.filename = self.strings.id(&info.path);
                mapping.build_id = info.build_id.as_deref().map_or(0, |b| self.strings.id(b));
                if let Some(text) = info.text {
                    mapping.memory_start = base + text.vaddr;
                    mapping.memory_limit = base + text.vaddr + text.size;
                    mapping.file_offset = text.offset;
                }
            }
            None => mapping.filename = self.strings.id(module),
        }
        self.mappings.push(mapping);
        self.mapping_ids.insert(module.to_string(), (id, base));
        (id, base)
    }

    /// A frame's address in the profile: its module's base plus its linked
    /// address (from its file offset), or the offset itself for anonymous code.
    fn address(&self, module: &str, base: u64, offset: u64) -> u64 {
        match self.modules.get(module).and_then(|m| m.text) {
            Some(text) => base + (offset.wrapping_sub(text.offset)).wrapping_add(text.vaddr),
            None => offset,
        }
    }

    /// The location of one code address: its frames, the inlined ones first
    /// and the function they were inlined into last.
    fn location(&mut self, frames: &[Frame]) -> u64 {
        let key: Vec<_> =
            frames.iter().map(|f| (f.module.clone(), f.offset.clone(), f.function.clone(), f.line)).collect();
        if let Some(id) = self.location_ids.get(&key) {
            return *id;
        }
        let outer = frames.last().expect("a location has a frame");
        let (mapping_id, base) = self.mapping(&outer.module);
        let offset = u64::from_str_radix(outer.offset.trim_start_matches("0x"), 16).unwrap_or(0);
        // Frames are return addresses: the location is the call instruction
        // before one (as symbolization looks it up), where -disasm shows the value.
        let address = self.address(&outer.module, base, offset.saturating_sub(1));
        let line = frames
            .iter()
            .map(|f| Line { function_id: self.function(f), line: f.line.unwrap_or(0) as i64 })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location { id, mapping_id, address, line });
        self.location_ids.insert(key, id);
        id
    }

    /// A stack's locations, innermost first: each ends at a frame that was
    /// not inlined (the frames of one address are listed innermost first).
    fn stack(&mut self, frames: &[Frame]) -> Vec<u64> {
        frames.split_inclusive(|f| !f.inlined).map(|group| self.location(group)).collect()
    }
}

/// The pprof profile of one kind of a report.
pub fn profile(report: &Report, kind: Kind) -> Profile {
    let mut b = Builder::new(&report.modules);
    let sample_type = if kind.is_handle() {
        vec![b.value_type(kind.name(), "count")]
    } else {
        vec![b.value_type("inuse_objects", "count"), b.value_type("inuse_space", "bytes")]
    };
    let default_sample_type = sample_type.last().map_or(0, |t| t.r#type);
    let cgroups: HashMap<u32, &str> =
        report.processes.iter().filter_map(|p| Some((p.pid, p.cgroup.as_deref()?))).collect();
    let (pid_key, command_key, cgroup_key) =
        (b.strings.id("pid"), b.strings.id("command"), b.strings.id("cgroup"));
    let mut samples = Vec::new();
    for e in report.entries(kind) {
        let location_id = b.stack(&e.frames);
        let value = match sample_type.len() {
            1 => vec![e.count as i64],
            _ => vec![e.count as i64, e.bytes as i64],
        };
        let mut label = vec![
            Label { key: pid_key, num: e.pid as i64, ..Default::default() },
            Label { key: command_key, str: b.strings.id(&e.command), ..Default::default() },
        ];
        if let Some(cgroup) = cgroups.get(&e.pid) {
            label.push(Label { key: cgroup_key, str: b.strings.id(cgroup), ..Default::default() });
        }
        samples.push(Sample { location_id, value, label });
    }
    let comment =
        b.strings.id(&format!("{kind} outstanding at {:.0}s ({})", report.duration_s, report.end_reason));
    Profile {
        sample_type,
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        time_nanos: report.started_at as i64 * 1_000_000_000,
        duration_nanos: (report.duration_s * 1e9) as i64,
        comment: vec![comment],
        default_sample_type,
        string_table: b.strings.table,
        ..Default::default()
    }
}

/// The gzipped, encoded profile of one kind (`<kind>.pb.gz`).
pub fn encode(report: &Report, kind: Kind) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile(report, kind).encode_to_vec())?;
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

    #[test]
    fn memory_kinds_open_on_inuse_space_and_inlines_share_a_location() {
        let mut report = crate::report::sample::report();
        let at = |function: &str, offset: &str, inlined| Frame {
            function: function.into(),
            module: "demo".into(),
            offset: offset.into(),
            file: Some("demo.c".into()),
            line: Some(7),
            inlined,
        };
        report.stacks[0].frames =
            vec![at("inner", "0x10", true), at("outer", "0x10", false), at("main", "0x20", false)];
        let p = profile(&report, Kind::Heap);
        let name = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<&str> = p.sample_type.iter().map(|t| name(t.r#type)).collect();
        assert_eq!(types, ["inuse_objects", "inuse_space"]);
        assert_eq!(name(p.default_sample_type), "inuse_space");
        assert_eq!(p.sample.iter().map(|s| s.value[1]).sum::<i64>(), 300, "the heap total, nothing else");
        let first = &p.sample[0];
        assert_eq!(first.location_id.len(), 2, "inner+outer at one address, then main");
        let location = &p.location[first.location_id[0] as usize - 1];
        assert_eq!(location.address, 0xf, "no module info: the call before the return address");
        let lines: Vec<&str> =
            location.line.iter().map(|l| name(p.function[l.function_id as usize - 1].name)).collect();
        assert_eq!(lines, ["inner", "outer"], "innermost first, the caller last");
        assert_eq!(name(p.mapping[location.mapping_id as usize - 1].filename), "demo");

        let sockets = profile(&report, Kind::Sockets);
        let types: Vec<&str> =
            sockets.sample_type.iter().map(|t| sockets.string_table[t.r#type as usize].as_str()).collect();
        assert_eq!(types, ["sockets"]);
        assert_eq!(sockets.sample.iter().map(|s| s.value[0]).sum::<i64>(), 2);
    }
}
