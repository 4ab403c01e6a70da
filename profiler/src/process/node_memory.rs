//! What node counts of its own memory, read from the process while it runs
//! (no probe, no stop): the bytes V8 counts as in use in its heap
//! (`process.memoryUsage().heapUsed`, from its page headers, see
//! [`super::smaps`]) and the bytes of ArrayBuffer backing stores node's
//! allocator holds (`NodeArrayBufferAllocator::total_mem_usage_`, what
//! `process.memoryUsage().arrayBuffers` reports).
//!
//! The allocator is found once per process: node creates the main thread's
//! at startup with `new`, so it lies in the break heap, near its start,
//! behind its class's vtable (a symbol node exports). The counter's offset
//! in it is read from node's own code: `NodeArrayBufferAllocator::Free`
//! begins by subtracting the freed size from it.

use object::{Object, ObjectSymbol};

use super::smaps::{self, RegionTotal};
use crate::{files::target::open_path_mapped, report::split::NodeCounts, stacks::procmaps::ProcessMaps};

const ALLOCATOR_VTABLE: &str = "_ZTVN4node24NodeArrayBufferAllocatorE";
const ALLOCATOR_FREE: &str = "_ZN4node24NodeArrayBufferAllocator4FreeEPvm";
/// Most of the break heap searched for the allocator.
const MAX_SEARCHED_BYTES: u64 = 64 << 20;
/// The break heap's residency is read this much at a time.
const CHUNK_BYTES: usize = 1 << 20;
const PAGE: usize = 4096;

/// A node process whose counts are read (again at each [`NodeProcess::counts`]).
#[derive(Clone, Debug)]
pub struct NodeProcess {
    pid: u32,
    allocator: Option<ArrayBufferAllocator>,
    /// The allocator's vtable and `Free`, once looked up; `None` inside when
    /// node's module does not export them or its code is not what this reader knows.
    symbols: Option<Option<AllocatorSymbols>>,
    /// When the break heap was last searched for the allocator.
    searched_at: Option<std::time::Instant>,
}

/// Searches for the allocator are this far apart (node makes it at startup).
const SEARCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl NodeProcess {
    /// `pid` if it runs node: an executable mapping of a module named
    /// `node`, `nodejs` or `libnode.so*`.
    pub fn of(pid: u32, maps: &ProcessMaps) -> Option<Self> {
        node_modules(maps).next().map(|_| Self { pid, allocator: None, symbols: None, searched_at: None })
    }

    /// Node's counts now: V8's heap in use from `regions` (the process's
    /// smaps read now), the ArrayBuffer bytes from its allocator (looked
    /// for in `maps` until found). `None` when neither is found.
    pub fn counts(&mut self, maps: &ProcessMaps, regions: &[RegionTotal]) -> Option<NodeCounts> {
        let mut array_buffers_bytes = self.allocator.and_then(|a| a.array_buffers_bytes(self.pid));
        if array_buffers_bytes.is_none() {
            self.allocator = None; // Never found, or the object is no longer the allocator.
            let symbols = *self.symbols.get_or_insert_with(|| AllocatorSymbols::of(self.pid, maps));
            let due = self.searched_at.is_none_or(|at| at.elapsed() >= SEARCH_INTERVAL);
            if let (Some(symbols), true) = (symbols, due) {
                self.searched_at = Some(std::time::Instant::now());
                self.allocator = ArrayBufferAllocator::find(self.pid, maps, symbols);
                array_buffers_bytes = self.allocator.and_then(|a| a.array_buffers_bytes(self.pid));
            }
        }
        let v8_heap_used_bytes = smaps::v8_heap_in_use(regions);
        (v8_heap_used_bytes.is_some_and(|b| b > 0) || array_buffers_bytes.is_some())
            .then_some(NodeCounts { v8_heap_used_bytes, array_buffers_bytes })
    }
}

/// The executable mappings of node's own module (`node`, `nodejs`, `libnode.so*`), with its path.
fn node_modules(maps: &ProcessMaps) -> impl Iterator<Item = (&crate::stacks::procmaps::Mapping, &str)> {
    maps.mappings.iter().filter(|m| m.executable).filter_map(|m| {
        let path = m.file()?;
        let name = path.rsplit('/').next()?;
        (name == "node" || name == "nodejs" || name.starts_with("libnode.so")).then_some((m, path))
    })
}

/// Where the allocator's class lives in the target: its vtable pointer
/// (past the offset-to-top and type-info words) and its counter's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AllocatorSymbols {
    vtable: u64,
    counter_offset: u64,
}

impl AllocatorSymbols {
    fn of(pid: u32, maps: &ProcessMaps) -> Option<Self> {
        let (vtable, free) =
            node_modules(maps).find_map(|(m, path)| allocator_symbols(pid, maps, m, path))?;
        let mut code = [0u8; 12];
        super::read_memory(pid, free, &mut code).then_some(())?;
        Some(Self { vtable, counter_offset: free_counter_offset(&code)? })
    }
}

/// Node's ArrayBuffer allocator of one process's main thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayBufferAllocator {
    /// The object's address.
    address: u64,
    /// The vtable pointer its first word holds.
    vtable: u64,
    /// `total_mem_usage_`'s offset in the object.
    counter_offset: u64,
}

