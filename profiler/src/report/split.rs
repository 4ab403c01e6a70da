//! The memory split the incident reports reason about (their
//! "External/Heap" ratio), but per allocation site: each memory stack is
//! classified as V8 heap (mappings made by V8's page allocator), external
//! (ArrayBuffer backing stores, which Node allocates through
//! `NodeArrayBufferAllocator`: `Buffer.alloc` via calloc, `allocUnsafe` via
//! malloc) or other native memory.
//!
//! Each byte is counted once, measured on the best the lenses recorded:
//! - heap blocks (alloc lens): the blocks, plus mappings not made by the
//!   allocator (the program break and the allocator's mappings contain the
//!   blocks and are left out; they are still listed under their own kinds);
//! - else resident pages (resident lens): each page by the mapping or break
//!   range it lies in when that was made for V8's heap or for an
//!   ArrayBuffer's backing store, else by the code that first touched it;
//!   the mappings' reserved address space is not memory;
//! - else the mappings (reserved address space).
//!
//! The JS objects V8's sampling profiler saw lie in the V8 heap's mappings
//! and are never added.
//!
//! Where node's own counts were read at both ends (V8's heap in use and
//! its ArrayBuffer bytes, see `process::node_memory`), the V8 heap and
//! external figures are their growth, what `process.memoryUsage()`'s
//! `heapUsed` and `arrayBuffers` would show; the bytes measured for them
//! beyond that (V8's committed pages not in use, pages malloc keeps after
//! backing stores are freed) are `held_unused_bytes`.

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
    } else if has("NodeArrayBufferAllocator")
        || has("v8::internal::BackingStore")
        || has("v8::ArrayBuffer::Allocator")
    {
        EXTERNAL
    } else if matches!(entry.kind, Kind::Mmap | Kind::Brk | Kind::Resident) && has("v8::") {
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemorySplit {
    /// V8's heap: its growth in use by node's count when read (`node_counts`), else as measured.
    pub v8_heap_bytes: u64,
    /// ArrayBuffer backing stores: their growth by node's count when read, else as measured.
    pub external_bytes: u64,
    pub native_bytes: u64,
    /// Measured for V8's heap and backing stores beyond what node counts as
    /// in use: V8's committed pages not in use, pages malloc keeps after
    /// backing stores are freed. 0 unless node's counts were read.
    #[serde(default)]
    pub held_unused_bytes: u64,
    /// external / V8 heap; the incident reports call > 2 a buffer leak.
    pub external_to_heap: Option<f64>,
    /// What the bytes are: `heap blocks and mappings` (alloc lens),
    /// `resident pages` (resident lens) or `mappings` (reserved address space).
    #[serde(default)]
    pub measured_on: String,
    /// Node's own counts when recording started and now, read from its memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_counts: Option<NodeCountsThen>,
}

impl NodeCounts {
    /// A process started while recording: it held nothing before.
    pub const NOTHING: Self = Self { v8_heap_used_bytes: Some(0), array_buffers_bytes: Some(0) };
}

/// What node counts of its memory, summed over its processes, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeCounts {
    /// V8's heap in use, from its page headers: `process.memoryUsage().heapUsed`
    /// less the young generation's semispaces, every isolate's (workers
    /// too); absent when not all of the process's memory was examined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v8_heap_used_bytes: Option<u64>,
    /// ArrayBuffer backing stores (`process.memoryUsage().arrayBuffers`), from
    /// node's allocator; absent when it was not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_buffers_bytes: Option<u64>,
}

/// Node's counts when recording started (zero for a process started while
/// recording) and when the report was made, over the node processes alive at both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeCountsThen {
    pub processes: u64,
    pub at_start: NodeCounts,
    pub now: NodeCounts,
}

/// Resident bytes first touched by the stack of entry `touched_by`, lying in
/// the memory (a mapping or break range made while recording) of entry
/// `lies_in`, if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pages {
    pub touched_by: usize,
    pub lies_in: Option<usize>,
    pub bytes: u64,
}

/// An entry's class as the report gave it, else as [`classify`] gives it.
fn class_of(e: &StackEntry) -> Option<&str> {
    e.class.as_deref().or_else(|| classify(e))
}

