//! Call stacks: interning raw frame lists into small ids, locating each
//! frame in the process's mappings while the process is alive, marking where
//! a walk stopped short, and repairing frame-pointer syscall stacks whose
//! walk skipped the wrapper's caller. Its submodules read the process's
//! mappings (`procmaps`), its JIT perf maps (`perfmap`), its V8 heap for
//! JS function names (`v8`) and what JIT frames
//! mean for a stack's identity (`jit`), build call-frame
//! tables for the kernel's walker (`unwind`) and name frames (`symbols`).

pub mod jit;
pub mod perfmap;
pub mod procmaps;
pub mod symbols;
pub mod unwind;
pub mod v8;

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    sync::Arc,
    time::{Duration, Instant},
};

use profiler_common::StackStatus;

use crate::{files::target::open_path_mapped, ledger::StackId, stacks::procmaps::ProcessMaps};

/// Marker frames, appended as the outermost frame of a stack whose walk did
/// not reach the program's first frame: an address no user code has (above
/// the canonical user half), with the reason in its low byte.
const CUT_MARKER: u64 = 0xffff_ffff_ffff_ff00;

/// The marker frame for a stack cut for `reason`.
pub fn cut_marker(reason: StackStatus) -> u64 {
    CUT_MARKER | reason as u64
}

/// What a marker frame says, in the stack's place of the missing frames.
pub fn cut_name(reason: StackStatus) -> String {
    match reason {
        StackStatus::Complete => "[complete]".into(),
        StackStatus::CaptureFailed => "[stack unavailable]".into(),
        StackStatus::Truncated => format!("[truncated: deeper than {} frames]", profiler_common::MAX_FRAMES),
        StackStatus::Unreadable => "[unwind failed: stack memory unreadable]".into(),
        StackStatus::UnsupportedRule => {
            "[unwind failed: call-frame rule not followed (signal frame?)]".into()
        }
        StackStatus::FramePointers => {
            "[frame pointers only: no call-frame tables for the process yet]".into()
        }
        StackStatus::BadFrame => "[unwind failed: the walk left the stack]".into(),
    }
}

/// Marker frames between a stack's own frames and those of the code it
/// acted for (addresses no user code has, below the [`CUT_MARKER`]s), with
/// the [`Handoff`] in the low byte.
const HANDOFF_MARKER: u64 = 0xffff_ffff_ffff_fe00;

/// Why a stack continues with another one's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Handoff {
    /// A libuv threadpool thread ran work that another thread queued.
    Threadpool = 0,
    /// The fd was given to a libuv handle (a socket, a pipe) that the code
    /// after the marker created, maybe a tick earlier (`net.connect` defers
    /// the connect to `process.nextTick`).
    Handle = 1,
    /// The fd was opened by a file stream a tick after the code after the
    /// marker created it (read by the inspector: its frames give the lines
    /// of the calls, not of the functions' starts).
    Stream = 2,
}

impl Handoff {
    pub fn marker(self) -> u64 {
        HANDOFF_MARKER | self as u64
    }

    fn of_marker(word: u64) -> Option<Self> {
        match word {
            w if w == Self::Threadpool.marker() => Some(Self::Threadpool),
            w if w == Self::Handle.marker() => Some(Self::Handle),
            w if w == Self::Stream.marker() => Some(Self::Stream),
            _ => None,
        }
    }

    /// What the marker frame says.
    pub fn name(self) -> &'static str {
        match self {
            Self::Threadpool => "[libuv threadpool: the work was queued by]",
            Self::Handle => "[libuv handle: the fd's socket or pipe was created by]",
            Self::Stream => "[fs stream: opened a tick after it was created at]",
        }
    }

    /// Whether a frame named `function` is a handoff's marker.
    pub fn is_marker_name(function: &str) -> bool {
        [Self::Threadpool, Self::Handle, Self::Stream].iter().any(|h| h.name() == function)
    }

    /// The module the marker frame is shown in.
    pub fn module(self) -> &'static str {
        match self {
            Self::Threadpool | Self::Handle => "[libuv]",
            Self::Stream => "[node]",
        }
    }
}

