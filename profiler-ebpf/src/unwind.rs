//! The user stack walker: call-frame tables (built by userspace from each
//! module's `.eh_frame`) walked in the kernel, so code built without frame
//! pointers (every `-O2` distribution build, libstdc++'s `operator new`, libc
//! helpers) keeps its callers. Code with no table (JIT code, `[vdso]`, a
//! module loaded since userspace last looked) is walked by its frame pointer;
//! in a V8 process such a frame that is a JS frame is recorded as its JS
//! function (see [`V8Frames`]).
//!
//! One step per frame runs under `bpf_loop`, so the verifier checks the step
//! once instead of once per frame of a 256-frame walk.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap},
};
use profiler_common::{
    is_v8_heap_object,
    unwind::{rule, v8_stamp, Mapping, Process, Row, RowPage, V8Frames, MAX_MAPPINGS, ROWS_PER_PAGE, ROW_PAGES},
    StackStatus, MAX_FRAMES, V8_FUNCTION, V8_FUNCTION_ADDRESS, V8_STAMP_SHIFT,
};

/// Every module's rows, written by userspace.
#[map]
static UNWIND_ROWS: Array<RowPage> = Array::with_max_entries(ROW_PAGES, 0);

/// Each profiled process's executable mappings, written by userspace, copied
/// to a forked child here and dropped at exec and exit.
#[map]
static UNWIND_PROCESSES: HashMap<u32, Process> = HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Binary-search steps over a process's mappings (2^8 > MAX_MAPPINGS).
const MAPPING_STEPS: usize = 8;
/// Binary-search steps over one module's rows (2^23 > all rows).
const ROW_STEPS: usize = 23;

/// The user registers a walk starts from.
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// A stack slot whose return address a uretprobe replaced with its
/// trampoline (an allocator call still in progress), and the real one.
#[derive(Clone, Copy, Default)]
pub struct Hijacked {
    pub slot: u64,
    pub return_address: u64,
}

/// The walk's state, shared with the per-frame step.
#[repr(C)]
struct Walk {
    pc: u64,
    sp: u64,
    bp: u64,
    frames: *mut u64,
    process: *const Process,
    hijacked: Hijacked,
    n: u64,
    /// A [`StackStatus`], or [`RUNNING`].
    status: u64,
}

const RUNNING: u64 = u64::MAX;

/// Walks the stack of process `tgid` from `regs` into `frames` (room for
/// [`MAX_FRAMES`]); returns the frame count and how the walk ended, or None
/// when the process has no tables.
#[inline(always)]
pub fn walk(tgid: u32, regs: UserRegs, hijacked: Hijacked, frames: *mut u64) -> Option<(u16, StackStatus)> {
    let process = UNWIND_PROCESSES.get_ptr(&tgid)?;
    let mut w =
        Walk { pc: regs.ip, sp: regs.sp, bp: regs.bp, frames, process, hijacked, n: 0, status: RUNNING };
    let ctx = &mut w as *mut Walk as *mut core::ffi::c_void;
    unsafe { bpf_loop(MAX_FRAMES as u32, step as *mut core::ffi::c_void, ctx, 0) };
    let status = match w.status {
        RUNNING => StackStatus::Truncated,
        s => StackStatus::from_u8(s as u8).unwrap_or(StackStatus::BadFrame),
    };
    Some(((w.n as usize).min(MAX_FRAMES) as u16, status))
}

/// Called by the fork tracepoint: the child runs the parent's address space.
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    if let Some(p) = UNWIND_PROCESSES.get_ptr(&parent) {
        let _ = UNWIND_PROCESSES.insert(&child, unsafe { &*p }, 0);
    }
}

/// Called at exec and exit: the mappings are gone.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = UNWIND_PROCESSES.remove(&tgid);
}

#[inline(always)]
fn row(index: u32) -> Option<Row> {
    let page = UNWIND_ROWS.get(index / ROWS_PER_PAGE as u32)?;
    Some(page.rows[index as usize & (ROWS_PER_PAGE - 1)])
}