/// The split of `stacks` (classified), measured as the module doc says.
pub fn split(stacks: &[StackEntry], pages: &[Pages], node_counts: Option<NodeCountsThen>) -> MemorySplit {
    let mut s = MemorySplit::default();
    let mut add = |class: Option<&str>, bytes: u64| match class {
        Some(V8_HEAP) => s.v8_heap_bytes += bytes,
        Some(EXTERNAL) => s.external_bytes += bytes,
        Some(_) => s.native_bytes += bytes,
        None => {}
    };
    let heap_recorded = stacks.iter().any(|e| e.kind == Kind::Heap);
    let measured_on = if heap_recorded {
        // The break and the allocator's mappings contain the blocks.
        let container =
            |e: &StackEntry| e.kind == Kind::Brk || (e.kind == Kind::Mmap && through_allocator(e));
        for e in stacks.iter().filter(|e| !matches!(e.kind, Kind::Resident | Kind::JsHeap) && !container(e)) {
            add(class_of(e), e.bytes);
        }
        "heap blocks and mappings"
    } else if !pages.is_empty() {
        for p in pages {
            // A mapping made for V8's heap or for a backing store is that
            // memory. The break is classed by the allocation that grew it: an
            // approximation (malloc later carves other blocks from it too),
            // but a backing store's pages are first touched by the code that
            // fills it, so the toucher alone would call them native.
            let holder = p.lies_in.and_then(|i| stacks.get(i)).and_then(class_of).filter(|c| *c != NATIVE);
            add(holder.or_else(|| stacks.get(p.touched_by).and_then(class_of)), p.bytes);
        }
        "resident pages"
    } else {
        for e in stacks.iter().filter(|e| matches!(e.kind, Kind::Mmap | Kind::Brk | Kind::FileMmap)) {
            add(class_of(e), e.bytes);
        }
        "mappings"
    };
    s.measured_on = measured_on.to_string();
    if let Some(node) = node_counts {
        let measured = s.v8_heap_bytes + s.external_bytes;
        // No V8 page recognised now: the heap's layout is not one this reader knows.
        if let (Some(now), Some(then)) = (node.now.v8_heap_used_bytes, node.at_start.v8_heap_used_bytes) {
            if now > 0 {
                s.v8_heap_bytes = now.saturating_sub(then);
            }
        }
        if let (Some(now), Some(then)) = (node.now.array_buffers_bytes, node.at_start.array_buffers_bytes) {
            s.external_bytes = now.saturating_sub(then);
        }
        // Resident pages are memory; mappings (and the alloc lens's V8 mappings) are address space.
        if s.measured_on == "resident pages" {
            s.held_unused_bytes = measured.saturating_sub(s.v8_heap_bytes + s.external_bytes);
        }
        s.node_counts = Some(node);
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
        let with_heap = split(&report.stacks, &[], None);
        assert_eq!(with_heap.native_bytes, 300 + (1 << 20), "heap blocks + the program's own mapping");
        report.stacks.retain(|e| e.kind != Kind::Heap);
        let without_heap = split(&report.stacks, &[], None);
        assert_eq!(without_heap.native_bytes, 3 << 20, "no blocks recorded: the containers are the memory");
        assert_eq!(without_heap.measured_on, "mappings");
    }

    /// The default lens: each resident page once, by the memory it lies in,
    /// else by the code that first touched it.
    #[test]
    fn resident_pages_are_classed_by_their_memory_then_by_their_toucher() {
        let entry = |kind: Kind, frames: &[&str]| {
            let mut e = crate::report::sample::report().stacks[0].clone();
            e.kind = kind;
            e.class = None;
            e.frames = frames.iter().map(|f| Frame::named(f)).collect();
            e
        };
        let stacks = vec![
            entry(Kind::Mmap, &["mmap", "v8::internal::MemoryAllocator::AllocatePage"]),
            entry(
                Kind::Mmap,
                &["mmap", "sysmalloc", "malloc", "node::NodeArrayBufferAllocator::AllocateUninitialized"],
            ),
            entry(Kind::Brk, &["brk", "sysmalloc", "malloc"]),
            entry(Kind::Resident, &["v8::internal::Scavenger::Process"]),
            entry(Kind::Resident, &["__memmove_avx_unaligned", "JS:concat node:buffer:1:1"]),
            entry(Kind::Resident, &["_int_malloc", "node::NodeArrayBufferAllocator::Allocate"]),
            entry(Kind::Resident, &["memset", "parse_config"]),
        ];
        let pages = |touched_by, lies_in, kib: u64| Pages { touched_by, lies_in, bytes: kib << 10 };
        let pages = [
            pages(3, Some(0), 400), // the GC in V8's pages
            pages(4, Some(1), 256), // a Buffer filled in its own mapping
            pages(5, Some(2), 8),   // a small backing store carved from the break
            pages(6, Some(2), 12),  // other malloc memory
            pages(3, None, 40),     // V8's pages mapped before recording
        ];
        let measured = split(&stacks, &pages, None);
        assert_eq!(measured.v8_heap_bytes, 440 << 10);
        assert_eq!(measured.external_bytes, 264 << 10);
        assert_eq!(measured.native_bytes, 12 << 10);
        assert_eq!(measured.held_unused_bytes, 0);
        assert_eq!(measured.measured_on, "resident pages");
        let mapped: u64 = stacks.iter().filter(|e| e.kind != Kind::Resident).map(|e| e.bytes).sum();
        assert!(mapped > 0, "the mappings' own bytes are not added");

        // Node's own counts, read at both ends, give the V8 heap and external
        // growth; what was measured beyond them is held unused.
        let counts = |v8_kib: u64, array_buffers_kib: u64| NodeCounts {
            v8_heap_used_bytes: Some(v8_kib << 10),
            array_buffers_bytes: Some(array_buffers_kib << 10),
        };
        let node = NodeCountsThen { processes: 1, at_start: counts(1000, 100), now: counts(1300, 340) };
        let counted = split(&stacks, &pages, Some(node));
        assert_eq!(counted.v8_heap_bytes, 300 << 10);
        assert_eq!(counted.external_bytes, 240 << 10);
        assert_eq!(counted.native_bytes, 12 << 10);
        assert_eq!(counted.held_unused_bytes, (440 - 300 + 264 - 240) << 10);
        // A count that fell is no growth; an allocator not found leaves the measured external.
        let node = NodeCountsThen {
            processes: 1,
            at_start: counts(2000, 100),
            now: NodeCounts { v8_heap_used_bytes: Some(1500 << 10), array_buffers_bytes: None },
        };
        let fell = split(&stacks, &pages, Some(node));
        assert_eq!(
            (fell.v8_heap_bytes, fell.external_bytes, fell.held_unused_bytes),
            (0, 264 << 10, 440 << 10)
        );
    }
}
