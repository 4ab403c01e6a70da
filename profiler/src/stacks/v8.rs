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

use profiler_common::unwind::V8Frames;

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
}

/// The symbols every field above comes from. A symbol in `.bss` (its
/// value is 0) is still defined; a missing one means another layout.
const REQUIRED: [&str; 33] = [
    "v8dbg_off_fp_function",
    "v8dbg_off_fp_context",
    "v8dbg_class_JSFunction__shared__SharedFunctionInfo",
    "v8dbg_class_Map__instance_type__uint16_t",
    "v8dbg_class_SharedFunctionInfo__name_or_scope_info__Object",
    "v8dbg_class_SharedFunctionInfo__script_or_debug_info__HeapObject",
    "v8dbg_class_Script__name__Object",
    "v8dbg_class_Script__source__Object",
    "v8dbg_class_Script__line_ends__Object",
    "v8dbg_class_String__length__int32_t",
    "v8dbg_class_SeqOneByteString__chars__char",
    "v8dbg_class_SeqTwoByteString__chars__char",
    "v8dbg_class_ConsString__first__String",
    "v8dbg_class_ConsString__second__String",
    "v8dbg_class_ThinString__actual__String",
    "v8dbg_class_SlicedString__parent__String",
    "v8dbg_class_SlicedString__offset__SMI",
    "v8dbg_class_FixedArrayBase__length__SMI",
    "v8dbg_class_FixedArray__data__uintptr_t",
    "v8dbg_FirstNonstringType",
    "v8dbg_StringRepresentationMask",
    "v8dbg_StringEncodingMask",
    "v8dbg_SeqStringTag",
    "v8dbg_ConsStringTag",
    "v8dbg_SlicedStringTag",
    "v8dbg_ThinStringTag",
    "v8dbg_OneByteStringTag",
    "v8dbg_type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
    "v8dbg_type_ScopeInfo__SCOPE_INFO_TYPE",
    "v8dbg_type_Script__SCRIPT_TYPE",
    "v8dbg_type_FixedArray__FIXED_ARRAY_TYPE",
    "v8dbg_scopeinfo_idx_first_vars",
    "v8dbg_scopeinfo_idx_ncontextlocals",
];

