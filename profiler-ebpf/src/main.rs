//! Kernel side of the profiler: allocator uprobes (optionally byte-sampled),
//! syscall raw tracepoints and first-touch page faults, filtered to the
//! target processes, each emitting one ring-buffer record with the user
//! stack captured where the frame chain is intact (at the allocator's
//! return, at the fault, or at syscall exit plus stack hints).
#![no_std]
#![no_main]
// Compare-and-swap: the bpf target declares no CAS, yet BPF v3 has one
// (`BPF_CMPXCHG`, kernel 5.12); the object is built with `-Ctarget-cpu=v3`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_prandom_u32,
        bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_send_signal,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use core::intrinsics::{atomic_cxchg, AtomicOrdering};
use profiler_common::{
    config, counters, syscalls, AllocApi, Event, EventKind, StackStatus, FP_MAX_FRAMES, HEADER_SIZE, MAX_FRAMES,
    MAX_SYSCALL_FRAMES, STACK_HINT_WORDS,
};

mod unwind;
use unwind::{Hijacked, UserRegs};

/// Pending bytes in the ring buffer above which the reader is woken at once.
const WAKEUP_THRESHOLD: u64 = 256 * 1024;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU scratch records, claimed one per running program. Programs do
/// nest on a CPU: a page fault taken by a uprobe program's own reads of user
/// memory (the stack walk) runs the page-fault tracepoint programs inside it,
/// and uprobe programs run with migration, not preemption, disabled, so on a
/// preemptible kernel another task's uprobe program can run between two of
/// its instructions. A slot is claimed with compare-and-swap and released
/// when its [`Claim`] is dropped; all slots busy is counted as a lost event.
#[map]
static SCRATCH: PerCpuArray<Slot> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

const SCRATCH_SLOTS: u32 = 4;

/// Marks a slot's owner: `pid_tgid | CLAIMED` (pid_tgid never sets bit 63).
const CLAIMED: u64 = 1 << 63;

#[repr(C)]
struct Slot {
    /// `pid_tgid | CLAIMED` of the program building a record here; 0 when free.
    owner: u64,
    event: Event,
}

/// A claimed scratch slot; dropping it frees the slot.
struct Claim {
    slot: *mut Slot,
}

impl core::ops::Deref for Claim {
    type Target = Event;
    fn deref(&self) -> &Event {
        unsafe { &(*self.slot).event }
    }
}

impl core::ops::DerefMut for Claim {
    fn deref_mut(&mut self) -> &mut Event {
        unsafe { &mut (*self.slot).event }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // A plain store: BPF has no store-release before v4, and only this
        // CPU's programs touch the slot (the claim's CAS orders the rest).
        unsafe { core::ptr::write_volatile(owner(self.slot), 0) };
    }
}

#[inline(always)]
fn owner(slot: *mut Slot) -> *mut u64 {
    unsafe { core::ptr::addr_of_mut!((*slot).owner) }
}

/// Whether the current task is inside one of our programs on this CPU (it
/// holds a slot): a page fault now was caused by the program's own read of
/// user memory, which never makes the page resident.
#[inline(always)]
fn inside_own_program() -> bool {
    let me = bpf_get_current_pid_tgid() | CLAIMED;
    for i in 0..SCRATCH_SLOTS {
        if let Some(slot) = SCRATCH.get_ptr_mut(i) {
            if unsafe { core::ptr::read_volatile(owner(slot)) } == me {
                return true;
            }
        }
    }
    false
}

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT as u32, 0);

/// Processes (tgids) being profiled. Written by userspace.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Cgroup (v2) ids being profiled, with all their descendants. Written by userspace.
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Allocator calls in flight, per thread (LRU: an entry of a thread that
/// exited inside a call cannot pile up).
#[map]
static INFLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(65536, 0);

/// Arguments of traced syscalls in flight, per thread.
#[map]
static SYSCALL_ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(65536, 0);

/// Blocks chosen by `--sample-bytes` and still live: (tgid, address).
/// Frees of anything else are dropped here, in the kernel.
#[map]
static SAMPLED: HashMap<[u64; 2], u8> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// A thread's run of first touches: the next page it would touch, the
/// signature of the code that touched the last one ([`stack_signature`]),
/// and the run's first page (whose record has the stack).
#[derive(Clone, Copy)]
#[repr(C)]
struct FaultRun {
    next_page: u64,
    signature: u64,
    first_page: u64,
}

/// Frames of the frame-pointer chain a [`stack_signature`] hashes.
const SIGNATURE_FRAMES: usize = 6;

/// What tells one call from another at a fault, cheaply: the user
/// instruction and stack pointer, the word at the stack pointer (a
/// frameless leaf's return address: memset's caller), and for the first
/// frames of the frame-pointer chain the return address and the word two
/// below the frame pointer (a JS frame's function: interpreted frames all
/// return into the same interpreter code). Where native code uses the
/// register for data, its value is hashed instead. One memset filling a
/// buffer has one signature; another call filling the buffer next to it
/// has another unless it is the same code, called from the same functions
/// at the same depths.
#[inline(always)]
fn stack_signature(regs: &unwind::UserRegs) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let word = |addr: u64| unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0);
    let mut hash = (regs.ip ^ regs.sp.rotate_left(29) ^ regs.bp.rotate_left(47)).wrapping_mul(PRIME);
    hash = (hash ^ word(regs.sp)).wrapping_mul(PRIME);
    let mut fp = regs.bp;
    for _ in 0..SIGNATURE_FRAMES {
        let (Ok(next), Ok(ret)) =
            (unsafe { bpf_probe_read_user(fp as *const u64) }, unsafe { bpf_probe_read_user((fp + 8) as *const u64) })
        else {
            break;
        };
        hash = (hash ^ ret).wrapping_mul(PRIME);
        hash = (hash ^ word(fp.wrapping_sub(16))).wrapping_mul(PRIME);
        if next <= fp {
            break;
        }
        fp = next;
    }
    hash
}