/// The frame word of the `index`th JS function named outside the kernel's
/// walk (by the inspector): a marker word, below the [`HANDOFF_MARKER`]s.
pub fn named_js_marker(index: usize) -> Option<u64> {
    const NAMED_JS_MARKER: u64 = 0xffff_ffff_ffff_f000;
    (index < 0xe00).then_some(NAMED_JS_MARKER | index as u64)
}

/// The lookup key of a stack: process, program image, frames.
pub fn stack_key(tgid: u32, image: u64, frames: &[u64]) -> Vec<u64> {
    let mut key = Vec::with_capacity(frames.len() + 2);
    key.push(tgid as u64);
    key.push(image);
    key.extend_from_slice(frames);
    key
}

/// Deduplicated frame lists (innermost first).
#[derive(Default)]
pub struct StackTable {
    index: HashMap<Box<[u64]>, StackId>,
    stacks: Vec<(u32, Box<[u64]>)>,
}

impl StackTable {
    /// Returns the id of `frames` captured in process `tgid` running its
    /// `image`-th program (addresses mean different code in different
    /// processes, and in one process before and after an exec).
    pub fn intern(&mut self, tgid: u32, image: u64, frames: &[u64]) -> (StackId, bool) {
        let key = stack_key(tgid, image, frames);
        if let Some(id) = self.index.get(key.as_slice()) {
            return (*id, false);
        }
        let id = self.stacks.len() as StackId;
        self.stacks.push((tgid, frames.into()));
        self.index.insert(key.into_boxed_slice(), id);
        (id, true)
    }

    /// (tgid, frames) of a stack.
    pub fn get(&self, id: StackId) -> (u32, &[u64]) {
        let (tgid, frames) = &self.stacks[id as usize];
        (*tgid, frames)
    }
}

/// Where a code address lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// Inside a mapped file, at this file offset.
    File { path: Arc<str>, offset: u64 },
    /// JIT code named by the process's perf map.
    Jit { name: Arc<str>, addr: u64 },
    /// Memory with no file behind it: `[jit]` (unnamed executable), `[vdso]`, ...
    Anonymous { name: Arc<str>, addr: u64 },
    /// Not mapped when we looked.
    Unmapped { addr: u64 },
    /// Not a frame: where and why the walk stopped ([`cut_marker`]).
    Cut(StackStatus),
    /// Not a frame: the frames after it are those of the code this stack
    /// acted for ([`Handoff::marker`]).
    Handoff(Handoff),
    /// A JS frame recorded as its function (V8's `SharedFunctionInfo` at
    /// `sfi`, see [`profiler_common::V8_FUNCTION`]), named from the
    /// target's heap; `None` when it could not be read.
    JsFunction { function: Option<Arc<v8::JsFunction>>, sfi: u64 },
}

impl Location {
    /// Whether the frame is JS: a function read from V8's heap, JIT code a
    /// perf map names, or unnamed JIT code.
    pub fn is_js(&self) -> bool {
        match self {
            Self::JsFunction { .. } | Self::Jit { .. } => true,
            Self::Anonymous { name, .. } => &**name == "[jit]",
            _ => false,
        }
    }
}

/// Whether a frame word is a JS function recorded by the kernel walker
/// rather than a code address.
pub fn is_js_function(word: u64) -> bool {
    // Marker frames have their 52 high bits set; a V8 word's address bits
    // 12-46 never all are (that is the top of the user stack).
    word & profiler_common::V8_FUNCTION != 0 && word >> 12 != u64::MAX >> 12
}