impl ArrayBufferAllocator {
    /// The allocator of `pid`'s main thread, searched for in the resident
    /// pages of its break heap (nothing is faulted in: a page read before
    /// the program touched it would hide its first touch from the resident
    /// lens); `None` when node has not made it yet.
    fn find(pid: u32, maps: &ProcessMaps, symbols: AllocatorSymbols) -> Option<Self> {
        let heap = maps.mappings.iter().find(|m| m.name == "[heap]")?;
        let end = heap.end.min(heap.start.saturating_add(MAX_SEARCHED_BYTES));
        let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
        let mut entries = vec![0u8; CHUNK_BYTES / PAGE * 8];
        let mut page_bytes = [0u8; PAGE];
        let mut at = heap.start;
        while at < end {
            let len = CHUNK_BYTES.min((end - at) as usize);
            let pages = len.div_ceil(PAGE);
            std::os::unix::fs::FileExt::read_exact_at(
                &pagemap,
                &mut entries[..pages * 8],
                at / PAGE as u64 * 8,
            )
            .ok()?;
            for page in 0..pages {
                let entry = u64::from_le_bytes(entries[page * 8..page * 8 + 8].try_into().unwrap());
                let start = at + (page * PAGE) as u64;
                let bytes = &mut page_bytes[..PAGE.min(len - page * PAGE)];
                if entry & 1 << 63 == 0 || !super::read_memory(pid, start, bytes) {
                    continue;
                }
                for (i, word) in bytes.chunks_exact(8).enumerate() {
                    if u64::from_le_bytes(word.try_into().unwrap()) == symbols.vtable {
                        let found = Self {
                            address: start + i as u64 * 8,
                            vtable: symbols.vtable,
                            counter_offset: symbols.counter_offset,
                        };
                        if found.array_buffers_bytes(pid).is_some() {
                            return Some(found);
                        }
                    }
                }
            }
            at += len as u64;
        }
        None
    }

    /// The counter now; `None` when the object is no longer the allocator
    /// (its vtable word changed) or holds an implausible count.
    pub fn array_buffers_bytes(&self, pid: u32) -> Option<u64> {
        let mut vtable = [0u8; 8];
        let mut counter = [0u8; 8];
        let read = super::read_memory(pid, self.address, &mut vtable)
            && super::read_memory(pid, self.address.checked_add(self.counter_offset)?, &mut counter);
        (read && u64::from_le_bytes(vtable) == self.vtable)
            .then(|| u64::from_le_bytes(counter))
            .filter(|&bytes| bytes < 1 << 48)
    }
}

/// The runtime addresses of the allocator's vtable pointer (past the
/// offset-to-top and type-info words) and of its `Free`, if the module
/// mapped by `m` at `path` exports both.
fn allocator_symbols(
    pid: u32,
    maps: &ProcessMaps,
    m: &crate::stacks::procmaps::Mapping,
    path: &str,
) -> Option<(u64, u64)> {
    let module = open_path_mapped(pid, maps, path).ok()?;
    let data = object::ReadCache::new(&module.file);
    let elf = object::File::parse(&data).ok()?;
    let symbol = |name: &str| elf.dynamic_symbols().find(|s| s.name() == Ok(name)).map(|s| s.address());
    let (vtable, free) = (symbol(ALLOCATOR_VTABLE)?, symbol(ALLOCATOR_FREE)?);
    let delta = crate::stacks::unwind::table::vaddr_delta(&data, m.offset)?;
    let bias = m.start.wrapping_sub(m.offset).wrapping_sub(delta);
    Some((bias.wrapping_add(vtable).wrapping_add(16), bias.wrapping_add(free)))
}

/// The counter's offset from `Free`'s first instruction, `lock sub %rdx,
/// disp(%rdi)` (an 8- or 32-bit displacement, sign-extended), after an
/// `endbr64` in builds with control-flow protection; as node 20 and 22 are built.
fn free_counter_offset(code: &[u8; 12]) -> Option<u64> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let code = code.strip_prefix(&ENDBR64).unwrap_or(code);
    let offset = match code {
        [0xf0, 0x48, 0x29, 0x57, disp, ..] => i64::from(*disp as i8),
        [0xf0, 0x48, 0x29, 0x97, d0, d1, d2, d3, ..] => i64::from(i32::from_le_bytes([*d0, *d1, *d2, *d3])),
        _ => return None,
    };
    u64::try_from(offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_offset_is_read_from_free() {
        let code = |bytes: &[u8]| {
            let mut code = [0u8; 12];
            code[..bytes.len()].copy_from_slice(bytes);
            code
        };
        // node 20.20.2 and node 22.23.3: `f0 48 29 57 10  lock sub %rdx,0x10(%rdi)`.
        assert_eq!(free_counter_offset(&code(&[0xf0, 0x48, 0x29, 0x57, 0x10, 0x48, 0x8b, 0x7f])), Some(0x10));
        assert_eq!(
            free_counter_offset(&code(&[0xf0, 0x48, 0x29, 0x97, 0x00, 0x01, 0x00, 0x00])),
            Some(0x100)
        );
        // After endbr64 (-fcf-protection builds).
        assert_eq!(
            free_counter_offset(&code(&[0xf3, 0x0f, 0x1e, 0xfa, 0xf0, 0x48, 0x29, 0x57, 0x18])),
            Some(0x18)
        );
        // A negative displacement is not a member's offset.
        assert_eq!(free_counter_offset(&code(&[0xf0, 0x48, 0x29, 0x57, 0xf8])), None);
        // Anything else (a frame set up first, a different register): not guessed.
        assert_eq!(free_counter_offset(&code(&[0x55, 0x48, 0x89, 0xe5])), None);
        assert_eq!(free_counter_offset(&code(&[0xf0, 0x48, 0x29, 0x56, 0x10])), None);
    }

    #[test]
    fn a_process_that_is_not_node_has_no_allocator() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        assert!(NodeProcess::of(std::process::id(), &maps).is_none());
        assert_eq!(AllocatorSymbols::of(std::process::id(), &maps), None);
    }
}