/// Per thread: its current [`FaultRun`].
#[map]
static FAULT_RUNS: LruHashMap<u32, FaultRun> = LruHashMap::with_max_entries(16384, 0);

/// The outermost probed allocator call a thread is in. Calls are told apart
/// by the stack pointer at the probe, which entry probes see unchanged from
/// the function's first instruction (placement never moves past a push): a
/// call made from inside the recorded one has a lower one, a tail call
/// (glibc's reallocarray -> realloc -> malloc) the same, and a call from
/// higher up means the recorded call returned unseen. No state here outlives
/// a missed return past the thread's next call.
#[repr(C)]
#[derive(Clone, Copy)]
struct InFlight {
    /// The call the program made (a tail-called one keeps the outer's).
    api: u16,
    /// Tail calls made on top of the recorded call: each adds a return, all
    /// fired together at the same stack pointer.
    tail_calls: u8,
    /// 1 once recorded, kept only to absorb the tail calls' returns.
    spent: u8,
    _pad: u32,
    size: u64,
    arg: u64,
    ptr: u64,
    /// Stack pointer at entry (spent: at the return).
    sp: u64,
    /// The return address at entry: the uretprobe replaces it on the stack
    /// with its trampoline, so a stack walked inside the call reads it here.
    ret: u64,
}

#[inline(always)]
fn entry_sp(ctx: &ProbeContext) -> u64 {
    unsafe { (*ctx.regs).rsp }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SyscallArgs {
    nr: u64,
    /// di, si, dx, r10, r8, and one value read from user memory at entry.
    args: [u64; 6],
}

#[inline(always)]
fn count(slot: usize) {
    if let Some(v) = COUNTERS.get_ptr_mut(slot as u32) {
        unsafe { *v += 1 };
    }
}

/// 1 when profiling a cgroup (set by userspace at load). The syscall
/// programs run for every traced syscall on the machine: without a cgroup to
/// match, they must not pay for the cgroup-id helper and a second map lookup.
#[unsafe(no_mangle)]
static CGROUP_MODE: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);

/// 1 when every exec of a target is to be held with SIGSTOP until userspace
/// has probed its allocator (cgroup and `--follow` modes with the alloc lens;
/// launch mode holds execs with ptrace instead).
#[unsafe(no_mangle)]
static HOLD_AT_EXEC: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);
const SIGSTOP: u32 = 19;

/// `--sample-bytes`: mean bytes between sampled allocations; 0 records every call.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: aya_ebpf::Global<u64> = aya_ebpf::Global::new(0);

#[inline(always)]
fn is_target() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { TARGETS.get(&tgid).is_some() } {
        return true;
    }
    if CGROUP_MODE.load() == 0 {
        return false;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    unsafe { CGROUPS.get(&cgroup).is_some() }
}

/// Claims a scratch slot and fills its record's header; returns it for the
/// caller to complete.
#[inline(always)]
fn scratch(kind: EventKind, api: u16) -> Option<Claim> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut claimed = None;
    for i in 0..SCRATCH_SLOTS {
        if let Some(slot) = SCRATCH.get_ptr_mut(i) {
            let field = owner(slot);
            // SAFETY: the field is an aligned u64 in this CPU's map value.
            let (_, won) = unsafe {
                atomic_cxchg::<u64, { AtomicOrdering::Acquire }, { AtomicOrdering::Relaxed }>(
                    field,
                    0,
                    pid_tgid | CLAIMED,
                )
            };
            if won {
                claimed = Some(Claim { slot });
                break;
            }
        }
    }
    let Some(mut ev) = claimed else {
        count(counters::SCRATCH_BUSY);
        return None;
    };
    let h = &mut ev.header;
    h.kind = kind as u16;
    h.api = api;
    h.frames = 0;
    h.stack_status = StackStatus::Complete as u8;
    h.hints = 0;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.addr = 0;
    h.size = 0;
    h.old_addr = 0;
    h.old_size = 0;
    h.arg = 0;
    Some(ev)
}

/// Walks the user stack from `regs` into `ev` with the process's call-frame
/// tables; false when it has none (the caller falls back to frame pointers).
#[inline(always)]
fn walk_stack(ev: &mut Event, regs: UserRegs, hijacked: Hijacked) -> bool {
    match unwind::walk(ev.header.tgid, regs, hijacked, ev.frames.as_mut_ptr()) {
        Some((frames, status)) => {
            ev.header.frames = frames;
            ev.header.stack_status = status as u8;
            true
        }
        None => false,
    }
}