/// Locates addresses of one process, caching answers and re-reading the
/// maps when an address falls outside the last snapshot.
pub struct AddressSpace {
    pid: u32,
    maps: ProcessMaps,
    read_at: Option<Instant>,
    cache: HashMap<u64, Location>,
    paths: HashMap<String, Arc<str>>,
    files: HashMap<Arc<str>, Option<File>>,
    libc: Option<Arc<str>>,
    /// Set when the process changed its mappings since the last read.
    stale: bool,
    /// Addresses still unmapped after a fresh read.
    unmapped: std::collections::HashSet<u64>,
    /// Never re-read: a forked child's copy of its parent's layout, which
    /// /proc would no longer show once the child has exec'd.
    frozen: bool,
    unwinder: crate::stacks::unwind::Unwinder,
    perf_map: crate::stacks::perfmap::PerfMap,
    perf_map_read_at: Option<Instant>,
    /// The process's V8 heap, once a JS function frame needed it (`None`
    /// inside: no module with V8's metadata).
    v8: Option<Option<v8::V8Heap>>,
}

const REFRESH_INTERVAL: Duration = Duration::from_millis(20);

impl AddressSpace {
    pub fn new(pid: u32, maps: ProcessMaps) -> Self {
        let mut space = Self {
            pid,
            maps: ProcessMaps::default(),
            read_at: None,
            cache: HashMap::new(),
            paths: HashMap::new(),
            files: HashMap::new(),
            libc: None,
            stale: false,
            unmapped: Default::default(),
            frozen: false,
            unwinder: Default::default(),
            perf_map: Default::default(),
            perf_map_read_at: None,
            v8: None,
        };
        space.set_maps(maps);
        space
    }

    fn set_maps(&mut self, maps: ProcessMaps) {
        if let Some(libc) = maps.libc() {
            self.libc = Some(self.intern_path(libc));
        }
        self.maps = maps;
        self.read_at = Some(Instant::now());
        self.stale = false;
    }

    fn intern_path(&mut self, path: &str) -> Arc<str> {
        self.paths.entry(path.to_string()).or_insert_with(|| Arc::from(path)).clone()
    }

    /// A snapshot that is never re-read (see `frozen`).
    pub fn frozen(pid: u32, maps: ProcessMaps) -> Self {
        Self { frozen: true, ..Self::new(pid, maps) }
    }

    /// The mappings as last read.
    pub fn maps(&self) -> &ProcessMaps {
        &self.maps
    }

    /// The mappings changed: re-read them before the next lookup that needs it.
    pub fn invalidate(&mut self) {
        self.read_at = None;
        self.stale = true;
    }

    /// Re-reads the maps when they changed (at most every
    /// [`REFRESH_INTERVAL`]) or when they lack `addr` (at once, once per
    /// address: a JIT maps new code all the time, while addresses that stay
    /// unmapped are garbage from a broken stack walk and keep coming back).
    fn refresh_if_outdated(&mut self, addr: u64) {
        if self.maps.find(addr).is_none() {
            if self.unmapped.contains(&addr) {
                return;
            }
            self.refresh();
            if self.maps.find(addr).is_none() {
                if self.unmapped.len() > 1 << 16 {
                    self.unmapped.clear();
                }
                self.unmapped.insert(addr);
            }
        } else if self.stale && self.read_at.is_none_or(|t| t.elapsed() > REFRESH_INTERVAL) {
            self.refresh();
        }
    }

    /// Re-reads `/proc/PID/maps` (no-op once the process is gone).
    pub fn refresh(&mut self) {
        if self.frozen {
            return;
        }
        if let Ok(maps) = ProcessMaps::read(self.pid) {
            self.set_maps(maps);
        }
    }

    pub fn locate(&mut self, addr: u64) -> Location {
        if let Some(handoff) = Handoff::of_marker(addr) {
            return Location::Handoff(handoff);
        }
        if addr & CUT_MARKER == CUT_MARKER {
            return Location::Cut(StackStatus::from_u8(addr as u8).unwrap_or(StackStatus::BadFrame));
        }
        if let Some(loc) = self.cache.get(&addr) {
            return loc.clone();
        }
        if is_js_function(addr) {
            // Cached (and bounded) by the V8 heap reader, not here.
            let sfi = addr & profiler_common::V8_FUNCTION_ADDRESS;
            return Location::JsFunction {
                function: self.v8_heap().and_then(|heap| heap.function(addr)),
                sfi,
            };
        }
        self.refresh_if_outdated(addr);
        let loc = match self.maps.find(addr).cloned() {
            Some(m) => match m.file() {
                Some(path) => Location::File { path: self.intern_path(path), offset: m.file_offset(addr) },
                None if m.name.is_empty() && m.executable => match self.jit_name(addr) {
                    Some(name) => Location::Jit { name, addr },
                    None => Location::Anonymous { name: self.intern_path("[jit]"), addr },
                },
                None => {
                    let name = if m.name.is_empty() { "[anon]" } else { m.name.as_str() };
                    Location::Anonymous { name: self.intern_path(name), addr }
                }
            },
            None => Location::Unmapped { addr },
        };
        self.cache.insert(addr, loc.clone());
        loc
    }

