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
/// The break heap is read this much at a time.
const CHUNK_BYTES: usize = 1 << 20;

/// A node process whose counts are read (again at each [`NodeProcess::counts`]).
#[derive(Clone, Debug)]
pub struct NodeProcess {
    pid: u32,
    allocator: Option<ArrayBufferAllocator>,
}

impl NodeProcess {
    /// `pid` if it runs node: a module whose file name says so (`node`,
    /// `nodejs`, `libnode.so.*`) is mapped executable.
    pub fn of(pid: u32, maps: &ProcessMaps) -> Option<Self> {
        maps.mappings
            .iter()
            .filter(|m| m.executable)
            .filter_map(|m| m.file()?.rsplit('/').next())
            .any(|name| name.contains("node"))
            .then_some(Self { pid, allocator: None })
    }

    /// Node's counts now: V8's heap in use from `regions` (the process's
    /// smaps read now), the ArrayBuffer bytes from its allocator (looked
    /// for in `maps` until found). `None` when neither is found.
    pub fn counts(&mut self, maps: &ProcessMaps, regions: &[RegionTotal]) -> Option<NodeCounts> {
        if self.allocator.is_none() {
            self.allocator = ArrayBufferAllocator::find(self.pid, maps);
        }
        let array_buffers_bytes = self.allocator.and_then(|a| a.array_buffers_bytes(self.pid));
        let v8_heap_used_bytes = smaps::v8_heap_in_use(regions);
        (v8_heap_used_bytes > 0 || array_buffers_bytes.is_some())
            .then_some(NodeCounts { v8_heap_used_bytes, array_buffers_bytes })
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
    /// The allocator of `pid`'s main thread; `None` when the process is not
    /// node (no module exports the allocator's vtable), node has not made it
    /// yet, or its code is not what this reader knows.
    pub fn find(pid: u32, maps: &ProcessMaps) -> Option<Self> {
        let (vtable, free) = maps
            .mappings
            .iter()
            .filter(|m| m.executable)
            .filter_map(|m| m.file().map(|path| (m, path)))
            .find_map(|(m, path)| allocator_symbols(pid, maps, m, path))?;
        let mut code = [0u8; 8];
        let counter_offset =
            (super::read_memory(pid, free, &mut code)).then(|| free_counter_offset(&code))??;
        let heap = maps.mappings.iter().find(|m| m.name == "[heap]")?;
        let end = heap.end.min(heap.start.saturating_add(MAX_SEARCHED_BYTES));
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut at = heap.start;
        while at < end {
            let len = CHUNK_BYTES.min((end - at) as usize);
            if !super::read_memory(pid, at, &mut chunk[..len]) {
                return None;
            }
            for (i, word) in chunk[..len].chunks_exact(8).enumerate() {
                if u64::from_le_bytes(word.try_into().unwrap()) == vtable {
                    let found = Self { address: at + i as u64 * 8, vtable, counter_offset };
                    if found.array_buffers_bytes(pid).is_some() {
                        return Some(found);
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
/// disp(%rdi)` (with an 8- or 32-bit displacement), as node 18 to 22 are built.
fn free_counter_offset(code: &[u8; 8]) -> Option<u64> {
    match code {
        [0xf0, 0x48, 0x29, 0x57, disp, ..] => Some(u64::from(*disp)),
        [0xf0, 0x48, 0x29, 0x97, d0, d1, d2, d3] => Some(u64::from(u32::from_le_bytes([*d0, *d1, *d2, *d3]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_offset_is_read_from_free() {
        // node 20.20.2 and node 22.23.3: `f0 48 29 57 10  lock sub %rdx,0x10(%rdi)`.
        assert_eq!(free_counter_offset(&[0xf0, 0x48, 0x29, 0x57, 0x10, 0x48, 0x8b, 0x7f]), Some(0x10));
        assert_eq!(free_counter_offset(&[0xf0, 0x48, 0x29, 0x97, 0x00, 0x01, 0x00, 0x00]), Some(0x100));
        // Anything else (a frame set up first, a different register): not guessed.
        assert_eq!(free_counter_offset(&[0x55, 0x48, 0x89, 0xe5, 0, 0, 0, 0]), None);
        assert_eq!(free_counter_offset(&[0xf0, 0x48, 0x29, 0x56, 0x10, 0, 0, 0]), None);
    }

    #[test]
    fn a_process_that_is_not_node_has_no_allocator() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        assert_eq!(ArrayBufferAllocator::find(std::process::id(), &maps), None);
    }
}