/// Captures the user stack into `ev`: walked with call-frame tables when the
/// process has them, else up to `max_frames` frame-pointer frames.
#[inline(always)]
fn capture_stack<C: EbpfContext>(ctx: &C, ev: &mut Event, regs: UserRegs, max_frames: usize) {
    if walk_stack(ev, regs, Hijacked::default()) {
        return;
    }
    capture_frame_pointers(ctx, ev, max_frames);
}

#[inline(always)]
fn capture_frame_pointers<C: EbpfContext>(ctx: &C, ev: &mut Event, max_frames: usize) {
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            ev.frames.as_mut_ptr() as *mut _,
            (max_frames * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if n < 0 {
        ev.header.stack_status = StackStatus::CaptureFailed as u8;
        count(counters::STACK_FAILED);
    } else {
        ev.header.stack_status = StackStatus::FramePointers as u8;
        ev.header.frames = (n as u64 / 8) as u16;
    }
}

/// Sends the header plus its captured frames and hint words.
#[inline(always)]
/// Copies the event into the ring buffer; false when it was full (counted).
fn submit(ev: &Event) -> bool {
    let mut words = ev.header.frames as usize + ev.header.hints as usize;
    if words > MAX_FRAMES {
        words = MAX_FRAMES;
    }
    let len = HEADER_SIZE + words * 8;
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const Event as *const u8, len) };
    // Waking the reader per event costs more than the event itself; it
    // drains on a short timer and is woken early only when data piles up.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_THRESHOLD {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(bytes, flags as u64).is_err() {
        count(counters::RINGBUF_DROPS);
        return false;
    }
    true
}

// ---------------------------------------------------------------- allocator

#[inline(always)]
fn requested_bytes(api: AllocApi, size: u64, arg: u64) -> u64 {
    match api {
        // An overflow check needs a 128-bit multiply, which BPF lacks; factors
        // below 2^32 cannot overflow, and anything larger is sampled anyway.
        AllocApi::Calloc | AllocApi::Reallocarray => {
            if (size | arg) >> 32 != 0 {
                u64::MAX
            } else {
                size * arg
            }
        }
        AllocApi::Pvalloc => (size.max(1).saturating_add(4095)) & !4095,
        _ => size,
    }
}

/// Byte sampling: a block of `bytes` is chosen with probability
/// min(1, bytes / SAMPLE_BYTES), so userspace scales it to max(bytes,
/// SAMPLE_BYTES) without bias.
#[inline(always)]
fn chosen(bytes: u64) -> bool {
    let mean = SAMPLE_BYTES.load();
    if mean == 0 || bytes >= mean {
        return true;
    }
    // bytes < mean < 2^32 (checked by userspace): no overflow.
    let threshold = (bytes << 32) / mean;
    (unsafe { bpf_get_prandom_u32() } as u64) < threshold
}

#[inline(always)]
fn sampled_key(addr: u64) -> [u64; 2] {
    [bpf_get_current_pid_tgid() >> 32, addr]
}

/// Remembers a sampled block so its free is reported; false when the map is full.
#[inline(always)]
fn remember_sampled(addr: u64) -> bool {
    if SAMPLE_BYTES.load() == 0 {
        return true;
    }
    if SAMPLED.insert(&sampled_key(addr), &1, 0).is_err() {
        count(counters::SAMPLED_MAP_FULL);
        return false;
    }
    true
}

/// Whether a released block must be reported: always without sampling,
/// else only when it was sampled (and is forgotten now).
#[inline(always)]
fn forget_sampled(addr: u64) -> bool {
    SAMPLE_BYTES.load() == 0 || SAMPLED.remove(&sampled_key(addr)).is_ok()
}

