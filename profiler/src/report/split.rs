//! The memory split the incident reports reason about (their
//! "External/Heap" ratio), but per allocation site: each memory stack is
//! classified as V8 heap (mappings made by V8's page allocator), external
//! (ArrayBuffer backing stores, which Node allocates through
//! `NodeArrayBufferAllocator`: `Buffer.alloc` via calloc, `allocUnsafe` via
//! malloc) or other native memory.

use serde::{Deserialize, Serialize};

use super::{model::StackEntry, Report};

pub const V8_HEAP: &str = "v8-heap";
pub const EXTERNAL: &str = "external";
pub const NATIVE: &str = "native";

/// The class of a memory stack, or `None` for handle kinds.
pub fn classify(entry: &StackEntry) -> Option<&'static str> {
    if Report::is_handle_kind(&entry.kind) {
        return None;
    }
    let has = |needle: &str| entry.frames.iter().any(|f| f.function.contains(needle));
    let class = if entry.kind == "heap"
        && (has("NodeArrayBufferAllocator")
            || has("v8::internal::BackingStore")
            || has("v8::ArrayBuffer::Allocator"))
    {
        EXTERNAL
    } else if matches!(entry.kind.as_str(), "mmap" | "brk") && has("v8::") {
        V8_HEAP
    } else {
        NATIVE
    };
    Some(class)
}

/// Totals per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySplit {
    pub v8_heap_bytes: u64,
    pub external_bytes: u64,
    pub native_bytes: u64,
    /// external / V8 heap; the incident reports call > 2 a buffer leak.
    pub external_to_heap: Option<f64>,
}

pub fn split(stacks: &[StackEntry]) -> MemorySplit {
    let mut s = MemorySplit::default();
    // Resident pages are a subset of the address-space kinds: counting them would count twice.
    for e in stacks.iter().filter(|e| e.kind != "resident") {
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
