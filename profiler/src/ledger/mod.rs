//! The ledger: what is outstanding right now, and which stack made it so.
//!
//! It consumes allocation-lifecycle operations (already decoded, stacks
//! already interned) and keeps, per process, the live heap blocks, the mapped
//! address ranges, the program break, the resident pages and the open handles, plus a running
//! total per (kind, stack) site. It knows nothing about eBPF or symbols, so
//! every rule here is unit-tested.

pub mod intervals;
pub mod resident;

use std::collections::HashMap;

use crate::kind::Kind;
use intervals::{IntervalMap, Piece};
use resident::{Page, ResidentPages, PAGE};

/// Interned stack identifier (see `stacks::StackTable`).
pub type StackId = u32;

/// A (kind, stack) pair: one allocation site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    pub kind: Kind,
    pub stack: StackId,
    /// The process holding the resource (a forked child holds copies of its
    /// parent's fds under the parent's stacks).
    pub pid: u32,
}

/// What is outstanding at one site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Bytes (memory kinds); open handles count as 1 each.
    pub bytes: u64,
    /// Live blocks, mappings or handles.
    pub count: u64,
    /// Sum of the allocation timestamps of the live items (for mean age).
    ts_sum: u128,
}

impl Outstanding {
    /// Mean age in nanoseconds of the live items at `now_ns`.
    pub fn mean_age_ns(&self, now_ns: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let mean_ts = (self.ts_sum / self.count as u128) as u64;
        now_ns.saturating_sub(mean_ts)
    }
}

/// One lifecycle operation, as the ledger understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc {
        addr: u64,
        size: u64,
        stack: StackId,
    },
    Free {
        addr: u64,
    },
    Realloc {
        old: u64,
        addr: u64,
        size: u64,
        stack: StackId,
    },
    Map {
        addr: u64,
        len: u64,
        file_backed: bool,
        stack: StackId,
    },
    Unmap {
        addr: u64,
        len: u64,
    },
    Remap {
        old: u64,
        old_len: u64,
        addr: u64,
        len: u64,
        stack: StackId,
    },
    Brk {
        brk: u64,
        stack: StackId,
    },
    /// First touch of the page at `page`.
    Fault {
        page: u64,
        stack: StackId,
    },
    /// madvise dropped the pages of `addr..addr + len`.
    Discard {
        addr: u64,
        len: u64,
    },
    /// A new fd; `detail` says what it is within its kind (`tcp`, `eventfd`, ...).
    OpenHandle {
        fd: u64,
        kind: Kind,
        detail: &'static str,
        cloexec: bool,
        stack: StackId,
    },
    /// Open `fd` is the doing of `stack` (found after it was opened).
    AttributeHandle {
        fd: u64,
        stack: StackId,
    },
    /// `new` now refers to what `old` does (closing whatever `new` was).
    DupHandle {
        old: u64,
        new: u64,
        cloexec: bool,
        stack: StackId,
    },
    CloseHandle {
        fd: u64,
    },
    /// close_range: closes `first..=last`, or only marks them close-on-exec.
    CloseRange {
        first: u64,
        last: u64,
        cloexec_only: bool,
    },
    SetCloexec {
        fd: u64,
        on: bool,
    },
    /// The process exec'd: its memory is gone, close-on-exec fds are closed.
    /// The process exited.
    Exit,
    Exec,
    /// The process forked `child`, which inherits its fds.
    Fork {
        child: u32,
    },
}

/// Things the ledger saw that it could not match. None of them is an error
/// of the profiler, but each can mean data the report does not cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    /// `free` of an address we never saw allocated (allocated before attach,
    /// or its allocation event was lost).
    pub unknown_frees: u64,
    /// `free` of an address we never saw allocated, called from inside the
    /// C library itself: its per-thread cache handed back at thread exit,
    /// or a block it allocated for its own use before recording. Not the
    /// program's unmatched frees.
    pub c_library_frees: u64,
    /// `realloc` of a block we never saw allocated.
    pub unknown_reallocs: u64,
    /// Allocation at an address that was still live: its free was missed.
    pub overwritten_blocks: u64,
    /// Bytes unmapped that we never saw mapped (mapped before attach, or by the loader).
    pub untracked_unmap_bytes: u64,
    /// close of an fd we never saw opened (opened before attach).
    pub unknown_closes: u64,
    /// An fd number handed out again while we still held it open: its close was missed.
    pub reused_fds: u64,
    /// dup of an fd we never saw opened.
    pub unknown_dups: u64,
    /// Not-present faults on pages already resident (refaults after reclaim,
    /// NUMA hinting): not counted twice.
    pub repeated_faults: u64,
}

fn page_up(len: u64) -> u64 {
    len.saturating_add(PAGE - 1) & !(PAGE - 1)
}

#[derive(Clone, Copy, Debug)]
struct Block {
    size: u64,
    stack: StackId,
    ts: u64,
    /// False once excluded by [`Ledger::exclude_live`]: it no longer counts,
    /// and neither does its release.
    counted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    site: Site,
    ts: u64,
    /// Identifies the mapping call, so a range split by partial unmaps still
    /// counts as one mapping until all of it is gone.
    call: u64,
    counted: bool,
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    site: Site,
    detail: &'static str,
    ts: u64,
    counted: bool,
    cloexec: bool,
}

/// Open handles of one (kind, detail), split by origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandleCount {
    /// Opened while recording (and counted as outstanding).
    pub open: u64,
    /// Open before recording started (or excluded as warm-up): not leaks.
    pub pre_existing: u64,
}

#[derive(Default)]
struct ProcessLedger {
    heap: HashMap<u64, Block>,
    mappings: IntervalMap<Region>,
    brk_ranges: IntervalMap<Region>,
    brk: Option<u64>,
    resident: ResidentPages,
    handles: HashMap<u64, Handle>,
}