#[inline(always)]
fn alloc_enter(api: AllocApi, size: u64, arg: u64, ptr: u64, sp: u64) -> u32 {
    if !is_target() {
        return 0;
    }
    count(counters::API_CALLS + api as usize);
    let key = bpf_get_current_pid_tgid();
    // realloc decides at its return: the old block may be sampled even when the new one is not.
    let reallocs = matches!(api, AllocApi::Realloc | AllocApi::Reallocarray);
    if !reallocs && !chosen(requested_bytes(api, size, arg)) {
        count(counters::UNSAMPLED_CALLS);
        return 0;
    }
    if let Some(f) = INFLIGHT.get_ptr_mut(&key) {
        let f = unsafe { &mut *f };
        if f.spent == 0 {
            if sp < f.sp {
                // Called from inside another probed allocator call; the outer call is recorded.
                count(counters::NESTED_CALLS);
                return 0;
            }
            if sp == f.sp {
                // A tail call: same request, the outer call is recorded.
                f.tail_calls = f.tail_calls.saturating_add(1);
                return 0;
            }
            count(counters::MISSED_RETURNS);
        }
    }
    let ret = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    let entry = InFlight { api: api as u16, tail_calls: 0, spent: 0, _pad: 0, size, arg, ptr, sp, ret };
    if INFLIGHT.insert(&key, &entry, 0).is_err() {
        count(counters::INFLIGHT_MAP_FULL);
    }
    0
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Malloc, arg(&ctx, 0), 0, 0, entry_sp(&ctx))
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Calloc, arg(&ctx, 1), arg(&ctx, 0), 0, entry_sp(&ctx))
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Realloc, arg(&ctx, 1), 0, arg(&ctx, 0), entry_sp(&ctx))
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Reallocarray, arg(&ctx, 2), arg(&ctx, 1), arg(&ctx, 0), entry_sp(&ctx))
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::PosixMemalign, arg(&ctx, 2), arg(&ctx, 1), arg(&ctx, 0), entry_sp(&ctx))
}

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::AlignedAlloc, arg(&ctx, 1), arg(&ctx, 0), 0, entry_sp(&ctx))
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Memalign, arg(&ctx, 1), arg(&ctx, 0), 0, entry_sp(&ctx))
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Valloc, arg(&ctx, 0), 0, 0, entry_sp(&ctx))
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(AllocApi::Pvalloc, arg(&ctx, 0), 0, 0, entry_sp(&ctx))
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if !is_target() {
        return 0;
    }
    count(counters::API_CALLS + AllocApi::Free as usize);
    let ptr = arg(&ctx, 0);
    if ptr == 0 {
        return 0;
    }
    let key = bpf_get_current_pid_tgid();
    if let Some(f) = unsafe { INFLIGHT.get(&key) } {
        if f.spent == 0 && entry_sp(&ctx) < f.sp {
            // realloc(p, 0) frees through free(); the realloc return records it.
            count(counters::NESTED_CALLS);
            return 0;
        }
    }
    if !forget_sampled(ptr) {
        return 0;
    }
    if let Some(mut ev) = scratch(EventKind::Free, AllocApi::Free as u16) {
        ev.header.addr = ptr;
        // The caller (the return address at the entry's stack pointer, which
        // the placement keeps), to tell the allocator's own frees apart.
        ev.header.arg = unsafe { bpf_probe_read_user(entry_sp(&ctx) as *const u64) }.unwrap_or(0);
        submit(&ev);
    }
    0
}

/// One return probe serves every allocator: the in-flight entry says which call it was.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    if !is_target() {
        return 0;
    }
    let key = bpf_get_current_pid_tgid();
    let Some(f) = INFLIGHT.get_ptr_mut(&key) else {
        // Calls left out by sampling have no entry.
        if SAMPLE_BYTES.load() == 0 {
            count(counters::UNMATCHED_RETURNS);
        }
        return 0;
    };
    let f = unsafe { &mut *f };
    let sp = unsafe { (*ctx.regs).rsp };
    if f.spent == 1 {
        // A tail call's return, or a stale leftover.
        if sp != f.sp || f.tail_calls <= 1 {
            if sp != f.sp {
                count(counters::UNMATCHED_RETURNS);
            }
            let _ = INFLIGHT.remove(&key);
        } else {
            f.tail_calls -= 1;
        }
        return 0;
    }
    if sp <= f.sp {
        // The return of a call made inside the recorded one.
        return 0;
    }
    let mut call = *f;
    if call.tail_calls > 0 {
        f.spent = 1;
        f.sp = sp;
    } else {
        let _ = INFLIGHT.remove(&key);
    }
    let ret: u64 = ctx.ret::<u64>();
    let Some(api) = AllocApi::from_u16(call.api) else {
        return 0;
    };

    let (kind, addr) = match api {
        AllocApi::PosixMemalign => {
            if ret as u32 != 0 {
                count(counters::FAILED_ALLOCS);
                return 0;
            }
            match unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
                Ok(p) => (EventKind::Alloc, p),
                Err(_) => {
                    count(counters::FAILED_ALLOCS);
                    return 0;
                }
            }
        }
        AllocApi::Realloc | AllocApi::Reallocarray => {
            if ret == 0 {
                let zero_size = call.size == 0 || (api == AllocApi::Reallocarray && call.arg == 0);
                if zero_size && call.ptr != 0 {
                    // realloc(p, 0) frees p and returns NULL.
                    if forget_sampled(call.ptr) {
                        if let Some(mut ev) = scratch(EventKind::Free, api as u16) {
                            ev.header.addr = call.ptr;
                            submit(&ev);
                        }
                    }
                } else {
                    count(counters::FAILED_ALLOCS);
                }
                return 0;
            }
            // A failed realloc leaves the old block live: only now is it gone.
            let old_reported = call.ptr != 0 && forget_sampled(call.ptr);
            if !chosen(requested_bytes(api, call.size, call.arg)) || !remember_sampled(ret) {
                count(counters::UNSAMPLED_CALLS);
                // The new block is not followed; the old one, if it was, is released.
                if old_reported {
                    if let Some(mut ev) = scratch(EventKind::Free, api as u16) {
                        ev.header.addr = call.ptr;
                        submit(&ev);
                    }
                }
                return 0;
            }
            if !old_reported {
                call.ptr = 0;
            }
            (EventKind::Realloc, ret)
        }
        _ => {
            if ret == 0 {
                count(counters::FAILED_ALLOCS);
                return 0;
            }
            (EventKind::Alloc, ret)
        }
    };
    if kind == EventKind::Alloc && !remember_sampled(addr) {
        return 0;
    }

    let Some(mut ev) = scratch(kind, api as u16) else {
        return 0;
    };
    ev.header.addr = addr;
    ev.header.size = call.size;
    ev.header.arg = call.arg;
    ev.header.old_addr = call.ptr;
    let regs = unsafe { &*ctx.regs };
    let regs = UserRegs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp };
    capture_stack(&ctx, &mut ev, regs, FP_MAX_FRAMES);
    submit(&ev);
    0
}

