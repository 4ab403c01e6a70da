//! Which allocator a process really uses, and where its entry points are.
//! Every mapped object is looked at (the executable, LD_PRELOAD'ed and
//! linked libraries, the C library): each entry point it defines, in its
//! dynamic or static symbol table, is probed there. So glibc and musl,
//! jemalloc, tcmalloc and mimalloc (linked or preloaded), prefixed builds
//! (`je_`, Rust jemallocator's `_rjem_`) and an allocator linked statically
//! into the executable are all seen; an entry point no code calls costs
//! nothing. C++ `operator new`/`delete` are probed only in an object that
//! also defines `malloc` (an allocator replacing both, as tcmalloc does,
//! whose `new` never calls `malloc`), never in libstdc++, whose `new` calls
//! `malloc` and is seen there.
//!
//! Each entry point is probed with the kernel program of the standard call
//! whose arguments it shares (`mallocx(size, flags)` as `malloc`,
//! `sdallocx(ptr, size, flags)` as `free`, ...).

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use profiler_common::AllocApi::{self, *};

use crate::{
    files::target::{open_mapped, ModuleFile},
    kernel::placement::{self, Placement},
    stacks::procmaps::{Mapping, ProcessMaps},
};

/// The C standard entry points (and their common extensions), by name.
const STANDARD: [(&str, AllocApi); 11] = [
    ("malloc", Malloc),
    ("calloc", Calloc),
    ("realloc", Realloc),
    ("reallocarray", Reallocarray),
    ("free", Free),
    ("cfree", Free),
    ("posix_memalign", PosixMemalign),
    ("aligned_alloc", AlignedAlloc),
    ("memalign", Memalign),
    ("valloc", Valloc),
    ("pvalloc", Pvalloc),
];

/// jemalloc's own API; with the standard names, also under its prefixes.
const JEMALLOC: [(&str, AllocApi); 4] =
    [("mallocx", Malloc), ("rallocx", Realloc), ("dallocx", Free), ("sdallocx", Free)];
const JEMALLOC_PREFIXES: [&str; 2] = ["je_", "_rjem_"];

const TCMALLOC: [(&str, AllocApi); 20] = [
    ("tc_malloc", Malloc),
    ("tc_malloc_skip_new_handler", Malloc),
    ("tc_calloc", Calloc),
    ("tc_realloc", Realloc),
    ("tc_free", Free),
    ("tc_free_sized", Free),
    ("tc_cfree", Free),
    ("tc_memalign", Memalign),
    ("tc_posix_memalign", PosixMemalign),
    ("tc_valloc", Valloc),
    ("tc_pvalloc", Pvalloc),
    ("tc_new", Malloc),
    ("tc_new_nothrow", Malloc),
    ("tc_newarray", Malloc),
    ("tc_newarray_nothrow", Malloc),
    ("tc_delete", Free),
    ("tc_delete_sized", Free),
    ("tc_delete_nothrow", Free),
    ("tc_deletearray", Free),
    ("tc_deletearray_sized", Free),
];

const MIMALLOC: [(&str, AllocApi); 11] = [
    ("mi_malloc", Malloc),
    ("mi_zalloc", Malloc),
    ("mi_calloc", Calloc),
    ("mi_realloc", Realloc),
    ("mi_free", Free),
    ("mi_malloc_aligned", Malloc),
    ("mi_zalloc_aligned", Malloc),
    ("mi_realloc_aligned", Realloc),
    ("mi_aligned_alloc", AlignedAlloc),
    ("mi_posix_memalign", PosixMemalign),
    ("mi_memalign", Memalign),
];

/// C++ `operator new` / `delete` (plain, nothrow, aligned, sized), mangled.
const CXX: [(&str, AllocApi); 16] = [
    ("_Znwm", Malloc),
    ("_Znam", Malloc),
    ("_ZnwmRKSt9nothrow_t", Malloc),
    ("_ZnamRKSt9nothrow_t", Malloc),
    ("_ZnwmSt11align_val_t", Malloc),
    ("_ZnamSt11align_val_t", Malloc),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Malloc),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Malloc),
    ("_ZdlPv", Free),
    ("_ZdaPv", Free),
    ("_ZdlPvm", Free),
    ("_ZdaPvm", Free),
    ("_ZdlPvSt11align_val_t", Free),
    ("_ZdaPvSt11align_val_t", Free),
    ("_ZdlPvmSt11align_val_t", Free),
    ("_ZdaPvmSt11align_val_t", Free),
];