/// Outstanding resources of every profiled process.
#[derive(Default)]
pub struct Ledger {
    processes: HashMap<u32, ProcessLedger>,
    sites: HashMap<Site, Outstanding>,
    /// Remaining bytes of each mapping call still (partly) mapped.
    mapping_calls: HashMap<u64, u64>,
    next_call: u64,
    pub counters: LedgerCounters,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the program break a process had when we attached, so later `brk`
    /// growth is measured from it.
    pub fn set_initial_brk(&mut self, tgid: u32, brk: u64) {
        self.processes.entry(tgid).or_default().brk.get_or_insert(brk);
    }

    /// Current outstanding totals per site (zero sites omitted).
    pub fn sites(&self) -> impl Iterator<Item = (&Site, &Outstanding)> {
        self.sites.iter().filter(|(_, o)| o.count > 0)
    }

    /// Per site, how much of what is outstanding was allocated before `cutoff_ts`.
    pub fn old_values(&self, cutoff_ts: u64) -> HashMap<Site, u64> {
        let mut out: HashMap<Site, u64> = HashMap::new();
        for (&tgid, p) in &self.processes {
            for b in p.heap.values().filter(|b| b.counted && b.ts < cutoff_ts) {
                *out.entry(Site { kind: Kind::Heap, stack: b.stack, pid: tgid }).or_default() += b.size;
            }
            for h in p.handles.values().filter(|h| h.counted && h.ts < cutoff_ts) {
                *out.entry(h.site).or_default() += 1;
            }
            for (_, page) in p.resident.iter().filter(|(_, p)| p.counted && p.ts < cutoff_ts) {
                *out.entry(Site { kind: Kind::Resident, stack: page.stack, pid: tgid }).or_default() += PAGE;
            }
            for r in p.mappings.iter().chain(p.brk_ranges.iter()) {
                if r.value.counted && r.value.ts < cutoff_ts {
                    *out.entry(r.value.site).or_default() += r.len();
                }
            }
        }
        out
    }

    /// Total outstanding for one kind.
    pub fn total(&self, kind: Kind) -> Outstanding {
        let mut total = Outstanding::default();
        for (site, o) in self.sites() {
            if site.kind == kind {
                total.bytes += o.bytes;
                total.count += o.count;
                total.ts_sum += o.ts_sum;
            }
        }
        total
    }

    fn add(&mut self, site: Site, bytes: u64, ts: u64) {
        let o = self.sites.entry(site).or_default();
        o.bytes += bytes;
        o.count += 1;
        o.ts_sum += ts as u128;
    }

    fn sub(&mut self, site: Site, bytes: u64, ts: u64) {
        if let Some(o) = self.sites.get_mut(&site) {
            o.bytes = o.bytes.saturating_sub(bytes);
            o.count = o.count.saturating_sub(1);
            o.ts_sum = o.ts_sum.saturating_sub(ts as u128);
        }
    }

    /// Applies one operation by process `tgid` at time `ts` (ns).
    pub fn apply(&mut self, tgid: u32, ts: u64, op: Op) {
        match op {
            Op::Alloc { addr, size, stack } => self.alloc(tgid, ts, addr, size, stack),
            Op::Free { addr } => {
                if !self.free(tgid, addr) {
                    self.counters.unknown_frees += 1;
                }
            }
            Op::Realloc { old, addr, size, stack } => {
                if old != 0 && !self.free(tgid, old) {
                    self.counters.unknown_reallocs += 1;
                }
                self.alloc(tgid, ts, addr, size, stack);
            }
            Op::Map { addr, len, file_backed, stack } => {
                let kind = if file_backed { Kind::FileMmap } else { Kind::Mmap };
                // A fixed mapping over resident pages replaces them with fresh ones.
                self.release_resident(tgid, addr, addr.saturating_add(page_up(len)));
                self.map(tgid, ts, addr, page_up(len), Site { kind, stack, pid: tgid });
            }
            Op::Unmap { addr, len } => {
                let end = addr.saturating_add(page_up(len));
                let removed = self.proc(tgid).mappings.remove(addr, end);
                let tracked = self.release_pieces(&removed);
                self.counters.untracked_unmap_bytes += page_up(len).saturating_sub(tracked);
                self.release_resident(tgid, addr, end);
            }
            Op::Fault { page, stack } => {
                if self.proc(tgid).resident.touch(page, Page { stack, ts, counted: true }) {
                    self.add(Site { kind: Kind::Resident, stack, pid: tgid }, PAGE, ts);
                } else {
                    self.counters.repeated_faults += 1;
                }
            }
            Op::Discard { addr, len } => self.release_resident(tgid, addr, addr.saturating_add(page_up(len))),
            Op::Remap { old, old_len, addr, len, stack } => {
                self.remap(tgid, ts, old, old_len, addr, len, stack)
            }
            Op::Brk { brk, stack } => self.brk(tgid, ts, brk, stack),
            Op::OpenHandle { fd, kind, detail, cloexec, stack } => {
                let h = Handle { site: Site { kind, stack, pid: tgid }, detail, ts, counted: true, cloexec };
                self.open_handle(tgid, fd, h, true);
            }
            Op::AttributeHandle { fd, stack } => {
                let Some(h) = self.proc(tgid).handles.get(&fd).copied() else { return };
                let moved = Handle { site: Site { stack, ..h.site }, ..h };
                self.proc(tgid).handles.insert(fd, moved);
                if h.counted {
                    self.sub(h.site, 1, h.ts);
                    self.add(moved.site, 1, h.ts);
                }
            }
            Op::DupHandle { old, new, cloexec, stack } => {
                let Some(orig) = self.proc(tgid).handles.get(&old).copied() else {
                    self.counters.unknown_dups += 1;
                    return;
                };
                let site = Site { kind: orig.site.kind, stack, pid: tgid };
                let h = Handle { site, detail: orig.detail, ts, counted: true, cloexec };
                self.close_handle(tgid, new);
                self.open_handle(tgid, new, h, false);
            }
            Op::CloseHandle { fd } => {
                if !self.close_handle(tgid, fd) {
                    self.counters.unknown_closes += 1;
                }
            }
            Op::CloseRange { first, last, cloexec_only } => {
                let fds: Vec<u64> = self
                    .proc(tgid)
                    .handles
                    .keys()
                    .copied()
                    .filter(|fd| (first..=last).contains(fd))
                    .collect();
                for fd in fds {
                    if cloexec_only {
                        self.proc(tgid).handles.get_mut(&fd).expect("listed").cloexec = true;
                    } else {
                        self.close_handle(tgid, fd);
                    }
                }
            }
            Op::SetCloexec { fd, on } => {
                if let Some(h) = self.proc(tgid).handles.get_mut(&fd) {
                    h.cloexec = on;
                }
            }
            Op::Exec => self.exec(tgid),
            Op::Exit => self.exit(tgid),
            Op::Fork { child } => self.fork(tgid, child),
        }
    }