/// An event of `kind` with no stack, when a target made it; `fill` sets its fields.
#[inline(always)]
fn note(kind: EventKind, fill: impl FnOnce(&mut Event)) -> u32 {
    if is_target() {
        if let Some(mut ev) = scratch(kind, 0) {
            fill(&mut ev);
            submit(&ev);
        }
    }
    0
}

/// A call to a user-named function in the target (`--warmup-function`).
#[uprobe]
pub fn marker(_ctx: ProbeContext) -> u32 {
    note(EventKind::Marker, |_| {})
}

/// Node's handler of a V8 out-of-memory abort, `node::OOMErrorHandler(const
/// char* location, X)`: X is `const v8::OOMDetails&` (node 20 and later,
/// whose first field is `bool is_heap_oom`) or that `bool` itself (node 18).
#[uprobe]
pub fn v8_out_of_memory(ctx: ProbeContext) -> u32 {
    note(EventKind::V8OutOfMemory, |ev| {
        let second: u64 = ctx.arg(1).unwrap_or(0);
        ev.header.size = if second <= 1 {
            second
        } else {
            match unsafe { bpf_probe_read_user(second as *const u8) } {
                Ok(is_heap_oom) => (is_heap_oom & 1) as u64,
                Err(_) => u64::MAX,
            }
        };
    })
}

/// An event of `kind` with the stack at the probe, when a target made it;
/// `fill` sets its fields.
#[inline(always)]
fn note_with_stack(ctx: &ProbeContext, kind: EventKind, fill: impl FnOnce(&mut Event)) -> u32 {
    if is_target() {
        if let Some(mut ev) = scratch(kind, 0) {
            fill(&mut ev);
            let regs = unsafe { &*ctx.regs };
            let regs = UserRegs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp };
            capture_stack(ctx, &mut ev, regs, FP_MAX_FRAMES);
            submit(&ev);
        }
    }
    0
}

/// A request whose work opens an fd on libuv's threadpool,
/// `uv_fs_open(loop, req, path, flags, mode, cb)`: the requesting stack, so
/// what the threadpool thread opens for it is attributed to the code that
/// asked. Only opens pay the stack walk; one without a callback opens on
/// the calling thread, whose stack is already the requester's.
#[uprobe]
pub fn threadpool_request(ctx: ProbeContext) -> u32 {
    if ctx.arg::<u64>(5).unwrap_or(0) == 0 {
        return 0;
    }
    note_with_stack(&ctx, EventKind::WorkRequest, |ev| ev.header.addr = ctx.arg(1).unwrap_or(0))
}

/// libuv initialises stream handle `s`, `uv__stream_init(loop, s, type)`:
/// the stack that created it.
#[uprobe]
pub fn stream_init(ctx: ProbeContext) -> u32 {
    note_with_stack(&ctx, EventKind::StreamInit, |ev| ev.header.addr = ctx.arg(1).unwrap_or(0))
}

/// libuv gives stream handle `s` its fd, `uv__stream_open(s, fd, flags)`.
#[uprobe]
pub fn stream_open(ctx: ProbeContext) -> u32 {
    note(EventKind::StreamOpen, |ev| {
        ev.header.addr = ctx.arg(0).unwrap_or(0);
        ev.header.size = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as u32 as u64;
    })
}

/// A threadpool thread starts work item `w` (`uv__fs_work(w)`, ...).
#[uprobe]
pub fn threadpool_work(ctx: ProbeContext) -> u32 {
    note(EventKind::WorkStart, |ev| ev.header.addr = ctx.arg(0).unwrap_or(0))
}

// ---------------------------------------------------------------- syscalls

/// Byte offsets in x86_64 `struct pt_regs` (a stable kernel ABI).
const PT_REGS_BP: usize = 4 * 8;
const PT_REGS_IP: usize = 16 * 8;
const PT_REGS_SP: usize = 19 * 8;

/// Flags meaning close-on-exec (`O_CLOEXEC`, `SOCK_CLOEXEC`, `EFD_CLOEXEC`, ...: all 0o2000000).
const O_CLOEXEC: u64 = 0o2000000;
const MFD_CLOEXEC: u64 = 1;
const CLONE_THREAD: u64 = 0x10000;
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const F_DUPFD_CLOEXEC: u64 = 1030;


#[map]
static CONFIG: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::with_max_entries(config::COUNT, 0);

fn setting(slot: u32) -> u64 {
    CONFIG.get(slot).copied().unwrap_or(0)
}