/// Why the alloc lens cannot see a process's heap.
pub const NOT_FOUND: &str = "no allocator found: no mapped object defines malloc or another known allocator \
     entry point (a stripped static binary, or an unknown allocator), so the alloc lens has nothing to \
     probe (--lens resident works without)";

/// What kind of allocator an object is, from what it defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// glibc or musl.
    CLibrary,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    /// Defines allocator entry points under no known family's names.
    Other,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::CLibrary => "C library",
            Self::Jemalloc => "jemalloc",
            Self::Tcmalloc => "tcmalloc",
            Self::Mimalloc => "mimalloc",
            Self::Other => "allocator",
        }
    }
}

/// One entry point to probe: its symbol and the kernel program that fits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub symbol: String,
    pub api: AllocApi,
    pub address: u64,
    pub size: u64,
    /// Where its code is in the file, found when the image is parsed (so
    /// attaching reads and parses nothing again).
    pub code: Option<Code>,
}

/// An entry point's code in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub file_offset: u64,
    /// Where an entry probe goes with `--probe-placement emulated`.
    pub emulated: Placement,
}

/// A mapped object that defines allocator entry points.
#[derive(Debug)]
pub struct AllocatorImage {
    /// Its path as the process sees it.
    pub path: String,
    pub family: Family,
    pub entries: Vec<EntryPoint>,
    pub file: ModuleFile,
    /// (device, inode) of the file.
    pub id: (u64, u64),
}

/// Every known entry point `defined` by one object (by symbol name).
pub fn entry_points(defined: &dyn Fn(&str) -> Option<(u64, u64)>) -> (Family, Vec<EntryPoint>) {
    let mut names: Vec<(String, AllocApi)> = STANDARD.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    for prefix in std::iter::once("").chain(JEMALLOC_PREFIXES) {
        names.extend(JEMALLOC.iter().map(|(n, a)| (format!("{prefix}{n}"), *a)));
        if !prefix.is_empty() {
            names.extend(STANDARD.iter().map(|(n, a)| (format!("{prefix}{n}"), *a)));
        }
    }
    names.extend(TCMALLOC.iter().chain(&MIMALLOC).map(|(n, a)| (n.to_string(), *a)));
    let replaces_malloc = defined("malloc").is_some();
    if replaces_malloc {
        names.extend(CXX.iter().map(|(n, a)| (n.to_string(), *a)));
    }
    let entries: Vec<EntryPoint> = names
        .into_iter()
        .filter_map(|(symbol, api)| {
            defined(&symbol).map(|(address, size)| EntryPoint { symbol, api, address, size, code: None })
        })
        .collect();
    let has = |prefix: &str| entries.iter().any(|e| e.symbol.starts_with(prefix));
    let family = if has("tc_") {
        Family::Tcmalloc
    } else if has("mi_") {
        Family::Mimalloc
    } else if has("mallocx") || has("je_") || has("_rjem_") {
        Family::Jemalloc
    } else {
        Family::Other
    };
    (family, entries)
}

/// The allocator images of process `pid` (from its `maps`): each mapped
/// object with executable code that defines an entry point, opened as mapped.
pub fn find(pid: u32, maps: &ProcessMaps) -> Vec<AllocatorImage> {
    find_new(pid, maps, &|_| false).0
}

/// Like [`find`], leaving out (unparsed) the files `known` says are probed
/// already; also says whether any was left out.
pub fn find_new(
    pid: u32,
    maps: &ProcessMaps,
    known: &dyn Fn((u64, u64)) -> bool,
) -> (Vec<AllocatorImage>, bool) {
    let mut any_known = false;
    let mut seen = std::collections::HashSet::new();
    let mut images = Vec::new();
    for mapping in maps.mappings.iter().filter(|m| m.executable) {
        let Some(path) = mapping.file() else { continue };
        if !seen.insert(path.to_string()) {
            continue;
        }
        match image_of(pid, maps, mapping, known) {
            Ok(Some(image)) => images.push(image),
            Ok(None) => {}
            Err(Known) => any_known = true,
        }
    }
    (images, any_known)
}

