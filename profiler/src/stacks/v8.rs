//! Naming JS frames from V8's own heap, without perf maps and without
//! restarting node: the kernel walker records a JS frame as its function's
//! `SharedFunctionInfo` ([`profiler_common::V8_FUNCTION`]); this module reads
//! the engine's object layout from its postmortem metadata (the `v8dbg_*`
//! symbols node exports) and, from the target's memory, the function's
//! name, its script's URL and the line and column where it starts.
//!
//! The objects are read when a stack is first seen, shortly after the event.
//! Every object's type is checked against its map before it is trusted; a
//! function that cannot be read stays an unnamed JS frame.

use std::{collections::HashMap, fs::File, sync::Arc};

use profiler_common::{
    is_v8_heap_object,
    unwind::{v8_stamp, V8Frames},
    V8_FUNCTION_ADDRESS, V8_STAMP_SHIFT,
};

use crate::report::model::JsNaming;

/// What one `SharedFunctionInfo` names: perf maps' format (`JS:name
/// url:line:column`) in [`JsFunction::label`], so one JS function reads the
/// same from both sources.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JsFunction {
    pub name: String,
    /// The script's URL (`/srv/app.js`, `node:internal/...`); empty when it has none.
    pub script: String,
    /// 1-based; 0 when the script's source could not be read.
    pub line: u32,
    pub column: u32,
}

impl JsFunction {
    pub fn label(&self) -> String {
        let name = if self.name.is_empty() { "(anonymous)" } else { &self.name };
        match (self.script.is_empty(), self.line) {
            (true, _) => format!("JS:{name}"),
            (false, 0) => format!("JS:{name} {}", self.script),
            (false, line) => format!("JS:{name} {}:{line}:{}", self.script, self.column),
        }
    }
}

/// Offsets and type numbers of the V8 objects read, from `v8dbg_*` symbols.
#[derive(Clone, Debug, Default)]
pub struct V8Layout {
    fp_function: i64,
    fp_context: i64,
    function_shared: u64,
    map_instance_type: u64,
    sfi_name_or_scope_info: u64,
    sfi_script_or_debug_info: u64,
    script_name: u64,
    script_source: u64,
    script_line_ends: u64,
    string_length: u64,
    seq_one_byte_chars: u64,
    seq_two_byte_chars: u64,
    cons_first: u64,
    cons_second: u64,
    thin_actual: u64,
    sliced_parent: u64,
    sliced_offset: u64,
    fixed_array_length: u64,
    fixed_array_data: u64,
    first_nonstring_type: u16,
    string_representation_mask: u16,
    string_encoding_mask: u16,
    seq_string_tag: u16,
    cons_string_tag: u16,
    sliced_string_tag: u16,
    thin_string_tag: u16,
    one_byte_string_tag: u16,
    sfi_type: u16,
    scope_info_type: u16,
    script_type: u16,
    fixed_array_type: u16,
    scope_info_first_vars: u64,
    scope_info_context_locals: u64,
    /// Offset of the `SharedFunctionInfo` fields stamped (see `V8Frames::shared_stamp`).
    sfi_stamp: Option<u64>,
}

/// V8's postmortem metadata: each `v8dbg_*` symbol of a module holds one
/// 32-bit value (a symbol in `.bss` holds 0).
struct Metadata(HashMap<String, i64>);