    /// The stack that opened `fd` of process `tgid` and when (ns), if it is
    /// open and counted (not held before recording, nor excluded as warm-up).
    pub fn counted_handle(&self, tgid: u32, fd: u64) -> Option<(StackId, u64)> {
        self.processes.get(&tgid)?.handles.get(&fd).filter(|h| h.counted).map(|h| (h.site.stack, h.ts))
    }

    /// [`Ledger::counted_handle`]'s stack.
    pub fn handle_stack(&self, tgid: u32, fd: u64) -> Option<StackId> {
        self.counted_handle(tgid, fd).map(|(stack, _)| stack)
    }

    fn open_handle(&mut self, tgid: u32, fd: u64, h: Handle, fresh_number: bool) {
        if let Some(prev) = self.proc(tgid).handles.insert(fd, h) {
            if fresh_number {
                // The kernel hands out free numbers only: we missed a close.
                self.counters.reused_fds += 1;
            }
            if prev.counted {
                self.sub(prev.site, 1, prev.ts);
            }
        }
        if h.counted {
            self.add(h.site, 1, h.ts);
        }
    }

    /// Returns false when `fd` was not open.
    fn close_handle(&mut self, tgid: u32, fd: u64) -> bool {
        match self.proc(tgid).handles.remove(&fd) {
            Some(h) => {
                if h.counted {
                    self.sub(h.site, 1, h.ts);
                }
                true
            }
            None => false,
        }
    }

    /// Records an fd that was open before recording started.
    pub fn add_preexisting(&mut self, tgid: u32, fd: u64, kind: Kind, detail: &'static str, cloexec: bool) {
        let site = Site { kind, stack: StackId::MAX, pid: tgid };
        let h = Handle { site, detail, ts: 0, counted: false, cloexec };
        self.proc(tgid).handles.insert(fd, h);
    }

    /// What an open fd is, if we know it.
    pub fn handle_of(&self, tgid: u32, fd: u64) -> Option<(Kind, &'static str)> {
        let h = self.processes.get(&tgid)?.handles.get(&fd)?;
        Some((h.site.kind, h.detail))
    }