    /// The V8 heap of the process, found (once) from the module that holds
    /// V8's metadata.
    fn v8_heap(&mut self) -> Option<&mut v8::V8Heap> {
        if self.v8.is_none() {
            let started = Instant::now();
            let mut paths: Vec<&str> =
                self.maps.mappings.iter().filter(|m| m.executable).filter_map(|m| m.file()).collect();
            paths.dedup();
            let layout = paths.iter().find_map(|path| {
                let module = open_path_mapped(self.pid, &self.maps, path).ok()?;
                v8::V8Layout::of_module(&module.file)
            });
            let mut heap = layout.map(|layout| v8::V8Heap::new(self.pid, layout));
            if let Some(heap) = &mut heap {
                heap.stats.layout_ms = started.elapsed().as_secs_f64() * 1e3;
            }
            self.v8 = Some(heap);
        }
        self.v8.as_mut().and_then(Option::as_mut)
    }

    /// Whether `addr` is in executable memory (file-backed or JIT), or a JS
    /// function the kernel walker recorded. A frame-pointer walk that
    /// reaches anything else has left the real stack.
    pub fn is_code(&mut self, addr: u64) -> bool {
        if is_js_function(addr) {
            return true;
        }
        self.refresh_if_outdated(addr);
        self.maps.find(addr).is_some_and(|m| m.executable)
    }

    /// The perf-map name of JIT code at `addr`, re-reading the map (at most
    /// every [`REFRESH_INTERVAL`]) when it does not know the address yet.
    pub fn jit_name(&mut self, addr: u64) -> Option<Arc<str>> {
        if let Some(name) = self.perf_map.lookup(addr) {
            return Some(name);
        }
        if self.perf_map_read_at.is_none_or(|t| t.elapsed() > REFRESH_INTERVAL) {
            self.perf_map_read_at = Some(Instant::now());
            self.perf_map.refresh(self.pid);
        }
        self.perf_map.lookup(addr)
    }

    /// Reads what was appended to the perf map now, then names `addr` if it can.
    pub fn jit_name_now(&mut self, addr: u64) -> Option<Arc<str>> {
        self.perf_map_read_at = None;
        self.jit_name(addr)
    }

    /// Whether JIT frames were named from its perf map (they may still be
    /// named again, for a forked child holding copies under its stacks).
    pub fn names_jit_code(&self) -> bool {
        self.perf_map_read_at.is_some()
    }

    /// What naming JS functions from the V8 heap cost in this process.
    pub fn js_naming(&self) -> crate::report::model::JsNaming {
        self.v8.as_ref().and_then(Option::as_ref).map(|heap| heap.stats).unwrap_or_default()
    }

    /// Perf-map bytes past the read bound.
    pub fn perf_map_unread(&self) -> u64 {
        self.perf_map.unread_bytes
    }

    /// Malformed lines met in the process's perf map.
    pub fn perf_map_garbage(&self) -> u64 {
        self.perf_map.garbage_lines
    }

    /// Whether `addr` lies in the process's C library.
    pub fn in_libc(&mut self, addr: u64) -> bool {
        match (self.locate(addr), &self.libc) {
            (Location::File { path, .. }, Some(libc)) => Arc::ptr_eq(&path, libc) || *path == **libc,
            _ => false,
        }
    }