impl V8Layout {
    /// The layout of the V8 built into `module` (node, or a `libnode.so`);
    /// `None` without V8's metadata, or for a build whose tagged values are
    /// not 64-bit (pointer compression), which the kernel walker does not read.
    pub fn of_module(module: &File) -> Option<Self> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
        let cache = object::ReadCache::new(module);
        let elf = object::File::parse(&cache).ok()?;
        let mut values: HashMap<&str, i64> = HashMap::new();
        for sym in elf.dynamic_symbols().filter(|s| s.is_definition()) {
            let Ok(name) = sym.name() else { continue };
            if !name.starts_with("v8dbg_") {
                continue;
            }
            let Some(wanted) = REQUIRED.iter().chain(["v8dbg_TaggedSize"].iter()).find(|w| **w == name)
            else {
                continue;
            };
            let section = sym.section_index().and_then(|i| elf.section_by_index(i).ok());
            let value = match section {
                Some(s) if s.kind() == SectionKind::UninitializedData => 0,
                Some(s) => {
                    let at = sym.address().checked_sub(s.address())? as usize;
                    let data = s.data().ok()?;
                    i32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as i64
                }
                None => continue,
            };
            values.insert(wanted, value);
        }
        if values.get("v8dbg_TaggedSize") != Some(&8) || REQUIRED.iter().any(|r| !values.contains_key(r)) {
            return None;
        }
        let v = |name: &str| values[name];
        let u = |name: &str| values[name] as u64;
        let t = |name: &str| values[name] as u16;
        Some(Self {
            fp_function: v("v8dbg_off_fp_function"),
            fp_context: v("v8dbg_off_fp_context"),
            function_shared: u("v8dbg_class_JSFunction__shared__SharedFunctionInfo"),
            map_instance_type: u("v8dbg_class_Map__instance_type__uint16_t"),
            sfi_name_or_scope_info: u("v8dbg_class_SharedFunctionInfo__name_or_scope_info__Object"),
            sfi_script_or_debug_info: u("v8dbg_class_SharedFunctionInfo__script_or_debug_info__HeapObject"),
            script_name: u("v8dbg_class_Script__name__Object"),
            script_source: u("v8dbg_class_Script__source__Object"),
            script_line_ends: u("v8dbg_class_Script__line_ends__Object"),
            string_length: u("v8dbg_class_String__length__int32_t"),
            seq_one_byte_chars: u("v8dbg_class_SeqOneByteString__chars__char"),
            seq_two_byte_chars: u("v8dbg_class_SeqTwoByteString__chars__char"),
            cons_first: u("v8dbg_class_ConsString__first__String"),
            cons_second: u("v8dbg_class_ConsString__second__String"),
            thin_actual: u("v8dbg_class_ThinString__actual__String"),
            sliced_parent: u("v8dbg_class_SlicedString__parent__String"),
            sliced_offset: u("v8dbg_class_SlicedString__offset__SMI"),
            fixed_array_length: u("v8dbg_class_FixedArrayBase__length__SMI"),
            fixed_array_data: u("v8dbg_class_FixedArray__data__uintptr_t"),
            first_nonstring_type: t("v8dbg_FirstNonstringType"),
            string_representation_mask: t("v8dbg_StringRepresentationMask"),
            string_encoding_mask: t("v8dbg_StringEncodingMask"),
            seq_string_tag: t("v8dbg_SeqStringTag"),
            cons_string_tag: t("v8dbg_ConsStringTag"),
            sliced_string_tag: t("v8dbg_SlicedStringTag"),
            thin_string_tag: t("v8dbg_ThinStringTag"),
            one_byte_string_tag: t("v8dbg_OneByteStringTag"),
            sfi_type: t("v8dbg_type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE"),
            scope_info_type: t("v8dbg_type_ScopeInfo__SCOPE_INFO_TYPE"),
            script_type: t("v8dbg_type_Script__SCRIPT_TYPE"),
            fixed_array_type: t("v8dbg_type_FixedArray__FIXED_ARRAY_TYPE"),
            scope_info_first_vars: u("v8dbg_scopeinfo_idx_first_vars"),
            scope_info_context_locals: u("v8dbg_scopeinfo_idx_ncontextlocals"),
        })
    }

    /// What the kernel walker needs; all zero (not walked as V8) unless
    /// the context is the word above the function, which the walker reads
    /// together.
    pub fn frames(&self) -> V8Frames {
        if self.fp_context != self.fp_function + 8 {
            return V8Frames::default();
        }
        let (Ok(fp_context), Ok(fp_function), Ok(function_shared)) = (
            i8::try_from(self.fp_context),
            i8::try_from(self.fp_function),
            u16::try_from(self.function_shared),
        ) else {
            return V8Frames::default();
        };
        V8Frames { fp_context, fp_function, function_shared }
    }
}