/// Entry of one traced syscall (attached to `syscalls:sys_enter_<name>` for
/// each of them: untraced syscalls run no program at all). Record layout:
/// `__syscall_nr` at 8, the arguments from 16.
#[tracepoint]
pub fn syscall_enter(ctx: TracePointContext) -> u32 {
    if !is_target() {
        return 0;
    }
    let Ok(nr) = (unsafe { ctx.read_at::<i32>(8) }) else { return 0 };
    let nr = nr as u64;
    let Some(slot) = syscalls::slot(nr) else { return 0 };
    let mut a = [0u64; 5];
    for (i, arg) in a.iter_mut().enumerate() {
        // Calls with fewer arguments read past their record: unused values.
        *arg = unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0);
    }
    // Releases are recorded on entry, before another thread can be handed the
    // same address or fd number; recording them on exit could reorder them
    // after that reuse.
    let immediate = match nr {
        syscalls::WRITE => {
            if a[0] == 1 {
                if let Some(mut ev) = scratch(EventKind::StdoutWrite, nr as u16) {
                    ev.header.size = a[2];
                    submit(&ev);
                }
            }
            return 0;
        }
        syscalls::MUNMAP => Some(EventKind::Munmap),
        syscalls::MADVISE => {
            if !drops_pages(a[2]) {
                return 0;
            }
            Some(EventKind::Madvise)
        }
        syscalls::CLOSE => Some(EventKind::FdClose),
        syscalls::CLOSE_RANGE => Some(EventKind::CloseRange),
        _ => None,
    };
    if let Some(kind) = immediate {
        count(counters::SYSCALLS + slot);
        let Some(mut ev) = scratch(kind, nr as u16) else { return 0 };
        ev.header.addr = a[0];
        ev.header.size = a[1];
        ev.header.arg = a[2];
        submit(&ev);
        return 0;
    }
    let mut saved = SyscallArgs { nr, args: [a[0], a[1], a[2], a[3], a[4], 0] };
    // Flags that live in user memory, read while the pointer is surely valid.
    match nr {
        syscalls::OPENAT2 | syscalls::CLONE3 => {
            let ptr = if nr == syscalls::OPENAT2 { a[2] } else { a[0] };
            saved.args[5] = unsafe { bpf_probe_read_user(ptr as *const u64) }.unwrap_or(0);
        }
        _ => {}
    }
    if SYSCALL_ARGS.insert(&bpf_get_current_pid_tgid(), &saved, 0).is_err() {
        count(counters::INFLIGHT_SYSCALL_MAP_FULL);
    }
    0
}

/// madvise advice values after which the range's pages are no longer resident
/// (MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_DONTNEED_LOCKED).
#[inline(always)]
fn drops_pages(advice: u64) -> bool {
    matches!(advice, 4 | 8 | 9 | 24)
}

#[inline(always)]
fn is_error(ret: u64) -> bool {
    ret > (-4096i64) as u64
}

/// The user registers of the current task (for a fault or syscall in the
/// kernel, as they were when the task entered the kernel).
#[inline(always)]
fn user_regs() -> Option<UserRegs> {
    // SAFETY: the helper returns the task's saved user registers (pt_regs).
    let regs = unsafe { aya_ebpf::helpers::generated::bpf_task_pt_regs(bpf_get_current_task_btf()) };
    let field =
        |offset: usize| unsafe { bpf_probe_read_kernel((regs as *const u8).add(offset) as *const u64).ok() };
    Some(UserRegs { ip: field(PT_REGS_IP)?, sp: field(PT_REGS_SP)?, bp: field(PT_REGS_BP)? })
}

/// The return address a uretprobe took from the thread's allocator call in
/// progress, if any: a syscall or fault inside `malloc` walks through it.
#[inline(always)]
fn hijacked_return() -> Hijacked {
    match unsafe { INFLIGHT.get(&bpf_get_current_pid_tgid()) } {
        Some(f) if f.spent == 0 => Hijacked { slot: f.sp, return_address: f.ret },
        _ => Hijacked::default(),
    }
}

/// Completes a record taken in the kernel on the task's behalf (a syscall,
/// a fault) with its user stack. Without call-frame tables, the innermost
/// function may have no frame (a libc syscall wrapper, memset): the
/// frame-pointer stack then carries the words at the user stack pointer,
/// from which userspace finds that function's caller.
#[inline(always)]
fn submit_with_stack<C: EbpfContext>(ctx: &C, ev: &mut Event) -> bool {
    let Some(regs) = user_regs() else {
        ev.header.stack_status = StackStatus::CaptureFailed as u8;
        count(counters::STACK_FAILED);
        return submit(ev);
    };
    let sp = regs.sp;
    if walk_stack(ev, regs, hijacked_return()) {
        return submit(ev);
    }
    capture_frame_pointers(ctx, ev, MAX_SYSCALL_FRAMES);
    let n = ev.header.frames as usize;
    if n <= MAX_SYSCALL_FRAMES {
        // The mask restates the bound on the register the pointer is built
        // from (32-bit codegen checks a copy); the volatile read keeps LLVM
        // from dropping it as redundant. MAX_SYSCALL_FRAMES + 1 is a power of two.
        let n = unsafe { core::ptr::read_volatile(&n) } & MAX_SYSCALL_FRAMES;
        let dst = unsafe { ev.frames.as_mut_ptr().add(n) } as *mut core::ffi::c_void;
        let size = (STACK_HINT_WORDS * 8) as u32;
        if unsafe { aya_ebpf::helpers::generated::bpf_probe_read_user(dst, size, sp as *const _) } == 0 {
            ev.header.hints = STACK_HINT_WORDS as u8;
        }
    }
    submit(ev)
}