    /// Where, above the stack pointer, the code at `addr` keeps its return
    /// address (from the module's call-frame information), in bytes.
    pub fn return_address_slot(&mut self, addr: u64) -> Option<u64> {
        let Location::File { path, offset } = self.locate(addr) else { return None };
        let (pid, maps) = (self.pid, &self.maps);
        let open = || open_path_mapped(pid, maps, &path).ok();
        self.unwinder.return_address_slot(&path, open, offset)
    }

    /// Whether `addr` is plausibly a return address: it is in executable
    /// file-backed code and the bytes before it encode a `call`.
    pub fn is_return_address(&mut self, addr: u64) -> bool {
        let Some(m) = self.maps.find(addr).cloned() else {
            return false;
        };
        if !m.executable {
            return false;
        }
        let Location::File { path, offset } = self.locate(addr) else {
            return false;
        };
        if offset < 7 {
            return false;
        }
        let (pid, maps) = (self.pid, &self.maps);
        let file = self
            .files
            .entry(path.clone())
            .or_insert_with(|| Some(open_path_mapped(pid, maps, &path).ok()?.file));
        let mut before = [0u8; 7];
        match file {
            Some(f) if f.read_exact_at(&mut before, offset - 7).is_ok() => follows_call(&before),
            _ => false,
        }
    }
}

/// Whether the 7 bytes preceding an address end with an x86-64 `call`.
fn follows_call(b: &[u8; 7]) -> bool {
    let modrm_is_call = |m: u8| (m >> 3) & 7 == 2;
    b[2] == 0xe8 // call rel32
        || (b[5] == 0xff && modrm_is_call(b[6]) && b[6] >> 6 == 3) // call reg
        || (b[4] == 0xff && modrm_is_call(b[5]) && b[5] >> 6 == 1) // call [reg+disp8]
        || (b[1] == 0xff && modrm_is_call(b[2]) && (b[2] >> 6 == 2 || b[2] & 0xc7 == 0x05)) // [reg+disp32], [rip+disp32]
        || (b[0] == 0xff && modrm_is_call(b[1]) && b[1] >> 6 == 2 && b[1] & 7 == 4) // [sib+disp32]
        || (b[3] == 0xff && modrm_is_call(b[4]) && b[4] >> 6 == 1 && b[4] & 7 == 4) // [sib+disp8]
        || (b[4] == 0xff && modrm_is_call(b[5]) && b[5] >> 6 == 0 && b[5] & 7 == 4) // [sib]
        || (b[5] == 0xff && modrm_is_call(b[6]) && b[6] >> 6 == 0) // [reg]
}

/// Cuts a stack at its first frame outside executable memory: code built
/// without frame pointers (typically libc) leaves the walk following data
/// words, and nothing after such a frame is real. Returns whether it cut.
pub fn truncate_at_invalid_frame(frames: &mut Vec<u64>, space: &mut AddressSpace) -> bool {
    // The innermost frame is kept even if odd: it is where the call happened.
    match frames.iter().skip(1).position(|&a| !space.is_code(a)) {
        Some(i) => {
            frames.truncate(i + 1);
            true
        }
        None => false,
    }
}

/// Completes a stack captured at a syscall. The kernel's frame-pointer walk
/// starts in the (frameless) libc wrapper and continues from the caller's
/// frame pointer, skipping the caller itself; its return address is the first
/// return-address-like word at the user stack pointer (`hints`). The wrapper
/// frame itself is dropped, so the leaf is the function that made the call.
pub fn repair_syscall_stack(frames: &[u64], hints: &[u64], space: &mut AddressSpace) -> Vec<u64> {
    let mut out: Vec<u64> = frames.to_vec();
    let Some(&ip) = out.first() else { return out };
    let ret = unwind_out_of_libc(ip, hints, space)
        .or_else(|| hints.iter().copied().find(|&w| w != 0 && space.is_return_address(w)));
    let Some(ret) = ret else {
        // The caller could not be found: keep the wrapper as the leaf, it still names the call.
        out.truncate(1);
        return out;
    };
    if out.get(1) != Some(&ret) {
        out.insert(1, ret);
    }
    if space.in_libc(out[0]) {
        out.remove(0);
    }
    out
}

