//! Loads call-frame tables into the kernel walker's maps: each module's rows
//! once per session (modules are told apart by device and inode, so a
//! process tree maps one libc table), and per profiled process the sorted
//! list of its executable mappings pointing into them.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use profiler_common::unwind::{
    Mapping, Process, Row, RowPage, V8Frames, MAX_MAPPINGS, ROWS_PER_PAGE, ROW_PAGES,
};

use super::table::{self, NoTable};
use crate::{
    files::target::{open_mapped, open_regular_in_root, MAX_MODULE_BYTES},
    stacks::procmaps::ProcessMaps,
};

/// A module's table from its own call-frame information, with its separate
/// debug file's added when its own leaves most of its code bare (code built
/// without unwind tables, whose `.debug_frame` was split off). The debug
/// file is looked up inside the target's root, like every file we open.
fn build_table(pid: u32, path: &str, file: &std::fs::File) -> Result<table::ModuleTable, Missing> {
    let module = object::ReadCache::new(file);
    let own = table::build(&module);
    if own.as_ref().is_ok_and(|t| !t.mostly_bare()) {
        return own.map_err(Missing::Table);
    }
    for candidate in table::debug_file_candidates(&module, path) {
        let Ok(debug) = open_regular_in_root(pid, &candidate, MAX_MODULE_BYTES) else { continue };
        if let Ok(t) = table::build_with_debug_file(&module, &object::ReadCache::new(&debug)) {
            return Ok(t);
        }
    }
    own.map_err(Missing::Table)
}

/// A process's executable mapping: (pid, start, end, file offset, inode).
type MappingKey = (u32, u64, u64, u64, u64);

/// A module's rows in the row array.
#[derive(Clone, Copy, Debug)]
struct Loaded {
    first_row: u32,
    rows: u32,
    /// `table::ModuleTable::base`.
    base: u64,
    /// The code the rows describe (from the first row to the last).
    code_bytes: u64,
    /// The frame layout of the V8 built into the module, if any.
    v8: V8Frames,
}

/// Why a module's code is walked by frame pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    Table(NoTable),
    /// The row array is full (`ROW_PAGES`).
    ArrayFull,
    /// The mapped file could not be opened safely.
    Unopenable(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Table(e) => e.fmt(f),
            Self::ArrayFull => write!(f, "the kernel's unwind table array is full"),
            Self::Unopenable(e) => write!(f, "cannot open it: {e}"),
        }
    }
}

/// What the tables cost and what they miss (for the report and the bench).
#[derive(Clone, Debug, Default)]
pub struct TableStats {
    pub modules: usize,
    pub rows: u64,
    /// Bytes of code the loaded tables describe.
    pub code_bytes: u64,
    pub build_time: Duration,
    /// Modules walked by frame pointer instead, with the reason.
    pub without_tables: Vec<(String, String)>,
    /// Most executable mappings past [`MAX_MAPPINGS`] in one process (walked by frame pointer).
    pub mappings_over_limit: u64,
}

impl TableStats {
    /// Kernel memory the loaded rows take.
    pub fn row_bytes(&self) -> u64 {
        self.rows * std::mem::size_of::<Row>() as u64
    }
}

pub struct KernelTables {
    rows: Array<MapData, RowPage>,
    processes: BpfHashMap<MapData, u32, Process>,
    next_page: u32,
    modules: HashMap<(u64, u64), Result<Loaded, Missing>>,
    /// Mappings already resolved, by (pid, start, end, file offset, inode):
    /// a process's unchanged mapping is not opened again at every new mmap.
    resolved: HashMap<MappingKey, (Mapping, V8Frames)>,
    /// False with `--stack-walk frame-pointers`: no process gets tables.
    enabled: bool,
    /// False with `--js-names perf-map`: JS frames are walked as code addresses.
    js_functions: bool,
    pub stats: TableStats,
}

impl KernelTables {
    pub fn new(rows: aya::maps::Map, processes: aya::maps::Map) -> Result<Self> {
        Ok(Self {
            rows: Array::try_from(rows).context("UNWIND_ROWS map")?,
            processes: BpfHashMap::try_from(processes).context("UNWIND_PROCESSES map")?,
            next_page: 0,
            modules: HashMap::new(),
            resolved: HashMap::new(),
            enabled: true,
            js_functions: true,
            stats: TableStats::default(),
        })
    }