impl Metadata {
    fn read(module: &File) -> Option<Self> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
        let cache = object::ReadCache::new(module);
        let elf = object::File::parse(&cache).ok()?;
        let mut values = HashMap::new();
        for sym in elf.dynamic_symbols().filter(|s| s.is_definition()) {
            let Ok(name) = sym.name() else { continue };
            let Some(name) = name.strip_prefix("v8dbg_") else { continue };
            let Some(section) = sym.section_index().and_then(|i| elf.section_by_index(i).ok()) else {
                continue;
            };
            let value = if section.kind() == SectionKind::UninitializedData {
                Some(0)
            } else {
                (|| {
                    let at = sym.address().checked_sub(section.address())? as usize;
                    let bytes = section.data().ok()?.get(at..at.checked_add(4)?)?;
                    Some(i32::from_le_bytes(bytes.try_into().ok()?) as i64)
                })()
            };
            if let Some(value) = value {
                values.insert(name.to_string(), value);
            }
        }
        (!values.is_empty()).then_some(Self(values))
    }

    /// A constant (`FirstNonstringType`, `off_fp_function`, `type_Script__SCRIPT_TYPE`).
    fn constant(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }

    /// A field's offset in a class, under the first of `fields` the build
    /// has, whatever type it is declared with (V8 renames both across
    /// versions: `script_or_debug_info__HeapObject` in node 20, `script__Tagged_HeapObject_` in 22).
    fn field(&self, class: &str, fields: &[&str]) -> Option<u64> {
        fields.iter().find_map(|field| {
            let prefix = format!("class_{class}__{field}__");
            self.0.iter().find(|(name, _)| name.starts_with(&prefix)).map(|(_, v)| *v as u64)
        })
    }
}