/// Completes a stack captured at a page fault. The touching code may be a
/// function without a frame of its own (memset, a leaf loop), and then the
/// kernel's frame-pointer walk skips its caller; the function's call-frame
/// information says where above the stack pointer (`hints`) that return
/// address is. The touching function stays the leaf.
pub fn repair_fault_stack(frames: &[u64], hints: &[u64], space: &mut AddressSpace) -> Vec<u64> {
    let mut out: Vec<u64> = frames.to_vec();
    let Some(&ip) = out.first() else { return out };
    let ret = space
        .return_address_slot(ip)
        .and_then(|slot| hints.get((slot / 8) as usize).copied())
        .filter(|&ret| space.is_return_address(ret));
    if let Some(ret) = ret {
        if out.get(1) != Some(&ret) {
            out.insert(1, ret);
        }
    }
    out
}

/// Follows the call-frame information from the syscall instruction up
/// through the C library's own frames (a wrapper may call an inner helper
/// that makes the syscall) to the first return address outside it: the
/// code that called the library. `hints` are the words at the stack pointer.
fn unwind_out_of_libc(ip: u64, hints: &[u64], space: &mut AddressSpace) -> Option<u64> {
    let mut pc = ip;
    let mut sp_offset = 0u64; // bytes above the syscall's stack pointer
    for depth in 0..8 {
        // Past the first frame, `pc` is a return address: look up its call instruction.
        let lookup = if depth == 0 { pc } else { pc - 1 };
        let slot = space.return_address_slot(lookup)?;
        let ret = *hints.get(((sp_offset + slot) / 8) as usize)?;
        if !space.is_return_address(ret) {
            return None;
        }
        if !space.in_libc(ret) {
            return Some(ret);
        }
        sp_offset += slot + 8;
        pc = ret;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_per_process_and_stable() {
        let mut t = StackTable::default();
        let (a, new_a) = t.intern(1, 0, &[1, 2, 3]);
        let (b, new_b) = t.intern(1, 0, &[1, 2, 3]);
        let (c, _) = t.intern(2, 0, &[1, 2, 3]);
        let (d, _) = t.intern(1, 1, &[1, 2, 3]);
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d, "after an exec the same addresses are other code");
        assert_eq!(t.get(c), (2, &[1u64, 2, 3][..]));
    }

    #[test]
    fn stacks_are_cut_at_the_first_frame_outside_code() {
        let maps = ProcessMaps::parse(
            "1000-2000 r-xp 00000000 fe:00 1 /bin/prog\n\
             3000-4000 rw-p 00000000 fe:00 1 /bin/prog\n\
             5000-6000 r-xp 00000000 00:00 0 \n",
        );
        // A pid that cannot exist, so the maps above are never refreshed.
        let mut space = AddressSpace::new(u32::MAX, maps);
        let mut jit_ok = vec![0x1100, 0x5100, 0x1200];
        assert!(!truncate_at_invalid_frame(&mut jit_ok, &mut space), "anonymous code (JIT) is code");
        let mut into_data = vec![0x1100, 0x1200, 0x3100, 0x1300];
        assert!(truncate_at_invalid_frame(&mut into_data, &mut space));
        assert_eq!(into_data, vec![0x1100, 0x1200]);
        let mut garbage = vec![0x1100, 0x2f656c61636f6c2f];
        assert!(truncate_at_invalid_frame(&mut garbage, &mut space));
        assert_eq!(garbage, vec![0x1100]);
    }

    #[test]
    fn recognises_call_encodings() {
        assert!(follows_call(&[0, 0, 0xe8, 1, 2, 3, 4])); // call rel32
        assert!(follows_call(&[0, 0, 0, 0, 0, 0xff, 0xd0])); // call *%rax
        assert!(follows_call(&[0, 0xff, 0x15, 1, 2, 3, 4])); // call *disp(%rip)
        assert!(follows_call(&[0, 0, 0, 0, 0xff, 0x50, 0x08])); // call *8(%rax)
        assert!(!follows_call(&[0x48, 0x89, 0xc7, 0x48, 0x89, 0xc7, 0x90]));
    }
}