    /// Loads the tables of every module process `pid` maps executable (those
    /// not loaded yet) and gives the kernel the process's current mappings.
    pub fn track(&mut self, pid: u32) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let maps = ProcessMaps::read(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
        let mut v8 = V8Frames::default();
        let mut list: Vec<Mapping> = maps
            .mappings
            .iter()
            .filter(|m| m.executable && m.file().is_some())
            .map(|m| {
                let key = (pid, m.start, m.end, m.offset, m.inode);
                let (mapping, module_v8) = match self.resolved.get(&key) {
                    Some(known) => *known,
                    None => {
                        let resolved = self.resolve(pid, m);
                        self.resolved.insert(key, resolved);
                        resolved
                    }
                };
                if module_v8.fp_function != 0 && self.js_functions {
                    v8 = module_v8;
                }
                mapping
            })
            .collect();
        if list.len() > MAX_MAPPINGS {
            let over = (list.len() - MAX_MAPPINGS) as u64;
            self.stats.mappings_over_limit = self.stats.mappings_over_limit.max(over);
            // Keep the largest: most code, most frames.
            list.sort_by_key(|m| std::cmp::Reverse(m.end - m.start));
            list.truncate(MAX_MAPPINGS);
            list.sort_by_key(|m| m.start);
        }
        let mut process =
            Process { count: list.len() as u32, _pad: 0, v8, mappings: [Mapping::default(); MAX_MAPPINGS] };
        process.mappings[..list.len()].copy_from_slice(&list);
        let current = self.processes.get(&pid, 0).ok();
        if current.is_some_and(|c| c.count == process.count && c.v8 == v8 && c.mappings == process.mappings) {
            return Ok(());
        }
        self.processes.insert(pid, process, 0).context("writing a process's unwind mappings")?;
        Ok(())
    }

    /// The kernel's entry for one executable file mapping of process `pid`,
    /// loading the module's table the first time the module is seen. A
    /// module without a table gets an entry with no rows (frame pointers).
    /// With it, the frame layout of the V8 the module holds.
    fn resolve(&mut self, pid: u32, m: &crate::stacks::procmaps::Mapping) -> (Mapping, V8Frames) {
        let mut mapping = Mapping { start: m.start, end: m.end, ..Default::default() };
        let module = match open_mapped(pid, m) {
            Ok(module) => module,
            Err(e) => {
                if !self.stats.without_tables.iter().any(|(n, _)| *n == m.name) {
                    self.stats
                        .without_tables
                        .push((m.name.clone(), Missing::Unopenable(e.to_string()).to_string()));
                }
                return (mapping, V8Frames::default());
            }
        };
        let key = module.file.metadata().map(|md| (md.dev(), md.ino())).unwrap_or((0, m.inode));
        if !self.modules.contains_key(&key) {
            let loaded = self.load(pid, m.name.trim_end_matches(" (deleted)"), &module.file);
            match &loaded {
                Ok(l) => {
                    self.stats.modules += 1;
                    self.stats.rows += l.rows as u64;
                    self.stats.code_bytes += l.code_bytes;
                }
                Err(why) => self.stats.without_tables.push((m.name.clone(), why.to_string())),
            }
            self.modules.insert(key, loaded);
        }
        let delta = table::vaddr_delta(&object::ReadCache::new(&module.file), m.offset);
        if let (Some(Ok(l)), Some(delta)) = (self.modules.get(&key), delta) {
            // vaddr = address - start + file offset + delta; row pc = vaddr - base.
            mapping.bias = m.start.wrapping_sub(m.offset).wrapping_sub(delta).wrapping_add(l.base);
            mapping.first_row = l.first_row;
            mapping.rows = l.rows;
        }
        let v8 =
            self.modules.get(&key).and_then(|l| l.as_ref().ok()).map_or_else(V8Frames::default, |l| l.v8);
        (mapping, v8)
    }

    /// Leaves every stack to the kernel's frame-pointer walk.
    pub fn disable(&mut self) {
        self.enabled = false;
    }

    /// Records JS frames by code address (named by perf maps), not by function.
    pub fn record_js_code_addresses(&mut self) {
        self.js_functions = false;
    }

    /// Builds the table of the module at `path` (open as `file`) in process
    /// `pid`'s file system and writes its rows.
    fn load(&mut self, pid: u32, path: &str, file: &std::fs::File) -> Result<Loaded, Missing> {
        let started = Instant::now();
        let loaded = build_table(pid, path, file).and_then(|t| self.write(&t)).map(|l| Loaded {
            v8: crate::stacks::v8::V8Layout::of_module(file).map(|v8| v8.frames()).unwrap_or_default(),
            ..l
        });
        crate::release_freed_memory();
        self.stats.build_time += started.elapsed();
        loaded
    }

    /// Writes a module's rows, from a fresh page.
    fn write(&mut self, t: &table::ModuleTable) -> Result<Loaded, Missing> {
        let pages = t.rows.len().div_ceil(ROWS_PER_PAGE) as u32;
        if self.next_page + pages > ROW_PAGES {
            return Err(Missing::ArrayFull);
        }
        let first_page = self.next_page;
        for (i, chunk) in t.rows.chunks(ROWS_PER_PAGE).enumerate() {
            let mut page = RowPage { rows: [Row::default(); ROWS_PER_PAGE] };
            page.rows[..chunk.len()].copy_from_slice(chunk);
            self.rows
                .set(first_page + i as u32, page, 0)
                .map_err(|e| Missing::Table(NoTable::Unreadable(format!("writing rows: {e}"))))?;
        }
        self.next_page += pages;
        Ok(Loaded {
            first_row: first_page * ROWS_PER_PAGE as u32,
            rows: t.rows.len() as u32,
            base: t.base,
            code_bytes: t.rows.last().map_or(0, |r| r.pc as u64),
            v8: V8Frames::default(),
        })
    }
}