/// 1 when `a <= b`, else 0, without a branch: the searches below must not
/// branch per step, or the verifier explores every path through them.
#[inline(always)]
fn at_most(a: u64, b: u64) -> u64 {
    // Both below 2^63: the difference's sign is the comparison.
    (((b as i64).wrapping_sub(a as i64) >> 63) + 1) as u64
}

/// Halvings that narrow `n` candidates to one: ceil(log2(n)). Searching
/// only that many steps (not the bound's 23) is what makes a small module's
/// lookup cheap; the one exit branch per step adds states linearly.
#[inline(always)]
fn steps_for(n: u64) -> usize {
    if n <= 1 {
        0
    } else {
        (64 - (n - 1).leading_zeros()) as usize
    }
}

/// The mapping holding `pc`: the last one starting at or before it.
#[inline(always)]
fn mapping_of(process: &Process, pc: u64) -> Option<Mapping> {
    let count = (process.count as u64).min(MAX_MAPPINGS as u64);
    if count == 0 || pc >> 63 != 0 {
        return None;
    }
    // Invariant: the answer is in [lo, hi).
    let (mut lo, mut hi) = (0u64, count);
    let steps = steps_for(count);
    for i in 0..MAPPING_STEPS {
        if i >= steps {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let start = process.mappings[mid as usize & (MAX_MAPPINGS - 1)].start;
        let le = at_most(start, pc);
        lo += le * (mid - lo);
        hi -= (1 - le) * (hi - mid);
    }
    let m = process.mappings[lo as usize & (MAX_MAPPINGS - 1)];
    (m.start <= pc && pc < m.end).then_some(m)
}

/// The row covering `pc` in module `m`: the last one starting at or before it.
#[inline(always)]
fn row_of(m: &Mapping, pc: u64) -> Option<Row> {
    let rel = pc.wrapping_sub(m.bias);
    if m.rows == 0 || rel > u32::MAX as u64 {
        return None;
    }
    let (mut lo, mut hi) = (m.first_row as u64, m.first_row as u64 + m.rows as u64);
    let steps = steps_for(m.rows as u64);
    for i in 0..ROW_STEPS {
        if i >= steps {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let le = at_most(row(mid as u32)?.pc as u64, rel);
        lo += le * (mid - lo);
        hi -= (1 - le) * (hi - mid);
    }
    let r = row(lo as u32)?;
    (r.pc as u64 <= rel).then_some(r)
}

/// The frame word of the JS frame at `bp`, if it is one: its context slot
/// holds a heap object (not a typed frame's marker) and so does its
/// function slot (right below it: one read for both), whose `shared` field
/// does too; the word is that `SharedFunctionInfo` with its stamp.
/// Userspace checks the object's type and stamp before naming it.
#[inline(always)]
fn v8_function(v8: V8Frames, bp: u64) -> Option<u64> {
    let slots = bp.wrapping_add(v8.fp_function as i64 as u64);
    let [function, context] = unsafe { bpf_probe_read_user(slots as *const [u64; 2]) }.ok()?;
    if !is_v8_heap_object(context) || !is_v8_heap_object(function) {
        return None;
    }
    let shared = (function - 1).wrapping_add(v8.function_shared as u64);
    let shared = unsafe { bpf_probe_read_user(shared as *const u64) }.ok()?;
    if !is_v8_heap_object(shared) || shared & !V8_FUNCTION_ADDRESS != 0 {
        return None;
    }
    let stamp = if v8.shared_stamp == 0 {
        0
    } else {
        let at = (shared - 1).wrapping_add(v8.shared_stamp as u64);
        v8_stamp(unsafe { bpf_probe_read_user(at as *const u64) }.ok()?)
    };
    Some(V8_FUNCTION | stamp << V8_STAMP_SHIFT | shared)
}

#[inline(always)]
fn read(w: &Walk, addr: u64) -> Option<u64> {
    if addr == w.hijacked.slot {
        return Some(w.hijacked.return_address);
    }
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Ends the walk with `status`.
#[inline(always)]
fn end(w: &mut Walk, status: StackStatus) -> i64 {
    w.status = status as u64;
    1
}

/// Moves to the caller: its frame starts at `cfa`, the return address is
/// just below it.
#[inline(always)]
fn to_caller(w: &mut Walk, cfa: u64, saved_bp: Option<u64>) -> i64 {
    // Branchless, so the verifier does not carry `cfa > sp` into the next
    // frame's state: a stack pointer whose lower bound grew every frame would
    // keep it from seeing that the walk's state repeats.
    if at_most(cfa, w.sp) != 0 {
        return end(w, StackStatus::BadFrame);
    }
    let ret_slot = cfa - 8;
    let ret = if saved_bp == Some(ret_slot - 8) && w.hijacked.slot != ret_slot {
        // The caller's rbp right below the return address (every function
        // that pushes rbp first, frame-pointer code included): one read.
        match unsafe { bpf_probe_read_user((ret_slot - 8) as *const [u64; 2]) } {
            Ok([bp, ret]) => {
                w.bp = bp;
                ret
            }
            Err(_) => return end(w, StackStatus::Unreadable),
        }
    } else {
        let Some(ret) = read(w, ret_slot) else {
            return end(w, StackStatus::Unreadable);
        };
        if let Some(slot) = saved_bp {
            match read(w, slot) {
                Some(bp) => w.bp = bp,
                None => return end(w, StackStatus::Unreadable),
            }
        }
        ret
    };
    w.sp = cfa;
    w.pc = ret;
    if ret == 0 {
        return end(w, StackStatus::Complete);
    }
    0
}

/// One frame: records `pc`, then finds the caller's registers.
///
/// The loop index, not a count kept in `Walk`, places the frame: the
/// verifier sees the index as any value below the loop bound and checks the
/// step once, where a counter it tracks exactly would make it check all 256.
extern "C" fn step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let n = index as usize;
    // The verifier does not know that returning 1 ends the loop: an ended
    // walk must end here again, not walk on with its final state.
    if w.status != RUNNING || n >= MAX_FRAMES {
        return 1;
    }
    unsafe { *w.frames.add(n & (MAX_FRAMES - 1)) = w.pc };
    w.n = index + 1;
    // A return address points after its call, which may be a function's
    // last instruction: look up the call itself. The first frame is where
    // the registers were taken, exact.
    let lookup = if n == 0 { w.pc } else { w.pc - 1 };
    let process = unsafe { &*w.process };
    // Code in a module without any call-frame table is native code built
    // with frame pointers, never a JS frame (V8's code is in anonymous
    // memory, or in its module's gaps between described functions).
    let (r, native_module) = match mapping_of(process, lookup) {
        Some(m) => (row_of(&m, lookup), m.rows == 0),
        None => (None, false),
    };
    let r = r.unwrap_or(Row { pc: 0, cfa_offset: 0, rule: rule::NO_CFI, rbp_offset: 0 });
    let saved_bp = |cfa: u64| (r.rbp_offset != 0).then(|| cfa.wrapping_add((r.rbp_offset as i64 * 8) as u64));
    match r.rule {
        rule::CFA_RSP => {
            let cfa = w.sp + r.cfa_offset as u64;
            to_caller(w, cfa, saved_bp(cfa))
        }
        rule::CFA_RBP => {
            let cfa = w.bp + r.cfa_offset as u64;
            to_caller(w, cfa, saved_bp(cfa))
        }
        rule::PLT => {
            let cfa = w.sp + if lookup & 15 >= 11 { 16 } else { 8 };
            to_caller(w, cfa, None)
        }
        rule::END => end(w, StackStatus::Complete),
        rule::NO_CFI => {
            // Frame-pointer code: [rbp] is the caller's rbp, the return address above it.
            let bp = w.bp;
            if bp == 0 {
                return end(w, StackStatus::Complete);
            }
            if process.v8.fp_function != 0 && !native_module {
                if let Some(word) = v8_function(process.v8, bp) {
                    unsafe { *w.frames.add(n & (MAX_FRAMES - 1)) = word };
                }
            }
            to_caller(w, bp + 16, Some(bp))
        }
        _ => end(w, StackStatus::UnsupportedRule),
    }
}
