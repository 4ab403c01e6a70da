//! Lenses: which probes a recording uses, and so what it can see and what it
//! costs the target. Mappings (mmap/munmap/mremap/brk) are recorded by every
//! lens: they are syscalls, rare and cheap to trace.

use std::fmt;

/// One way of looking at a process's memory and handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lens {
    /// Every malloc-family call by uprobe: exact bytes per allocating stack
    /// (two traps per malloc+free pair; development and CI).
    Alloc,
    /// Pages made resident, by first-touch page fault, attributed to the
    /// touching stack: any allocator, the V8 heap, static binaries (production).
    Resident,
    /// Sockets, files, pipes and event fds, by syscall tracepoint (production).
    Handles,
    /// Node only, opt-in: live JS objects by JS stack from V8's sampling
    /// heap profiler, and V8's heap statistics and limit. Opens node's
    /// inspector on 127.0.0.1 (SIGUSR1) for the recording and closes it after.
    JsHeap,
}

/// The set of lenses of one recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lenses {
    pub alloc: bool,
    pub resident: bool,
    pub handles: bool,
    pub js_heap: bool,
}

impl Lenses {
    /// The recommended production default: no allocator uprobes.
    pub const PRODUCTION: Lenses = Lenses { alloc: false, resident: true, handles: true, js_heap: false };
    /// Exact per-allocation accounting (development, the CI gate).
    pub const PRECISE: Lenses = Lenses { alloc: true, resident: false, handles: true, js_heap: false };

    pub fn from_list(list: &[Lens]) -> Self {
        Lenses {
            alloc: list.contains(&Lens::Alloc),
            resident: list.contains(&Lens::Resident),
            handles: list.contains(&Lens::Handles),
            js_heap: list.contains(&Lens::JsHeap),
        }
    }
}

impl Default for Lenses {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

impl fmt::Display for Lenses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.alloc, "alloc"),
            (self.resident, "resident"),
            (self.handles, "handles"),
            (self.js_heap, "js-heap"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_sets_and_print_back() {
        let l = Lenses::from_list(&[Lens::Handles, Lens::Resident]);
        assert_eq!(l, Lenses::PRODUCTION);
        assert_eq!(l.to_string(), "resident,handles");
        assert_eq!(Lenses::PRECISE.to_string(), "alloc,handles");
    }
}
