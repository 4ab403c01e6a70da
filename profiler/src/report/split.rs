//! The memory split the incident reports reason about (their
//! "External/Heap" ratio), but per allocation site: each memory stack is
//! classified as V8 heap (mappings made by V8's page allocator), external
//! (ArrayBuffer backing stores, which Node allocates through
//! `NodeArrayBufferAllocator`: `Buffer.alloc` via calloc, `allocUnsafe` via
//! malloc) or other native memory.
//!
//! Each byte is counted once: the heap blocks of the alloc lens lie inside
//! the program break and the allocator's own mappings, so when heap blocks
//! were recorded those containers are left out of the split (they are still
//! listed under their own kinds); resident pages are a subset of the
//! address-space kinds and are never added, nor are the JS objects V8's
//! sampling profiler saw (they live in the V8 heap's mappings).

use crate::kind::Kind;
use serde::{Deserialize, Serialize};

use super::model::StackEntry;

pub const V8_HEAP: &str = "v8-heap";
pub const EXTERNAL: &str = "external";
pub const NATIVE: &str = "native";

/// The class of a memory stack, or `None` for handle kinds.
pub fn classify(entry: &StackEntry) -> Option<&'static str> {
    if entry.kind.is_handle() {
        return None;
    }
    let has = |needle: &str| entry.frames.iter().any(|f| f.function.contains(needle));
    let class = if entry.kind == Kind::JsHeap {
        V8_HEAP
    } else if entry.kind == Kind::Heap
        && (has("NodeArrayBufferAllocator")
            || has("v8::internal::BackingStore")
            || has("v8::ArrayBuffer::Allocator"))
    {
        EXTERNAL
    } else if matches!(entry.kind, Kind::Mmap | Kind::Brk) && has("v8::") {
        V8_HEAP
    } else {
        NATIVE
    };
    Some(class)
}

/// Whether a stack runs through a memory allocator's own code (the
/// allocator mapping or growing memory to carve blocks from).
pub fn through_allocator(entry: &StackEntry) -> bool {
    const ALLOCATOR_FUNCTIONS: [&str; 9] = [
        "sysmalloc",
        "_int_malloc",
        "new_heap",
        "alloc_new_heap",
        "__glibc_morecore",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
        "_int_realloc",
    ];
    const ALLOCATOR_PREFIXES: [&str; 5] = ["je_", "_rjem_", "tc_", "mi_", "tcmalloc::"];
    entry.frames.iter().any(|f| {
        let name = f.function.trim_start_matches("__GI_");
        ALLOCATOR_FUNCTIONS.contains(&name)
            || ALLOCATOR_PREFIXES.iter().any(|p| name.starts_with(p))
            || profiler_common::ALLOC_APIS.iter().any(|a| a.symbol() == name)
    })
}

/// Totals per class, each byte once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemorySplit {
    pub v8_heap_bytes: u64,
    pub external_bytes: u64,
    pub native_bytes: u64,
    /// external / V8 heap; the incident reports call > 2 a buffer leak.
    pub external_to_heap: Option<f64>,
}

pub fn split(stacks: &[StackEntry]) -> MemorySplit {
    let mut s = MemorySplit::default();
    let heap_recorded = stacks.iter().any(|e| e.kind == Kind::Heap);
    // Containers of heap blocks count through their blocks, when those were recorded.
    let container = |e: &StackEntry| {
        heap_recorded
            && (e.kind == Kind::Brk
                || (e.kind == Kind::Mmap && through_allocator(e) && classify(e) == Some(NATIVE)))
    };
    // Resident pages and sampled JS objects lie inside the kinds below.
    for e in stacks.iter().filter(|e| !matches!(e.kind, Kind::Resident | Kind::JsHeap) && !container(e)) {
        match classify(e) {
            Some(V8_HEAP) => s.v8_heap_bytes += e.bytes,
            Some(EXTERNAL) => s.external_bytes += e.bytes,
            Some(_) => s.native_bytes += e.bytes,
            None => {}
        }
    }
    s.external_to_heap = (s.v8_heap_bytes > 0).then(|| s.external_bytes as f64 / s.v8_heap_bytes as f64);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Frame;

    #[test]
    fn heap_blocks_are_not_counted_again_through_their_arena() {
        let mut report = crate::report::sample::report();
        let mut arena = report.stacks[0].clone();
        arena.kind = Kind::Mmap;
        arena.bytes = 1 << 20;
        arena.frames = vec![Frame::named("__mmap64"), Frame::named("sysmalloc"), Frame::named("leak_a")];
        let mut brk = arena.clone();
        brk.kind = Kind::Brk;
        let mut own = arena.clone();
        own.frames = vec![Frame::named("__mmap64"), Frame::named("map_buffer")];
        report.stacks.extend([arena, brk, own]);
        let with_heap = split(&report.stacks);
        assert_eq!(with_heap.native_bytes, 300 + (1 << 20), "heap blocks + the program's own mapping");
        report.stacks.retain(|e| e.kind != Kind::Heap);
        let without_heap = split(&report.stacks);
        assert_eq!(without_heap.native_bytes, 3 << 20, "no blocks recorded: the containers are the memory");
    }
}