impl V8Layout {
    /// The layout of the V8 built into `module` (node, or a `libnode.so`);
    /// `None` without V8's metadata (or with a part of it this reader does
    /// not know), or for a build whose tagged values are not 64-bit
    /// (pointer compression), which the kernel walker does not read.
    pub fn of_module(module: &File) -> Option<Self> {
        let m = Metadata::read(module)?;
        if m.constant("TaggedSize")? != 8 {
            return None;
        }
        let c = |name: &str| m.constant(name);
        let t = |name: &str| c(name).map(|v| v as u16);
        Some(Self {
            fp_function: c("off_fp_function")?,
            fp_context: c("off_fp_context")?,
            function_shared: m.field("JSFunction", &["shared"])?,
            map_instance_type: m.field("Map", &["instance_type"])?,
            sfi_name_or_scope_info: m.field("SharedFunctionInfo", &["name_or_scope_info"])?,
            sfi_script_or_debug_info: m.field("SharedFunctionInfo", &["script_or_debug_info", "script"])?,
            script_name: m.field("Script", &["name"])?,
            script_source: m.field("Script", &["source"])?,
            script_line_ends: m.field("Script", &["line_ends"])?,
            string_length: m.field("String", &["length"])?,
            seq_one_byte_chars: m.field("SeqOneByteString", &["chars"])?,
            seq_two_byte_chars: m.field("SeqTwoByteString", &["chars"])?,
            cons_first: m.field("ConsString", &["first"])?,
            cons_second: m.field("ConsString", &["second"])?,
            thin_actual: m.field("ThinString", &["actual"])?,
            sliced_parent: m.field("SlicedString", &["parent"])?,
            sliced_offset: m.field("SlicedString", &["offset"])?,
            fixed_array_length: m.field("FixedArrayBase", &["length"])?,
            fixed_array_data: m.field("FixedArray", &["data"])?,
            first_nonstring_type: t("FirstNonstringType")?,
            string_representation_mask: t("StringRepresentationMask")?,
            string_encoding_mask: t("StringEncodingMask")?,
            seq_string_tag: t("SeqStringTag")?,
            cons_string_tag: t("ConsStringTag")?,
            sliced_string_tag: t("SlicedStringTag")?,
            thin_string_tag: t("ThinStringTag")?,
            one_byte_string_tag: t("OneByteStringTag")?,
            sfi_type: t("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
            scope_info_type: t("type_ScopeInfo__SCOPE_INFO_TYPE")?,
            script_type: t("type_Script__SCRIPT_TYPE")?,
            fixed_array_type: t("type_FixedArray__FIXED_ARRAY_TYPE")?,
            scope_info_first_vars: c("scopeinfo_idx_first_vars")? as u64,
            scope_info_context_locals: c("scopeinfo_idx_ncontextlocals")? as u64,
            sfi_stamp: m.field("SharedFunctionInfo", &["length"]).filter(|&length| {
                m.field("SharedFunctionInfo", &["internal_formal_parameter_count"]) == Some(length + 2)
                    && m.field("SharedFunctionInfo", &["raw_function_token_offset"]) == Some(length + 4)
            }),
        })
    }

    /// What the kernel walker needs; all zero (not walked as V8) unless
    /// the context is the word above the function, which the walker reads
    /// together.
    pub fn frames(&self) -> V8Frames {
        if self.fp_context != self.fp_function + 8 {
            return V8Frames::default();
        }
        let (Ok(fp_function), Ok(function_shared)) =
            (i8::try_from(self.fp_function), u16::try_from(self.function_shared))
        else {
            return V8Frames::default();
        };
        let shared_stamp = self.sfi_stamp.and_then(|o| u16::try_from(o).ok()).unwrap_or(0);
        V8Frames { fp_function, _pad: 0, function_shared, shared_stamp, _pad2: 0 }
    }
}

/// A small integer's value (64-bit tagged values keep it in the upper half).
fn smi(word: u64) -> Option<i64> {
    (word & 1 == 0).then_some((word as i64) >> 32)
}

/// Longest function or script name kept, and longest source scanned for line ends.
const MAX_NAME: usize = 1024;
const MAX_SOURCE: usize = 4 << 20;
/// Nested cons/sliced/thin strings followed.
const MAX_STRING_DEPTH: u32 = 32;
/// Functions named per process before the cache starts over.
const MAX_FUNCTIONS: usize = 1 << 16;
/// Lines of a script whose line ends are kept (1 MiB of them).
const MAX_LINES: usize = 1 << 18;
/// Scripts whose line ends are kept per process (each at most `MAX_LINES` of them).
const MAX_SCRIPTS: usize = 1024;

/// A script's URL and where its lines end.
struct Script {
    url: String,
    line_ends: Vec<u32>,
}

/// Reads functions of one process's V8 heap, caching by object address.
pub struct V8Heap {
    pid: u32,
    layout: V8Layout,
    map_types: HashMap<u64, u16>,
    functions: HashMap<u64, Option<Arc<JsFunction>>>,
    scripts: HashMap<u64, Arc<Script>>,
    pub stats: JsNaming,
}

impl V8Heap {
    pub fn new(pid: u32, layout: V8Layout) -> Self {
        Self {
            pid,
            layout,
            map_types: HashMap::new(),
            functions: HashMap::new(),
            scripts: HashMap::new(),
            stats: JsNaming::default(),
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        crate::process::read_memory(self.pid, addr, buf)
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// The object's address and instance type, if `tagged` points to one.
    fn object(&mut self, tagged: u64) -> Option<(u64, u16)> {
        if !is_v8_heap_object(tagged) {
            return None;
        }
        let addr = tagged - 1;
        let map = self.word(addr)?;
        if !is_v8_heap_object(map) {
            return None;
        }
        if let Some(t) = self.map_types.get(&map) {
            return Some((addr, *t));
        }
        let mut b = [0u8; 2];
        if !self.read((map - 1).wrapping_add(self.layout.map_instance_type), &mut b) {
            return None;
        }
        let t = u16::from_le_bytes(b);
        self.map_types.insert(map, t);
        Some((addr, t))
    }

    /// The JS function of a frame word the kernel walker recorded (its
    /// `SharedFunctionInfo` and stamp).
    pub fn function(&mut self, word: u64) -> Option<Arc<JsFunction>> {
        if let Some(known) = self.functions.get(&word) {
            return known.clone();
        }
        if self.functions.len() >= MAX_FUNCTIONS || self.scripts.len() >= MAX_SCRIPTS {
            // Starts over: a fleet agent meets new code for days.
            self.functions.clear();
            self.scripts.clear();
            self.map_types.clear();
        }
        let started = std::time::Instant::now();
        let named = self.read_function(word).map(Arc::new);
        self.stats.read_ms += started.elapsed().as_secs_f64() * 1e3;
        match named {
            Some(_) => self.stats.functions_named += 1,
            None => self.stats.functions_unreadable += 1,
        }
        self.functions.insert(word, named.clone());
        named
    }

    /// Where the `SharedFunctionInfo` of frame word `word` is now: at its
    /// recorded address if that still holds it (the type and the stamp
    /// match), else where V8 moved it, if the old copy still says so (a
    /// moved object's map word is its new address, until its page is reused).
    fn locate_function(&mut self, word: u64) -> Option<u64> {
        let stamp = (word >> V8_STAMP_SHIFT) & 0xffff;
        let mut tagged = word & V8_FUNCTION_ADDRESS;
        for _ in 0..2 {
            let map_word = self.word(tagged.wrapping_sub(1))?;
            if is_v8_heap_object(map_word) {
                let (sfi, t) = self.object(tagged)?;
                let stamped = match self.layout.sfi_stamp {
                    Some(at) => v8_stamp(self.word(sfi.wrapping_add(at))?) == stamp,
                    None => true,
                };
                return (t == self.layout.sfi_type && stamped).then_some(sfi);
            }
            if map_word == 0 || map_word & 7 != 0 {
                return None;
            }
            self.stats.functions_moved += 1;
            tagged = map_word + 1;
        }
        None
    }

    fn read_function(&mut self, word: u64) -> Option<JsFunction> {
        let l = self.layout.clone();
        let sfi = self.locate_function(word)?;
        let mut function = JsFunction { name: String::new(), script: String::new(), line: 0, column: 0 };
        let mut start = None;
        let name_or_scope = self.word(sfi.wrapping_add(l.sfi_name_or_scope_info))?;
        match self.object(name_or_scope) {
            Some((scope, t)) if t == l.scope_info_type => {
                let (name, position) = self.scope_info(scope);
                function.name = name.unwrap_or_default();
                start = position;
            }
            Some((_, t)) if t < l.first_nonstring_type => {
                function.name = self.string(name_or_scope, MAX_NAME)?;
            }
            _ => {}
        }
        let script = self.word(sfi.wrapping_add(l.sfi_script_or_debug_info))?;
        if let Some(script) = self.script(script) {
            function.script = script.url.clone();
            if let Some(start) = start {
                (function.line, function.column) = line_and_column(&script.line_ends, start);
            }
        }
        Some(function)
    }

    /// The function name and start position in a `ScopeInfo`, whose layout
    /// varies by V8 version and is not in the metadata: past the fixed
    /// slots and the context locals' names and infos, the first string is
    /// the function's name and the first pair of rising small integers its
    /// start and end (the approach of the OTel profiler).
    fn scope_info(&mut self, scope: u64) -> (Option<String>, Option<u32>) {
        const SLOTS: usize = 16;
        let mut b = [0u8; SLOTS * 8];
        if !self.read(scope.wrapping_add(8), &mut b) {
            return (None, None);
        }
        let slot = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let locals = smi(slot(self.layout.scope_info_context_locals as usize % SLOTS)).unwrap_or(0);
        let first = self.layout.scope_info_first_vars as usize + 2 * locals.clamp(0, SLOTS as i64) as usize;
        let (mut name, mut previous) = (None, 1u64);
        for i in first..SLOTS {
            let word = slot(i);
            if name.is_none() && is_v8_heap_object(word) {
                name = self.string(word, MAX_NAME);
            }
            if let (Some(start), Some(end)) = (smi(previous), smi(word)) {
                if (0..end).contains(&start) {
                    return (name, u32::try_from(start).ok());
                }
            }
            previous = word;
        }
        (name, None)
    }

    fn script(&mut self, tagged: u64) -> Option<Arc<Script>> {
        if let Some(known) = self.scripts.get(&tagged) {
            return Some(known.clone());
        }
        let l = self.layout.clone();
        let (script, t) = self.object(tagged)?;
        if t != l.script_type {
            return None;
        }
        let url = self
            .word(script.wrapping_add(l.script_name))
            .and_then(|n| self.string(n, MAX_NAME))
            .unwrap_or_default();
        let line_ends = self
            .word(script.wrapping_add(l.script_line_ends))
            .and_then(|ends| self.line_ends(ends))
            .or_else(|| {
                // Positions count UTF-16 units, as the source is read.
                let source =
                    self.string_units(self.word(script.wrapping_add(l.script_source))?, MAX_SOURCE)?;
                Some((0..source.len()).filter(|&i| source[i] == u16::from(b'\n')).map(|i| i as u32).collect())
            })
            // Past the bound the lines are not known (not guessed).
            .filter(|ends: &Vec<u32>| ends.len() <= MAX_LINES)
            .unwrap_or_default();
        let script = Arc::new(Script { url, line_ends });
        self.scripts.insert(tagged, script.clone());
        Some(script)
    }

    /// A script's computed line ends (a `FixedArray` of small integers).
    fn line_ends(&mut self, tagged: u64) -> Option<Vec<u32>> {
        let (array, t) = self.object(tagged)?;
        if t != self.layout.fixed_array_type {
            return None;
        }
        let n = smi(self.word(array.wrapping_add(self.layout.fixed_array_length))?)?;
        if !(1..=(MAX_SOURCE as i64 / 8)).contains(&n) {
            return None;
        }
        let mut b = vec![0u8; n as usize * 8];
        if !self.read(array.wrapping_add(self.layout.fixed_array_data), &mut b) {
            return None;
        }
        b.chunks_exact(8).map(|w| smi(u64::from_le_bytes(w.try_into().unwrap())).map(|v| v as u32)).collect()
    }

    /// A string of up to `max` characters (external strings are not read).
    fn string(&mut self, tagged: u64, max: usize) -> Option<String> {
        Some(String::from_utf16_lossy(&self.string_units(tagged, max)?))
    }

    /// A string's UTF-16 units, up to `max`.
    fn string_units(&mut self, tagged: u64, max: usize) -> Option<Vec<u16>> {
        let mut out = Vec::new();
        self.append_string(tagged, 0, usize::MAX, max, &mut out, 0)?;
        Some(out)
    }

    /// A string's address, instance type and length.
    fn string_header(&mut self, tagged: u64) -> Option<(u64, u16, usize)> {
        let (s, t) = self.object(tagged)?;
        if t >= self.layout.first_nonstring_type {
            return None;
        }
        let mut b = [0u8; 4];
        self.read(s.wrapping_add(self.layout.string_length), &mut b).then_some(())?;
        Some((s, t, i32::from_le_bytes(b).max(0) as usize))
    }

    /// Appends characters `from..from + len` (bounded by its length) of the
    /// string at `tagged`, failing past `max` characters in all.
    fn append_string(
        &mut self,
        tagged: u64,
        from: usize,
        len: usize,
        max: usize,
        out: &mut Vec<u16>,
        depth: u32,
    ) -> Option<()> {
        let l = self.layout.clone();
        let (s, t, length) = self.string_header(tagged)?;
        let end = from.saturating_add(len).min(length);
        if from >= end {
            return Some(());
        }
        if depth > MAX_STRING_DEPTH || out.len() + (end - from) > max {
            return None;
        }
        let representation = t & l.string_representation_mask;
        if representation == l.seq_string_tag {
            if t & l.string_encoding_mask == l.one_byte_string_tag {
                let mut chars = vec![0u8; end - from];
                self.read(s.wrapping_add(l.seq_one_byte_chars).wrapping_add(from as u64), &mut chars)
                    .then_some(())?;
                out.extend(chars.iter().map(|&c| c as u16));
            } else {
                let mut chars = vec![0u8; 2 * (end - from)];
                self.read(s.wrapping_add(l.seq_two_byte_chars).wrapping_add(2 * from as u64), &mut chars)
                    .then_some(())?;
                out.extend(chars.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
            }
            Some(())
        } else if representation == l.cons_string_tag {
            let first = self.word(s.wrapping_add(l.cons_first))?;
            let second = self.word(s.wrapping_add(l.cons_second))?;
            let (_, _, first_length) = self.string_header(first)?;
            if from < first_length {
                self.append_string(first, from, end.min(first_length) - from, max, out, depth + 1)?;
            }
            if end > first_length {
                let start = from.max(first_length);
                self.append_string(second, start - first_length, end - start, max, out, depth + 1)?;
            }
            Some(())
        } else if representation == l.sliced_string_tag {
            let parent = self.word(s.wrapping_add(l.sliced_parent))?;
            let offset = smi(self.word(s.wrapping_add(l.sliced_offset))?)?.max(0) as usize;
            self.append_string(parent, offset.checked_add(from)?, end - from, max, out, depth + 1)
        } else if representation == l.thin_string_tag {
            let actual = self.word(s.wrapping_add(l.thin_actual))?;
            self.append_string(actual, from, end - from, max, out, depth + 1)
        } else {
            None
        }
    }
}

/// The 1-based line and column of character `position`, given the
/// positions of the line ends.
fn line_and_column(line_ends: &[u32], position: u32) -> (u32, u32) {
    if line_ends.is_empty() {
        return (0, 0);
    }
    let line = line_ends.partition_point(|&end| end < position);
    let line_start = if line == 0 { 0 } else { line_ends[line - 1].saturating_add(1) };
    (line as u32 + 1, position.saturating_sub(line_start) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_perf_maps_write_them() {
        let f = JsFunction { name: "leak".into(), script: "/app/a.js".into(), line: 3, column: 14 };
        assert_eq!(f.label(), "JS:leak /app/a.js:3:14");
        let anonymous = JsFunction { name: String::new(), ..f.clone() };
        assert_eq!(anonymous.label(), "JS:(anonymous) /app/a.js:3:14");
        assert_eq!(JsFunction { line: 0, ..f.clone() }.label(), "JS:leak /app/a.js");
        assert_eq!(JsFunction { script: String::new(), ..f }.label(), "JS:leak");
    }

    #[test]
    fn positions_become_lines_and_columns() {
        // "ab\ncd\n\nef": line ends at 2, 5, 6.
        let ends = [2, 5, 6];
        assert_eq!(line_and_column(&ends, 0), (1, 1));
        assert_eq!(line_and_column(&ends, 2), (1, 3));
        assert_eq!(line_and_column(&ends, 3), (2, 1));
        assert_eq!(line_and_column(&ends, 7), (4, 1));
        assert_eq!(line_and_column(&[], 7), (0, 0));
    }

    #[test]
    fn small_integers_and_heap_pointers_are_told_apart() {
        assert_eq!(smi(15u64 << 32), Some(15));
        assert_eq!(smi(0x7f00_0000_1001), None);
        assert!(is_v8_heap_object(0x7f00_0000_1001));
        assert!(!is_v8_heap_object(15u64 << 32));
    }

    #[test]
    fn the_layouts_of_the_nodes_here_are_read() {
        // This machine's node, and node 22 from the npm registry where `.ci/run` installed it.
        let other = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/node-22/node_modules/node/bin/node");
        for path in ["/usr/bin/node", other] {
            let Ok(node) = File::open(path) else { continue };
            let layout = V8Layout::of_module(&node).unwrap_or_else(|| panic!("{path}: no V8 layout"));
            let frames = layout.frames();
            assert_eq!(frames.fp_function, -16, "{path}: V8's standard frame");
            assert!(frames.function_shared > 0 && frames.shared_stamp > 0, "{path}: {frames:?}");
            assert!(layout.sfi_type != 0 && layout.script_type != 0 && layout.first_nonstring_type != 0);
        }
    }
}