/// Whether a successful fd-creating call asked for close-on-exec.
#[inline(always)]
fn cloexec_requested(nr: u64, a: &[u64; 6]) -> bool {
    let flags = match nr {
        syscalls::OPEN => a[1],
        syscalls::OPENAT => a[2],
        syscalls::OPENAT2 => a[5],
        syscalls::SOCKET | syscalls::SOCKETPAIR => a[1],
        syscalls::ACCEPT4 => a[3],
        syscalls::PIPE2 | syscalls::TIMERFD_CREATE | syscalls::EVENTFD2 => a[1],
        syscalls::SIGNALFD4 => a[3],
        syscalls::EPOLL_CREATE1 | syscalls::INOTIFY_INIT1 => a[0],
        syscalls::MEMFD_CREATE => return a[1] & MFD_CLOEXEC != 0,
        syscalls::PIDFD_OPEN | syscalls::IO_URING_SETUP => return true,
        syscalls::DUP3 => a[2],
        _ => 0,
    };
    flags & O_CLOEXEC != 0
}

/// Exit of one traced syscall (`syscalls:sys_exit_<name>`); `ret` at 16.
#[tracepoint]
pub fn syscall_exit(ctx: TracePointContext) -> u32 {
    if !is_target() {
        return 0;
    }
    // One stack walk for every kind of record: each walk site costs the
    // verifier a pass over the walker.
    if let Some(mut ev) = syscall_exit_record(&ctx) {
        submit_with_stack(&ctx, &mut ev);
    }
    0
}

/// The record a traced syscall's exit makes, still to be completed with its
/// stack (records without a stack are submitted here).
#[inline(always)]
fn syscall_exit_record(ctx: &TracePointContext) -> Option<Claim> {
    let key = bpf_get_current_pid_tgid();
    let Some(saved) = (unsafe { SYSCALL_ARGS.get(&key) }).copied() else { return None };
    let _ = SYSCALL_ARGS.remove(&key);
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else { return None };
    let ret = ret as u64;
    if let Some(slot) = syscalls::slot(saved.nr) {
        count(counters::SYSCALLS + slot);
    }
    if is_error(ret) {
        return None;
    }
    let a = saved.args;
    let nr = saved.nr;
    let nr16 = nr as u16;
    if let Some(kind) = syscalls::creates(nr) {
        // signalfd on an existing fd updates it rather than creating one.
        if (nr == syscalls::SIGNALFD || nr == syscalls::SIGNALFD4) && a[0] as i32 != -1 {
            return None;
        }
        let (first, second) = match nr {
            syscalls::PIPE | syscalls::PIPE2 | syscalls::SOCKETPAIR => {
                let ptr = if nr == syscalls::SOCKETPAIR { a[3] } else { a[0] };
                let Ok(fds) = (unsafe { bpf_probe_read_user(ptr as *const [i32; 2]) }) else { return None };
                (fds[0] as u64, fds[1] as u64)
            }
            _ => (ret, u64::MAX),
        };
        let Some(mut ev) = scratch(EventKind::FdOpen, nr16) else { return None };
        ev.header.addr = first;
        ev.header.old_addr = second;
        ev.header.arg = kind as u64;
        ev.header.old_size = cloexec_requested(nr, &a) as u64;
        ev.header.size = match nr {
            syscalls::SOCKET | syscalls::SOCKETPAIR => (a[0] << 32) | (a[1] & 0xff),
            syscalls::ACCEPT | syscalls::ACCEPT4 => a[0],
            _ => 0,
        };
        return Some(ev);
    }
    match nr {
        syscalls::MMAP => {
            let Some(mut ev) = scratch(EventKind::Mmap, nr16) else { return None };
            ev.header.addr = ret;
            ev.header.size = a[1];
            ev.header.arg = a[3];
            ev.header.old_size = a[4];
            Some(ev)
        }
        syscalls::MREMAP => {
            let Some(mut ev) = scratch(EventKind::Mremap, nr16) else { return None };
            ev.header.old_addr = a[0];
            ev.header.old_size = a[1];
            ev.header.size = a[2];
            ev.header.arg = a[3];
            ev.header.addr = ret;
            Some(ev)
        }
        syscalls::BRK => {
            let Some(mut ev) = scratch(EventKind::Brk, nr16) else { return None };
            ev.header.addr = ret;
            ev.header.size = a[0];
            Some(ev)
        }
        syscalls::DUP | syscalls::DUP2 | syscalls::DUP3 | syscalls::FCNTL => {
            if nr == syscalls::FCNTL {
                match a[1] {
                    F_DUPFD | F_DUPFD_CLOEXEC => {}
                    F_SETFD => {
                        let Some(mut ev) = scratch(EventKind::FdSetCloexec, nr16) else { return None };
                        ev.header.addr = a[0];
                        ev.header.arg = a[2] & 1;
                        submit(&ev);
                        return None;
                    }
                    _ => return None,
                }
            }
            // dup2(fd, fd) is a no-op.
            if (nr == syscalls::DUP2 || nr == syscalls::DUP3) && a[0] == a[1] {
                return None;
            }
            let Some(mut ev) = scratch(EventKind::FdDup, nr16) else { return None };
            ev.header.addr = ret;
            ev.header.old_addr = a[0];
            ev.header.old_size = match nr {
                syscalls::FCNTL => (a[1] == F_DUPFD_CLOEXEC) as u64,
                _ => cloexec_requested(nr, &a) as u64,
            };
            Some(ev)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- resident pages

/// Highest user-space address on x86_64 (4-level and 5-level paging both below it).
const USER_END: u64 = 0x00ff_ffff_ffff_ffff;
/// Page-fault error code bits (x86): the page was present; instruction fetch.
const PF_PRESENT: u64 = 1;
const PF_INSTR: u64 = 1 << 4;

/// A not-present fault on a user data address: a page becomes resident.
/// Attached to `exceptions:page_fault_user` (the program touched the page)
/// and `exceptions:page_fault_kernel` (the kernel touched a user page on its
/// behalf, e.g. `read` into a fresh buffer), which share the record layout
/// (address, ip, error_code): one program, verified once (the verifier's
/// pass over the stack walker takes ~1.5 s of kernel CPU per program).
#[tracepoint]
pub fn page_fault(ctx: TracePointContext) -> u32 {
    let ctx = &ctx;
    if !is_target() {
        return 0;
    }
    let (Ok(address), Ok(error)) = (unsafe { ctx.read_at::<u64>(8) }, unsafe { ctx.read_at::<u64>(24) })
    else {
        return 0;
    };
    if error & (PF_PRESENT | PF_INSTR) != 0 || address > USER_END {
        return 0;
    }
    if inside_own_program() {
        count(counters::OWN_READ_FAULTS);
        return 0;
    }
    count(counters::PAGE_FAULTS);
    // A buffer filled page after page faults page after page, from one
    // call: the pages after the first are recorded without a stack.
    let page = address & !4095;
    let signature = user_regs().map_or(0, |regs| stack_signature(&regs));
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(run) = FAULT_RUNS.get_ptr_mut(&tid) {
        // SAFETY: this thread's entry; only this thread writes it.
        let run = unsafe { &mut *run };
        if run.next_page == page && run.signature == signature && signature != 0 {
            run.next_page = page + 4096;
            let first_page = run.first_page;
            let Some(mut ev) = scratch(EventKind::PageFaultRun, 0) else { return 0 };
            ev.header.addr = page;
            ev.header.size = 4096;
            ev.header.arg = first_page;
            submit(&ev);
            return 0;
        }
    }
    let Some(mut ev) = scratch(EventKind::PageFault, 0) else { return 0 };
    ev.header.addr = page;
    ev.header.size = 4096;
    ev.header.arg = error;
    if submit_with_stack(ctx, &mut ev) {
        let run = FaultRun { next_page: page + 4096, signature, first_page: page };
        let _ = FAULT_RUNS.insert(&tid, &run, 0);
    } else {
        let _ = FAULT_RUNS.remove(&tid);
    }
    0
}

// ---------------------------------------------------------------- processes

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if is_target() {
        unwind::forget((bpf_get_current_pid_tgid() >> 32) as u32);
        if let Some(mut ev) = scratch(EventKind::Exec, 0) {
            // Stopped before its first instruction: userspace probes the
            // allocator it is about to load, then lets it go. Only once the
            // event is in the ring: a process nobody knows of is never stopped.
            let hold = HOLD_AT_EXEC.load() != 0;
            ev.header.arg = hold as u64;
            if submit(&ev) && hold {
                let _ = unsafe { bpf_send_signal(SIGSTOP) };
            }
        }
    }
    0
}

/// A process's main thread exits (`sched:sched_process_exit` fires per
/// thread): the process is gone, and its pid may be reused by an unrelated
/// process, so it leaves the filter here.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid || !is_target() {
        return 0;
    }
    let _ = TARGETS.remove(&tgid);
    unwind::forget(tgid);
    if let Some(ev) = scratch(EventKind::Exit, 0) {
        submit(&ev);
    }
    0
}