    /// Every open fd: its site, number, and whether it counts (opened while
    /// recording, after any warm-up). Fds open before recording have the
    /// site of stack [`StackId::MAX`] (see [`Ledger::add_preexisting`]).
    pub fn open_fds(&self) -> impl Iterator<Item = (Site, u64, bool)> + '_ {
        self.processes.values().flat_map(|p| p.handles.iter().map(|(fd, h)| (h.site, *fd, h.counted)))
    }

    /// Open handles by (kind, detail), over all processes.
    pub fn handle_counts(&self) -> std::collections::BTreeMap<(Kind, &'static str), HandleCount> {
        let mut out: std::collections::BTreeMap<(Kind, &'static str), HandleCount> = Default::default();
        for h in self.processes.values().flat_map(|p| p.handles.values()) {
            let c = out.entry((h.site.kind, h.detail)).or_default();
            if h.counted {
                c.open += 1;
            } else {
                c.pre_existing += 1;
            }
        }
        out
    }

    /// exec: the old image's memory is gone; close-on-exec fds are closed.
    fn exec(&mut self, tgid: u32) {
        let Some(p) = self.processes.get_mut(&tgid) else { return };
        let blocks: Vec<Block> = p.heap.drain().map(|(_, b)| b).filter(|b| b.counted).collect();
        let mut pieces = p.mappings.remove(0, u64::MAX);
        pieces.extend(p.brk_ranges.remove(0, u64::MAX));
        p.brk = None;
        let cloexec: Vec<u64> = p.handles.iter().filter(|(_, h)| h.cloexec).map(|(fd, _)| *fd).collect();
        let pages = p.resident.drain();
        for b in blocks {
            self.sub(Site { kind: Kind::Heap, stack: b.stack, pid: tgid }, b.size, b.ts);
        }
        self.release_pages(tgid, &pages);
        self.release_pieces(&pieces);
        for fd in cloexec {
            self.close_handle(tgid, fd);
        }
    }

    /// exit: the process holds nothing any more (its memory and fds are the kernel's to free).
    fn exit(&mut self, tgid: u32) {
        self.exec(tgid);
        let fds: Vec<u64> =
            self.processes.get(&tgid).map(|p| p.handles.keys().copied().collect()).unwrap_or_default();
        for fd in fds {
            self.close_handle(tgid, fd);
        }
        self.processes.remove(&tgid);
    }

    /// fork: the child gets the parent's fds and heap blocks (same stacks,
    /// counted for the child too: it holds them until it frees or closes them
    /// or exits) and a copy of its mappings and pages, shared copy-on-write
    /// and so not counted twice.
    fn fork(&mut self, parent: u32, child: u32) {
        let Some(p) = self.processes.get(&parent) else { return };
        let handles: Vec<(u64, Handle)> = p.handles.iter().map(|(fd, h)| (*fd, *h)).collect();
        let heap: Vec<(u64, Block)> = p.heap.iter().map(|(a, b)| (*a, *b)).collect();
        let mappings: Vec<Piece<Region>> = p
            .mappings
            .iter()
            .map(|r| Piece { start: r.start, end: r.end, value: Region { counted: false, ..*r.value } })
            .collect();
        let brk = p.brk;
        let pages: Vec<(u64, Page)> =
            p.resident.iter().map(|(a, page)| (*a, Page { counted: false, ..*page })).collect();
        for (_, b) in heap.iter().filter(|(_, b)| b.counted) {
            self.add(Site { kind: Kind::Heap, stack: b.stack, pid: child }, b.size, b.ts);
        }
        let c = self.processes.entry(child).or_default();
        c.heap.extend(heap);
        for (addr, page) in pages {
            c.resident.touch(addr, page);
        }
        for m in mappings {
            c.mappings.insert(m.start, m.end, m.value);
        }
        c.brk = brk;
        for (fd, h) in handles {
            self.open_handle(child, fd, Handle { site: Site { pid: child, ..h.site }, ..h }, false);
        }
    }

    /// `free` of `addr` by process `tgid`, like [`Op::Free`] except that an
    /// unknown address is not counted: false, for the caller to classify.
    pub fn release_block(&mut self, tgid: u32, addr: u64) -> bool {
        self.free(tgid, addr)
    }

    /// Counted resident bytes by (the page's site, the site of the mapping
    /// or break range that holds the page, when one made while recording
    /// does): the memory split tells a page by the memory it lies in.
    pub fn resident_by_container(&self) -> HashMap<(Site, Option<Site>), u64> {
        let mut out: HashMap<(Site, Option<Site>), u64> = HashMap::new();
        for (&tgid, p) in &self.processes {
            let mut containers: Vec<Piece<&Region>> = p.mappings.iter().chain(p.brk_ranges.iter()).collect();
            containers.sort_unstable_by_key(|c| c.start);
            let mut next = containers.iter().peekable();
            for (&addr, page) in p.resident.iter().filter(|(_, page)| page.counted) {
                while next.peek().is_some_and(|c| c.end <= addr) {
                    next.next();
                }
                let container = next.peek().filter(|c| c.start <= addr).map(|c| c.value.site);
                let site = Site { kind: Kind::Resident, stack: page.stack, pid: tgid };
                *out.entry((site, container)).or_default() += PAGE;
            }
        }
        out
    }

    /// The processes the ledger has seen.
    pub fn processes(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes.keys().copied()
    }

    /// Stops counting everything live now (e.g. at the end of a warm-up):
    /// those items leave the totals, and their later release changes nothing.
    /// Only what is allocated from now on counts.
    pub fn exclude_live(&mut self) {
        self.exclude_allocated_before(u64::MAX);
    }

    /// Like [`exclude_live`](Self::exclude_live), for the items allocated
    /// before `ts` only: exact even when applied after later events.
    pub fn exclude_allocated_before(&mut self, ts: u64) {
        let mut heap = Vec::new();
        let mut handles = Vec::new();
        let mut pieces = Vec::new();
        let mut pages = Vec::new();
        for (&tgid, p) in self.processes.iter_mut() {
            for page in p.resident.values_mut().filter(|p| p.counted && p.ts < ts) {
                page.counted = false;
                pages.push((tgid, *page));
            }
            for b in p.heap.values_mut().filter(|b| b.counted && b.ts < ts) {
                b.counted = false;
                heap.push((tgid, *b));
            }
            for h in p.handles.values_mut().filter(|h| h.counted && h.ts < ts) {
                h.counted = false;
                handles.push(*h);
            }
            for ranges in [&mut p.mappings, &mut p.brk_ranges] {
                for piece in ranges.iter_mut().filter(|p| p.value.counted && p.value.ts < ts) {
                    pieces.push(Piece { start: piece.start, end: piece.end, value: *piece.value });
                    piece.value.counted = false;
                }
            }
        }
        for (tgid, b) in heap {
            self.sub(Site { kind: Kind::Heap, stack: b.stack, pid: tgid }, b.size, b.ts);
        }
        for h in handles {
            self.sub(h.site, 1, h.ts);
        }
        for (tgid, page) in pages {
            self.sub(Site { kind: Kind::Resident, stack: page.stack, pid: tgid }, PAGE, page.ts);
        }
        // Release the pieces as if unmapped: a mapping stops counting when all its pieces have.
        self.release_pieces(&pieces);
    }

    fn proc(&mut self, tgid: u32) -> &mut ProcessLedger {
        self.processes.entry(tgid).or_default()
    }

    fn alloc(&mut self, tgid: u32, ts: u64, addr: u64, size: u64, stack: StackId) {
        let block = Block { size, stack, ts, counted: true };
        if let Some(prev) = self.proc(tgid).heap.insert(addr, block) {
            self.counters.overwritten_blocks += 1;
            if prev.counted {
                self.sub(Site { kind: Kind::Heap, stack: prev.stack, pid: tgid }, prev.size, prev.ts);
            }
        }
        self.add(Site { kind: Kind::Heap, stack, pid: tgid }, size, ts);
    }

    /// Returns false when `addr` was not a live block.
    fn free(&mut self, tgid: u32, addr: u64) -> bool {
        match self.proc(tgid).heap.remove(&addr) {
            Some(b) => {
                if b.counted {
                    self.sub(Site { kind: Kind::Heap, stack: b.stack, pid: tgid }, b.size, b.ts);
                }
                true
            }
            None => false,
        }
    }

    fn new_call(&mut self, len: u64) -> u64 {
        self.next_call += 1;
        self.mapping_calls.insert(self.next_call, len);
        self.next_call
    }

    fn map(&mut self, tgid: u32, ts: u64, addr: u64, len: u64, site: Site) {
        if len == 0 {
            return;
        }
        let call = self.new_call(len);
        let region = Region { site, ts, call, counted: true };
        let replaced = self.proc(tgid).mappings.insert(addr, addr + len, region);
        self.release_pieces(&replaced);
        self.add(site, len, ts);
    }

    /// Releases removed pieces from their sites; returns the bytes released.
    fn release_pieces(&mut self, pieces: &[Piece<Region>]) -> u64 {
        let mut released = 0;
        for p in pieces {
            released += p.len();
            if !p.value.counted {
                continue;
            }
            let remaining = self.mapping_calls.get_mut(&p.value.call).map(|r| {
                *r = r.saturating_sub(p.len());
                *r
            });
            let o = self.sites.entry(p.value.site).or_default();
            o.bytes = o.bytes.saturating_sub(p.len());
            if remaining == Some(0) {
                self.mapping_calls.remove(&p.value.call);
                o.count = o.count.saturating_sub(1);
                o.ts_sum = o.ts_sum.saturating_sub(p.value.ts as u128);
            }
        }
        released
    }

    /// `mremap`: the surviving part of the old range moves (keeping its
    /// original site), growth is attributed to the mremap call's stack.
    #[allow(clippy::too_many_arguments)]
    fn remap(&mut self, tgid: u32, ts: u64, old: u64, old_len: u64, addr: u64, len: u64, stack: StackId) {
        let (old_len, len) = (page_up(old_len), page_up(len));
        if old_len == 0 {
            // Duplicates a shared mapping: a new range of `len` bytes.
            self.map(tgid, ts, addr, len, Site { kind: Kind::Mmap, stack, pid: tgid });
            return;
        }
        let removed = self.proc(tgid).mappings.remove(old, old + old_len);
        let tracked: u64 = removed.iter().map(Piece::len).sum();
        self.counters.untracked_unmap_bytes += old_len - tracked.min(old_len);
        let keep_end = old + old_len.min(len);
        // Resident pages move with the mapping; those past a shrunk end are gone.
        self.release_resident(tgid, keep_end, old + old_len);
        let displaced = self.proc(tgid).resident.relocate(old, keep_end - old, addr);
        self.release_pages(tgid, &displaced);
        let mut growth_kind = Kind::Mmap;
        for p in &removed {
            if p.start < keep_end {
                growth_kind = p.value.site.kind;
                let end = p.end.min(keep_end);
                let moved = Piece { start: p.start, end, value: p.value };
                let dropped = Piece { start: end, end: p.end, value: p.value };
                if !dropped.is_empty() {
                    self.release_pieces(&[dropped]);
                }
                let delta = addr.wrapping_sub(old);
                let replaced = self.proc(tgid).mappings.insert(
                    moved.start.wrapping_add(delta),
                    moved.end.wrapping_add(delta),
                    moved.value,
                );
                self.release_pieces(&replaced);
            } else {
                self.release_pieces(std::slice::from_ref(p));
            }
        }
        if len > old_len {
            self.map(tgid, ts, addr + old_len, len - old_len, Site { kind: growth_kind, stack, pid: tgid });
        }
    }

    fn brk(&mut self, tgid: u32, ts: u64, brk: u64, stack: StackId) {
        let Some(current) = self.proc(tgid).brk else {
            self.proc(tgid).brk = Some(brk);
            return;
        };
        self.proc(tgid).brk = Some(brk);
        if brk > current {
            let site = Site { kind: Kind::Brk, stack, pid: tgid };
            let call = self.new_call(brk - current);
            let region = Region { site, ts, call, counted: true };
            self.proc(tgid).brk_ranges.insert(current, brk, region);
            self.add(site, brk - current, ts);
        } else if brk < current {
            let removed = self.proc(tgid).brk_ranges.remove(brk, current);
            self.release_pieces(&removed);
            self.release_resident(tgid, page_up(brk), page_up(current));
        }
    }

    /// The pages of `start..end` are no longer resident.
    fn release_resident(&mut self, tgid: u32, start: u64, end: u64) {
        let pages = self.proc(tgid).resident.remove(start, end);
        self.release_pages(tgid, &pages);
    }

    fn release_pages(&mut self, tgid: u32, pages: &[(u64, Page)]) {
        for (_, page) in pages.iter().filter(|(_, p)| p.counted) {
            self.sub(Site { kind: Kind::Resident, stack: page.stack, pid: tgid }, PAGE, page.ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(fd: u64, stack: StackId) -> Op {
        Op::OpenHandle { fd, kind: Kind::Sockets, detail: "tcp", cloexec: false, stack }
    }

    fn file(fd: u64, cloexec: bool, stack: StackId) -> Op {
        Op::OpenHandle { fd, kind: Kind::Files, detail: "file", cloexec, stack }
    }

    fn at(ledger: &Ledger, kind: Kind, stack: StackId) -> (u64, u64) {
        ledger
            .sites
            .iter()
            .filter(|(s, _)| s.kind == kind && s.stack == stack)
            .fold((0, 0), |(b, c), (_, o)| (b + o.bytes, c + o.count))
    }

    #[test]
    fn resident_pages_follow_faults_unmaps_discards_remaps_and_brk() {
        let mut l = Ledger::new();
        let fault = |page| Op::Fault { page, stack: 3 };
        for i in 0..8 {
            l.apply(1, 10, fault(0x10_0000 + i * PAGE));
        }
        l.apply(1, 11, fault(0x10_0000)); // already resident
        assert_eq!(at(&l, Kind::Resident, 3), (8 * PAGE, 8));
        assert_eq!(l.counters.repeated_faults, 1);
        l.apply(1, 12, Op::Discard { addr: 0x10_0000, len: 2 * PAGE });
        l.apply(1, 13, Op::Unmap { addr: 0x10_7000, len: 1 });
        assert_eq!(at(&l, Kind::Resident, 3), (5 * PAGE, 5));
        // mremap shrinking 0x102000..0x107000 to 2 pages and moving it: 2 pages survive.
        l.apply(
            1,
            14,
            Op::Remap { old: 0x10_2000, old_len: 5 * PAGE, addr: 0x50_0000, len: 2 * PAGE, stack: 4 },
        );
        assert_eq!(at(&l, Kind::Resident, 3), (2 * PAGE, 2));
        l.apply(1, 15, Op::Unmap { addr: 0x50_0000, len: PAGE });
        assert_eq!(at(&l, Kind::Resident, 3), (PAGE, 1));
        // brk: grow, touch, shrink below the touched page.
        l.apply(1, 16, Op::Brk { brk: 0x90_0000, stack: 5 });
        l.apply(1, 17, Op::Brk { brk: 0x90_4000, stack: 5 });
        l.apply(1, 18, Op::Fault { page: 0x90_3000, stack: 6 });
        l.apply(1, 19, Op::Brk { brk: 0x90_2000, stack: 5 });
        assert_eq!(at(&l, Kind::Resident, 6), (0, 0));
        assert_eq!(l.total(Kind::Resident).bytes, PAGE);
    }

    #[test]
    fn resident_pages_are_told_by_the_mapping_that_holds_them() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10_0000, len: 4 * PAGE, file_backed: false, stack: 7 });
        l.apply(1, 11, Op::Brk { brk: 0x90_0000, stack: 5 });
        l.apply(1, 12, Op::Brk { brk: 0x90_2000, stack: 8 });
        for page in [0x10_0000, 0x10_3000, 0x90_1000, 0x70_0000] {
            l.apply(1, 13, Op::Fault { page, stack: 3 });
        }
        let split = l.resident_by_container();
        let resident = Site { kind: Kind::Resident, stack: 3, pid: 1 };
        let mapping = Site { kind: Kind::Mmap, stack: 7, pid: 1 };
        let brk = Site { kind: Kind::Brk, stack: 8, pid: 1 };
        assert_eq!(split.get(&(resident, Some(mapping))), Some(&(2 * PAGE)));
        assert_eq!(split.get(&(resident, Some(brk))), Some(&PAGE));
        assert_eq!(split.get(&(resident, None)), Some(&PAGE), "in memory mapped before recording");
        assert_eq!(split.values().sum::<u64>(), l.total(Kind::Resident).bytes);
    }

    #[test]
    fn resident_pages_warm_up_fork_and_exec() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Fault { page: 0x1000, stack: 1 });
        l.exclude_allocated_before(11);
        l.apply(1, 12, Op::Fault { page: 0x2000, stack: 1 });
        assert_eq!(at(&l, Kind::Resident, 1), (PAGE, 1), "the warm-up page no longer counts");
        l.apply(1, 13, Op::Unmap { addr: 0x1000, len: PAGE });
        assert_eq!(at(&l, Kind::Resident, 1), (PAGE, 1), "nor does its release");
        l.apply(1, 14, Op::Fork { child: 2 });
        assert_eq!(l.total(Kind::Resident).count, 1, "the child's copies are the parent's doing");
        l.apply(1, 15, Op::Exec);
        assert_eq!(l.total(Kind::Resident).count, 0);
    }

    #[test]
    fn alloc_and_free_balance() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 7 });
        l.apply(1, 11, Op::Alloc { addr: 0x20, size: 50, stack: 7 });
        l.apply(1, 12, Op::Free { addr: 0x10 });
        assert_eq!(at(&l, Kind::Heap, 7), (50, 1));
        assert_eq!(l.total(Kind::Heap).bytes, 50);
    }

    #[test]
    fn free_of_unknown_address_is_counted_not_applied() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 7 });
        l.apply(1, 11, Op::Free { addr: 0x99 });
        assert_eq!(l.counters.unknown_frees, 1);
        assert_eq!(at(&l, Kind::Heap, 7), (100, 1));
    }

    #[test]
    fn realloc_in_place_moves_ownership_to_the_realloc_site() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 1 });
        l.apply(1, 11, Op::Realloc { old: 0x10, addr: 0x10, size: 300, stack: 2 });
        assert_eq!(at(&l, Kind::Heap, 1), (0, 0));
        assert_eq!(at(&l, Kind::Heap, 2), (300, 1));
    }

    #[test]
    fn realloc_moved_releases_the_old_block() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 1 });
        l.apply(1, 11, Op::Realloc { old: 0x10, addr: 0x80, size: 300, stack: 2 });
        l.apply(1, 12, Op::Free { addr: 0x10 });
        assert_eq!(l.counters.unknown_frees, 1, "old block is gone after a moving realloc");
        assert_eq!(at(&l, Kind::Heap, 2), (300, 1));
        l.apply(1, 13, Op::Free { addr: 0x80 });
        assert_eq!(l.total(Kind::Heap), Outstanding::default());
    }

    #[test]
    fn realloc_of_null_is_an_allocation_and_of_unknown_is_counted() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Realloc { old: 0, addr: 0x10, size: 8, stack: 1 });
        l.apply(1, 10, Op::Realloc { old: 0x999, addr: 0x20, size: 8, stack: 1 });
        assert_eq!(at(&l, Kind::Heap, 1), (16, 2));
        assert_eq!(l.counters.unknown_reallocs, 1);
    }

    #[test]
    fn processes_have_separate_address_spaces() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 1 });
        l.apply(2, 10, Op::Free { addr: 0x10 });
        assert_eq!(at(&l, Kind::Heap, 1), (100, 1));
        assert_eq!(l.counters.unknown_frees, 1);
    }

    #[test]
    fn partial_munmap_keeps_the_mapping_counted_until_fully_gone() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 4 * PAGE, file_backed: false, stack: 3 });
        l.apply(1, 11, Op::Unmap { addr: 0x11000, len: PAGE });
        assert_eq!(at(&l, Kind::Mmap, 3), (3 * PAGE, 1));
        l.apply(1, 12, Op::Unmap { addr: 0x10000, len: PAGE });
        l.apply(1, 12, Op::Unmap { addr: 0x12000, len: 2 * PAGE });
        assert_eq!(at(&l, Kind::Mmap, 3), (0, 0));
        assert_eq!(l.counters.untracked_unmap_bytes, 0);
    }

    #[test]
    fn mmap_lengths_are_rounded_to_pages_and_unknown_unmaps_counted() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 100, file_backed: false, stack: 3 });
        assert_eq!(at(&l, Kind::Mmap, 3), (PAGE, 1));
        l.apply(1, 11, Op::Unmap { addr: 0x40000, len: 2 * PAGE });
        assert_eq!(l.counters.untracked_unmap_bytes, 2 * PAGE);
    }

    #[test]
    fn mremap_grow_in_place_attributes_growth_to_mremap_site() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 2 * PAGE, file_backed: false, stack: 3 });
        l.apply(1, 11, Op::Remap { old: 0x10000, old_len: 2 * PAGE, addr: 0x10000, len: 5 * PAGE, stack: 4 });
        assert_eq!(at(&l, Kind::Mmap, 3), (2 * PAGE, 1));
        assert_eq!(at(&l, Kind::Mmap, 4), (3 * PAGE, 1));
        l.apply(1, 12, Op::Unmap { addr: 0x10000, len: 5 * PAGE });
        assert_eq!(l.total(Kind::Mmap), Outstanding::default());
    }

    #[test]
    fn mremap_shrink_releases_the_tail() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 4 * PAGE, file_backed: false, stack: 3 });
        l.apply(1, 11, Op::Remap { old: 0x10000, old_len: 4 * PAGE, addr: 0x10000, len: PAGE, stack: 4 });
        assert_eq!(at(&l, Kind::Mmap, 3), (PAGE, 1));
        assert_eq!(at(&l, Kind::Mmap, 4), (0, 0));
    }

    #[test]
    fn mremap_move_relocates_the_range() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 2 * PAGE, file_backed: false, stack: 3 });
        l.apply(1, 11, Op::Remap { old: 0x10000, old_len: 2 * PAGE, addr: 0x80000, len: 3 * PAGE, stack: 4 });
        l.apply(1, 12, Op::Unmap { addr: 0x10000, len: 2 * PAGE });
        assert_eq!(l.counters.untracked_unmap_bytes, 2 * PAGE, "old range no longer mapped");
        assert_eq!(at(&l, Kind::Mmap, 3), (2 * PAGE, 1));
        assert_eq!(at(&l, Kind::Mmap, 4), (PAGE, 1));
        l.apply(1, 13, Op::Unmap { addr: 0x80000, len: 3 * PAGE });
        assert_eq!(l.total(Kind::Mmap), Outstanding::default());
    }

    #[test]
    fn map_fixed_over_a_live_range_replaces_it() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 4 * PAGE, file_backed: false, stack: 3 });
        l.apply(1, 11, Op::Map { addr: 0x11000, len: PAGE, file_backed: true, stack: 5 });
        assert_eq!(at(&l, Kind::Mmap, 3), (3 * PAGE, 1));
        assert_eq!(at(&l, Kind::FileMmap, 5), (PAGE, 1));
    }

    #[test]
    fn brk_growth_and_shrink() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Brk { brk: 0x1000, stack: 1 });
        l.apply(1, 11, Op::Brk { brk: 0x5000, stack: 2 });
        l.apply(1, 12, Op::Brk { brk: 0x7000, stack: 3 });
        l.apply(1, 13, Op::Brk { brk: 0x4000, stack: 4 });
        assert_eq!(at(&l, Kind::Brk, 2), (0x3000, 1));
        assert_eq!(at(&l, Kind::Brk, 3), (0, 0));
    }

    #[test]
    fn handles_open_close_and_reuse() {
        let mut l = Ledger::new();
        l.apply(1, 10, sock(3, 1));
        l.apply(1, 11, sock(4, 1));
        l.apply(1, 12, Op::CloseHandle { fd: 3 });
        l.apply(1, 13, Op::CloseHandle { fd: 9 });
        l.apply(1, 14, sock(4, 2));
        assert_eq!(at(&l, Kind::Sockets, 1), (0, 0));
        assert_eq!(at(&l, Kind::Sockets, 2), (1, 1));
        assert_eq!(l.counters.unknown_closes, 1);
        assert_eq!(l.counters.reused_fds, 1);
    }

    #[test]
    fn excluded_items_neither_count_nor_subtract_when_released() {
        let mut l = Ledger::new();
        l.apply(1, 1, Op::Alloc { addr: 0x10, size: 100, stack: 1 });
        l.apply(1, 1, Op::Map { addr: 0x10000, len: 2 * PAGE, file_backed: false, stack: 2 });
        l.apply(1, 1, sock(3, 3));
        l.exclude_live();
        assert_eq!(l.sites().count(), 0);
        l.apply(1, 2, Op::Alloc { addr: 0x20, size: 7, stack: 1 });
        l.apply(1, 2, Op::Free { addr: 0x10 });
        l.apply(1, 2, Op::Unmap { addr: 0x10000, len: PAGE });
        l.apply(1, 2, Op::CloseHandle { fd: 3 });
        assert_eq!(at(&l, Kind::Heap, 1), (7, 1));
        assert_eq!(at(&l, Kind::Mmap, 2), (0, 0));
        assert_eq!(at(&l, Kind::Sockets, 3), (0, 0));
        assert_eq!(l.counters, LedgerCounters::default(), "releases of excluded items are not unknown");
    }

    #[test]
    fn exclusion_by_time_keeps_later_items_even_when_applied_late() {
        let mut l = Ledger::new();
        l.apply(1, 10, Op::Alloc { addr: 0x10, size: 100, stack: 1 });
        l.apply(1, 10, Op::Map { addr: 0x10000, len: 2 * PAGE, file_backed: false, stack: 2 });
        l.apply(1, 30, Op::Alloc { addr: 0x20, size: 7, stack: 1 });
        l.apply(1, 30, Op::Map { addr: 0x40000, len: PAGE, file_backed: false, stack: 2 });
        l.exclude_allocated_before(20);
        assert_eq!(at(&l, Kind::Heap, 1), (7, 1));
        assert_eq!(at(&l, Kind::Mmap, 2), (PAGE, 1));
        l.apply(1, 40, Op::Unmap { addr: 0x10000, len: 2 * PAGE });
        assert_eq!(at(&l, Kind::Mmap, 2), (PAGE, 1));
    }

    #[test]
    fn dup_takes_the_kind_of_the_original_and_the_stack_of_the_call() {
        let mut l = Ledger::new();
        l.apply(1, 1, sock(3, 1));
        l.apply(1, 2, file(4, false, 2));
        l.apply(1, 3, Op::DupHandle { old: 3, new: 5, cloexec: false, stack: 7 });
        assert_eq!(at(&l, Kind::Sockets, 7), (1, 1));
        assert_eq!(l.handle_of(1, 5), Some((Kind::Sockets, "tcp")));
        // dup2 onto an open fd closes it first.
        l.apply(1, 4, Op::DupHandle { old: 3, new: 4, cloexec: false, stack: 8 });
        assert_eq!(at(&l, Kind::Files, 2), (0, 0));
        assert_eq!(at(&l, Kind::Sockets, 8), (1, 1));
        assert_eq!(l.counters.reused_fds, 0);
        l.apply(1, 5, Op::DupHandle { old: 99, new: 6, cloexec: false, stack: 8 });
        assert_eq!(l.counters.unknown_dups, 1);
    }

    #[test]
    fn close_range_closes_or_marks_cloexec() {
        let mut l = Ledger::new();
        for fd in 3..8 {
            l.apply(1, 1, file(fd, false, 1));
        }
        l.apply(1, 2, Op::CloseRange { first: 6, last: u64::MAX, cloexec_only: false });
        assert_eq!(at(&l, Kind::Files, 1), (3, 3));
        l.apply(1, 3, Op::CloseRange { first: 3, last: 3, cloexec_only: true });
        l.apply(1, 4, Op::Exec);
        assert_eq!(at(&l, Kind::Files, 1), (2, 2), "exec closed the fd marked close-on-exec");
    }

    #[test]
    fn exec_closes_cloexec_fds_and_forgets_the_old_image() {
        let mut l = Ledger::new();
        l.apply(1, 1, file(3, true, 1));
        l.apply(1, 1, file(4, false, 1));
        l.apply(1, 1, file(5, false, 1));
        l.apply(1, 1, Op::SetCloexec { fd: 5, on: true });
        l.apply(1, 1, Op::Alloc { addr: 0x10, size: 10, stack: 2 });
        l.apply(1, 1, Op::Map { addr: 0x10000, len: PAGE, file_backed: false, stack: 3 });
        l.apply(1, 2, Op::Exec);
        assert_eq!(at(&l, Kind::Files, 1), (1, 1));
        assert_eq!(l.total(Kind::Heap), Outstanding::default());
        assert_eq!(l.total(Kind::Mmap), Outstanding::default());
        l.apply(1, 3, Op::Free { addr: 0x10 });
        assert_eq!(l.counters.unknown_frees, 1, "the old image's blocks are gone");
    }

    #[test]
    fn fork_child_inherits_fds_and_heap_blocks_with_parent_stacks() {
        let mut l = Ledger::new();
        l.apply(1, 1, sock(3, 1));
        l.apply(1, 1, Op::Alloc { addr: 0x10, size: 10, stack: 2 });
        l.apply(1, 1, Op::Map { addr: 0x10000, len: 4096, file_backed: false, stack: 3 });
        l.apply(1, 2, Op::Fork { child: 2 });
        assert_eq!(at(&l, Kind::Sockets, 1), (2, 2), "one in each process");
        assert_eq!(at(&l, Kind::Heap, 2), (20, 2), "the child holds its copy of the block");
        assert_eq!(at(&l, Kind::Mmap, 3), (4096, 1), "shared copy-on-write mappings count once");
        l.apply(2, 3, Op::Free { addr: 0x10 });
        assert_eq!(l.counters.unknown_frees, 0, "the child may free its inherited copy");
        assert_eq!(at(&l, Kind::Heap, 2), (10, 1), "the parent's block is still live");
        l.apply(2, 4, Op::CloseHandle { fd: 3 });
        assert_eq!(at(&l, Kind::Sockets, 1), (1, 1));
    }

    #[test]
    fn preexisting_fds_are_known_but_never_counted() {
        let mut l = Ledger::new();
        l.add_preexisting(1, 0, Kind::Files, "file", false);
        l.add_preexisting(1, 9, Kind::Sockets, "socket", true);
        assert_eq!(l.sites().count(), 0);
        l.apply(1, 1, Op::DupHandle { old: 9, new: 10, cloexec: false, stack: 4 });
        assert_eq!(at(&l, Kind::Sockets, 4), (1, 1), "a dup made while recording counts");
        l.apply(1, 2, Op::CloseHandle { fd: 0 });
        assert_eq!(l.counters.unknown_closes, 0);
        let counts = l.handle_counts();
        assert_eq!(counts[&(Kind::Sockets, "socket")], HandleCount { open: 1, pre_existing: 1 });
    }

    #[test]
    fn mean_age() {
        let mut l = Ledger::new();
        l.apply(1, 100, Op::Alloc { addr: 1, size: 1, stack: 1 });
        l.apply(1, 300, Op::Alloc { addr: 2, size: 1, stack: 1 });
        assert_eq!(l.total(Kind::Heap).mean_age_ns(1200), 1000);
    }
}