/// A heap object pointer carries 1 in its low bits; a small integer 0.
fn is_heap_object(word: u64) -> bool {
    word & 3 == 1
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
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: one local iovec over `buf`, which outlives the call.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        n == buf.len() as isize
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// The object's address and instance type, if `tagged` points to one.
    fn object(&mut self, tagged: u64) -> Option<(u64, u16)> {
        if !is_heap_object(tagged) {
            return None;
        }
        let addr = tagged - 1;
        let map = self.word(addr)?;
        if !is_heap_object(map) {
            return None;
        }
        if let Some(t) = self.map_types.get(&map) {
            return Some((addr, *t));
        }
        let mut b = [0u8; 2];
        if !self.read(map - 1 + self.layout.map_instance_type, &mut b) {
            return None;
        }
        let t = u16::from_le_bytes(b);
        self.map_types.insert(map, t);
        Some((addr, t))
    }

    /// The JS function whose `SharedFunctionInfo` is at `tagged`.
    pub fn function(&mut self, tagged: u64) -> Option<Arc<JsFunction>> {
        if let Some(known) = self.functions.get(&tagged) {
            return known.clone();
        }
        if self.functions.len() >= MAX_FUNCTIONS {
            self.functions.clear();
        }
        let started = std::time::Instant::now();
        let named = self.read_function(tagged).map(Arc::new);
        self.stats.read_ms += started.elapsed().as_secs_f64() * 1e3;
        match named {
            Some(_) => self.stats.functions_named += 1,
            None => self.stats.functions_unreadable += 1,
        }
        self.functions.insert(tagged, named.clone());
        named
    }

    fn read_function(&mut self, tagged: u64) -> Option<JsFunction> {
        let l = self.layout.clone();
        let (sfi, t) = self.object(tagged)?;
        if t != l.sfi_type {
            return None;
        }
        let mut function = JsFunction { name: String::new(), script: String::new(), line: 0, column: 0 };
        let mut start = None;
        let name_or_scope = self.word(sfi + l.sfi_name_or_scope_info)?;
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
        let script = self.word(sfi + l.sfi_script_or_debug_info)?;
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
        if !self.read(scope + 8, &mut b) {
            return (None, None);
        }
        let slot = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let locals = smi(slot(self.layout.scope_info_context_locals as usize % SLOTS)).unwrap_or(0);
        let first = self.layout.scope_info_first_vars as usize + 2 * locals.clamp(0, SLOTS as i64) as usize;
        let (mut name, mut previous) = (None, 1u64);
        for i in first..SLOTS {
            let word = slot(i);
            if name.is_none() && is_heap_object(word) {
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
        let url =
            self.word(script + l.script_name).and_then(|n| self.string(n, MAX_NAME)).unwrap_or_default();
        let line_ends = self
            .word(script + l.script_line_ends)
            .and_then(|ends| self.line_ends(ends))
            .or_else(|| {
                // Positions count UTF-16 units, as the source is read.
                let source = self.string_units(self.word(script + l.script_source)?, MAX_SOURCE)?;
                Some((0..source.len()).filter(|&i| source[i] == u16::from(b'\n')).map(|i| i as u32).collect())
            })
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
        let n = smi(self.word(array + self.layout.fixed_array_length)?)?;
        if !(1..=(MAX_SOURCE as i64 / 8)).contains(&n) {
            return None;
        }
        let mut b = vec![0u8; n as usize * 8];
        if !self.read(array + self.layout.fixed_array_data, &mut b) {
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
        self.read(s + self.layout.string_length, &mut b).then_some(())?;
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
                self.read(s + l.seq_one_byte_chars + from as u64, &mut chars).then_some(())?;
                out.extend(chars.iter().map(|&c| c as u16));
            } else {
                let mut chars = vec![0u8; 2 * (end - from)];
                self.read(s + l.seq_two_byte_chars + 2 * from as u64, &mut chars).then_some(())?;
                out.extend(chars.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
            }
            Some(())
        } else if representation == l.cons_string_tag {
            let first = self.word(s + l.cons_first)?;
            let second = self.word(s + l.cons_second)?;
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
            let parent = self.word(s + l.sliced_parent)?;
            let offset = smi(self.word(s + l.sliced_offset)?)?.max(0) as usize;
            self.append_string(parent, offset + from, end - from, max, out, depth + 1)
        } else if representation == l.thin_string_tag {
            let actual = self.word(s + l.thin_actual)?;
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
    let line_start = if line == 0 { 0 } else { line_ends[line - 1] + 1 };
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
        assert!(is_heap_object(0x7f00_0000_1001));
        assert!(!is_heap_object(15u64 << 32));
    }

    #[test]
    fn the_layout_of_this_machines_node_is_read() {
        let Ok(node) = File::open("/usr/bin/node") else { return };
        let Some(layout) = V8Layout::of_module(&node) else { return };
        let frames = layout.frames();
        assert_eq!((frames.fp_context, frames.fp_function), (-8, -16), "V8's standard frame");
        assert!(frames.function_shared > 0);
        assert!(layout.sfi_type != 0 && layout.script_type != 0 && layout.first_nonstring_type != 0);
    }
}