/// The OOM killer picked a victim. `pid` is the record's first field on every kernel.
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(8) }) else { return 0 };
    if let Some(mut ev) = scratch(EventKind::OomKill, 0) {
        ev.header.addr = pid as u64;
        submit(&ev);
    }
    0
}

/// Runs in the parent before the child is first scheduled, so a followed
/// child is in TARGETS before it executes anything.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if !is_target() {
        return 0;
    }
    // Threads are part of the process already; only new processes matter.
    if let Some(saved) = unsafe { SYSCALL_ARGS.get(&bpf_get_current_pid_tgid()) } {
        let thread = match saved.nr {
            syscalls::CLONE => saved.args[0] & CLONE_THREAD != 0,
            syscalls::CLONE3 => saved.args[5] & CLONE_THREAD != 0,
            _ => false,
        };
        if thread {
            return 0;
        }
    }
    // The offset comes from a map, and the verifier forbids variable offsets
    // on the context pointer: read through an address instead.
    let field = ctx.as_ptr() as u64 + (setting(config::FORK_CHILD_PID_OFFSET) & 0xfff);
    let Ok(child) = (unsafe { bpf_probe_read_kernel(field as *const i32) }) else {
        return 0;
    };
    if setting(config::FOLLOW_CHILDREN) == 1 {
        let _ = TARGETS.insert(&(child as u32), &1, 0);
    }
    unwind::inherit((bpf_get_current_pid_tgid() >> 32) as u32, child as u32);
    if let Some(mut ev) = scratch(EventKind::Fork, 0) {
        ev.header.addr = child as u64;
        submit(&ev);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