/// An image already probed.
struct Known;

fn image_of(
    pid: u32,
    maps: &ProcessMaps,
    mapping: &Mapping,
    known: &dyn Fn((u64, u64)) -> bool,
) -> Result<Option<AllocatorImage>, Known> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = mapping.file().map(str::to_string) else { return Ok(None) };
    // The whole file: symbols may lie outside the executable mapping's range.
    let first = maps.mappings.iter().find(|m| m.file() == Some(&path)).unwrap_or(mapping);
    let Ok(file) = open_mapped(pid, first) else { return Ok(None) };
    let Ok(meta) = file.file.metadata() else { return Ok(None) };
    let id = (meta.dev(), meta.ino());
    if known(id) {
        return Err(Known);
    }
    Ok(parse_image(path, file, id))
}

fn parse_image(path: String, file: ModuleFile, id: (u64, u64)) -> Option<AllocatorImage> {
    // Read on demand: headers, symbol tables and the entry points' code,
    // never the whole (target-controlled, maybe huge) file.
    let cache = object::ReadCache::new(&file.file);
    let elf = object::File::parse(&cache).ok()?;
    let mut defined = std::collections::HashMap::new();
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if sym.is_definition() && sym.kind() == SymbolKind::Text {
            if let Ok(name) = sym.name() {
                defined.entry(name.to_string()).or_insert((sym.address(), sym.size()));
            }
        }
    }
    let (mut family, mut entries) = entry_points(&|name| defined.get(name).copied());
    if entries.is_empty() {
        return None;
    }
    for e in &mut entries {
        e.code = code_of(&elf, e.address, e.size);
    }
    if crate::stacks::procmaps::is_libc(std::path::Path::new(&path)) {
        family = Family::CLibrary;
    }
    Some(AllocatorImage { path, family, entries, file, id })
}

/// The file offset and probe placement of the function at `address`
/// (`size` from the symbol table).
fn code_of<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
    size: u64,
) -> Option<Code> {
    let section = elf.sections().find(|s| s.address() <= address && address < s.address() + s.size())?;
    let (section_offset, _) = section.file_range()?;
    let start = address - section.address();
    // A prologue is all placement looks at; a symbol's size is the target's to state.
    let len = if size == 0 { 64 } else { size.min(4096) };
    let len = len.min(section.size() - start);
    let bytes = section.data_range(address, len).ok()??;
    Some(Code { file_offset: section_offset + start, emulated: placement::choose(bytes, address) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defines<'a>(names: &'a [&'static str]) -> impl Fn(&str) -> Option<(u64, u64)> + 'a {
        move |n| names.iter().position(|x| *x == n).map(|i| (0x1000 * (i as u64 + 1), 16))
    }

    #[test]
    fn families_and_cxx_operators_only_where_malloc_is_replaced() {
        let (family, e) =
            entry_points(&defines(&["malloc", "free", "mallocx", "sdallocx", "_Znwm", "_ZdlPv"]));
        assert_eq!(family, Family::Jemalloc);
        let names: Vec<_> = e.iter().map(|e| (e.symbol.as_str(), e.api)).collect();
        assert!(names.contains(&("sdallocx", Free)) && names.contains(&("_Znwm", Malloc)), "{names:?}");
        // libstdc++: operator new without malloc is not probed (its new calls malloc).
        let (_, e) = entry_points(&defines(&["_Znwm", "_ZdlPv"]));
        assert!(e.is_empty());
        let (family, e) = entry_points(&defines(&["_rjem_malloc", "_rjem_sdallocx", "_rjem_rallocx"]));
        assert_eq!(family, Family::Jemalloc);
        assert_eq!(e.len(), 3);
        let (family, _) = entry_points(&defines(&["malloc", "tc_malloc"]));
        assert_eq!(family, Family::Tcmalloc);
        let (family, e) = entry_points(&defines(&["mi_malloc_aligned", "mi_free"]));
        let aligned = e.iter().find(|e| e.symbol == "mi_malloc_aligned").unwrap();
        assert_eq!((family, aligned.api), (Family::Mimalloc, Malloc));
    }
}
