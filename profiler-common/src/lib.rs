//! Types shared by the eBPF programs (`profiler-ebpf`) and the userspace
//! aggregator (`profiler`). Everything here is `#[repr(C)]` and plain data:
//! the kernel side writes it into the ring buffer, userspace reads it back.
#![no_std]

/// Maximum number of user stack frames captured per event (the kernel
/// unwinder's depth; a deeper stack is cut and marked [`StackStatus::Truncated`]).
pub const MAX_FRAMES: usize = 256;
const _: () = assert!(MAX_FRAMES.is_power_of_two(), "the kernel side masks frame indices with it");

/// Frames of the frame-pointer fallback (`bpf_get_stack`, for a process
/// whose call-frame tables are not loaded yet).
pub const FP_MAX_FRAMES: usize = 127;

/// Words copied from the user stack pointer at a syscall. Glibc's syscall
/// wrappers keep no frame pointer, so the frame-pointer walk skips the
/// wrapper's caller; its return address is among these words (varargs
/// wrappers such as `open` have frames of ~100 bytes) and userspace re-inserts it.
pub const STACK_HINT_WORDS: usize = 64;

/// Frame-pointer frames captured for syscall events, leaving room for the hint words.
pub const MAX_SYSCALL_FRAMES: usize = FP_MAX_FRAMES - STACK_HINT_WORDS;
const _: () =
    assert!((MAX_SYSCALL_FRAMES + 1).is_power_of_two(), "the kernel side masks frame counts with it");

/// What an [`EventHeader`] describes.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A heap block was returned by an allocator entry point (`addr`, `size`).
    Alloc = 1,
    /// A heap block was released (`addr`); from `free` itself, `arg` is
    /// the caller's return address (0 if unreadable).
    Free = 2,
    /// `realloc`-like move: `old_addr` is released, `addr`/`size` allocated.
    Realloc = 3,
    /// `mmap` returned `addr` for `size` bytes; `arg` = flags, `old_size` = fd.
    Mmap = 4,
    /// `munmap(addr, size)` was called (recorded on entry, see the eBPF side).
    Munmap = 5,
    /// `mremap(old_addr, old_size) -> (addr, size)` succeeded.
    Mremap = 6,
    /// `brk` returned the break `addr`.
    Brk = 7,
    /// A handle was opened: fd in `addr` (and `old_addr` for a pair, else
    /// `u64::MAX`), [`HandleKind`] in `arg`, detail in `size` (socket:
    /// `domain << 32 | type`; accept: the listening fd), `old_size` = 1 if close-on-exec.
    FdOpen = 8,
    /// `close(addr)` was called (recorded on entry).
    FdClose = 9,
    /// The target called the user-named marker function (e.g. end of warm-up).
    Marker = 10,
    /// `write(1, _, size)` was called: lets a marker line on stdout be placed
    /// exactly in the event stream.
    StdoutWrite = 11,
    /// fd `old_addr` was duplicated as `addr` (dup, dup2, dup3, fcntl F_DUPFD*);
    /// `old_size` = 1 if the new fd is close-on-exec.
    FdDup = 12,
    /// `close_range(addr, size, arg flags)` was called (recorded on entry).
    CloseRange = 13,
    /// fcntl(F_SETFD): fd `addr`, `arg` = 1 if close-on-exec is now set.
    FdSetCloexec = 14,
    /// The process exec'd a new program; `arg` = 1 if it was stopped
    /// (SIGSTOP) before its first instruction, to be probed and continued.
    Exec = 15,
    /// The process forked child process `addr` (not a thread).
    Fork = 16,
    /// The OOM killer chose process `addr` as its victim (any process: the
    /// event is rare, userspace keeps the ones it profiles).
    OomKill = 17,
    /// A first touch of a page (not-present fault) at `addr` (page-aligned), `size` bytes.
    PageFault = 18,
    /// madvise(addr, size, arg) that drops pages (DONTNEED, FREE, REMOVE, DONTNEED_LOCKED).
    Madvise = 19,
    /// The process exited (its main thread did): it holds nothing any more.
    Exit = 20,
    /// Node's handler of a V8 out-of-memory abort was called: `size` = 1 if
    /// the JS heap ran out (its limit), 0 if another V8 allocation failed,
    /// `u64::MAX` if unreadable.
    V8OutOfMemory = 21,
    /// A threadpool thread starts work item `addr` (`uv__fs_work`,
    /// `uv__getaddrinfo_work`, ...): what it opens is the request's doing.
    /// (22, libuv queueing work, is no longer traced.)
    WorkStart = 23,
    /// A request `addr` (a `uv_fs_t`) that opens an fd on the threadpool
    /// (`uv_fs_open` with a callback), with the requesting stack; its work
    /// item, which [`EventKind::WorkStart`] names, lies inside it.
    WorkRequest = 24,
    /// libuv initialised stream handle `addr` (a TCP socket, a pipe, a tty:
    /// `uv__stream_init`), with the stack that asked for it, in JS the code
    /// that created the socket (`net.connect`, an `http.Agent`), which its fd
    /// may only be created a tick later.
    StreamInit = 25,
    /// libuv gave stream handle `addr` its fd `size` (`uv__stream_open`).
    StreamOpen = 26,
    /// A first touch of page `addr` by the same thread and call (the same
    /// stack signature) as the one before it, which touched the page just
    /// below: no stack (it is the [`EventKind::PageFault`]'s at `arg`, the
    /// run's first page).
    PageFaultRun = 27,
}

impl EventKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Alloc,
            2 => Self::Free,
            3 => Self::Realloc,
            4 => Self::Mmap,
            5 => Self::Munmap,
            6 => Self::Mremap,
            7 => Self::Brk,
            8 => Self::FdOpen,
            9 => Self::FdClose,
            10 => Self::Marker,
            11 => Self::StdoutWrite,
            12 => Self::FdDup,
            13 => Self::CloseRange,
            14 => Self::FdSetCloexec,
            15 => Self::Exec,
            16 => Self::Fork,
            17 => Self::OomKill,
            18 => Self::PageFault,
            19 => Self::Madvise,
            20 => Self::Exit,
            21 => Self::V8OutOfMemory,
            23 => Self::WorkStart,
            24 => Self::WorkRequest,
            25 => Self::StreamInit,
            26 => Self::StreamOpen,
            27 => Self::PageFaultRun,
            _ => return None,
        })
    }
}

/// Which kind of handle an fd is. Extended as more fd-creating calls are traced.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleKind {
    Socket = 1,
    /// Files, including memfd.
    File = 2,
    Pipe = 3,
    /// eventfd, timerfd, signalfd, epoll, inotify, pidfd, io_uring.
    Event = 4,
}

impl HandleKind {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Socket,
            2 => Self::File,
            3 => Self::Pipe,
            4 => Self::Event,
            _ => return None,
        })
    }
}

/// The allocator entry points we probe. The index doubles as the `api` field
/// of heap events and as the probe's slot in the counters.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocApi {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    Free = 4,
    PosixMemalign = 5,
    AlignedAlloc = 6,
    Memalign = 7,
    Valloc = 8,
    Pvalloc = 9,
}

pub const ALLOC_APIS: [AllocApi; 10] = [
    AllocApi::Malloc,
    AllocApi::Calloc,
    AllocApi::Realloc,
    AllocApi::Reallocarray,
    AllocApi::Free,
    AllocApi::PosixMemalign,
    AllocApi::AlignedAlloc,
    AllocApi::Memalign,
    AllocApi::Valloc,
    AllocApi::Pvalloc,
];

impl AllocApi {
    pub const fn symbol(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Calloc => "calloc",
            Self::Realloc => "realloc",
            Self::Reallocarray => "reallocarray",
            Self::Free => "free",
            Self::PosixMemalign => "posix_memalign",
            Self::AlignedAlloc => "aligned_alloc",
            Self::Memalign => "memalign",
            Self::Valloc => "valloc",
            Self::Pvalloc => "pvalloc",
        }
    }

    pub fn from_u16(v: u16) -> Option<Self> {
        ALLOC_APIS.get(v as usize).copied()
    }

    /// The eBPF program probing its entry (`malloc_enter`, ...).
    pub const fn entry_program(self) -> &'static str {
        match self {
            Self::Malloc => "malloc_enter",
            Self::Calloc => "calloc_enter",
            Self::Realloc => "realloc_enter",
            Self::Reallocarray => "reallocarray_enter",
            Self::Free => "free_enter",
            Self::PosixMemalign => "posix_memalign_enter",
            Self::AlignedAlloc => "aligned_alloc_enter",
            Self::Memalign => "memalign_enter",
            Self::Valloc => "valloc_enter",
            Self::Pvalloc => "pvalloc_enter",
        }
    }
}

/// The syscalls we trace (x86_64 numbers) and their counter slots.
pub mod syscalls {
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const MMAP: u64 = 9;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const PIPE: u64 = 22;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
    pub const DUP: u64 = 32;
    pub const DUP2: u64 = 33;
    pub const SOCKET: u64 = 41;
    pub const ACCEPT: u64 = 43;
    pub const SOCKETPAIR: u64 = 53;
    pub const CLONE: u64 = 56;
    pub const FORK: u64 = 57;
    pub const VFORK: u64 = 58;
    pub const FCNTL: u64 = 72;
    pub const CREAT: u64 = 85;
    pub const EPOLL_CREATE: u64 = 213;
    pub const INOTIFY_INIT: u64 = 253;
    pub const OPENAT: u64 = 257;
    pub const SIGNALFD: u64 = 282;
    pub const TIMERFD_CREATE: u64 = 283;
    pub const EVENTFD: u64 = 284;
    pub const ACCEPT4: u64 = 288;
    pub const SIGNALFD4: u64 = 289;
    pub const EVENTFD2: u64 = 290;
    pub const EPOLL_CREATE1: u64 = 291;
    pub const DUP3: u64 = 292;
    pub const PIPE2: u64 = 293;
    pub const INOTIFY_INIT1: u64 = 294;
    pub const MEMFD_CREATE: u64 = 319;
    pub const IO_URING_SETUP: u64 = 425;
    pub const PIDFD_OPEN: u64 = 434;
    pub const CLONE3: u64 = 435;
    pub const CLOSE_RANGE: u64 = 436;
    pub const OPENAT2: u64 = 437;

    /// Defines the traced syscalls once: `TRACED` (number and name, in
    /// counter-slot order) and `slot()` (a syscall number's counter slot),
    /// both from one list. The name is also the tracepoint's
    /// (`syscalls:sys_enter_<name>`).
    macro_rules! traced {
        ($($nr:ident => $name:ident),* $(,)?) => {
            #[allow(non_camel_case_types, dead_code)]
            #[repr(usize)]
            enum Slot { $($name),* }

            /// (number, name) of every traced syscall, in counter-slot order.
            pub const TRACED: [(u64, &str); [$(stringify!($name)),*].len()] =
                [$(($nr, stringify!($name))),*];

            /// The counter slot of syscall `nr`, if it is traced.
            pub fn slot(nr: u64) -> Option<usize> {
                Some(match nr {
                    $($nr => Slot::$name as usize,)*
                    _ => return None,
                })
            }
        };
    }

    traced! {
        MMAP => mmap,
        MUNMAP => munmap,
        MREMAP => mremap,
        BRK => brk,
        SOCKET => socket,
        SOCKETPAIR => socketpair,
        ACCEPT => accept,
        ACCEPT4 => accept4,
        CLOSE => close,
        OPEN => open,
        OPENAT => openat,
        OPENAT2 => openat2,
        CREAT => creat,
        PIPE => pipe,
        PIPE2 => pipe2,
        EVENTFD => eventfd,
        EVENTFD2 => eventfd2,
        TIMERFD_CREATE => timerfd_create,
        SIGNALFD => signalfd,
        SIGNALFD4 => signalfd4,
        EPOLL_CREATE => epoll_create,
        EPOLL_CREATE1 => epoll_create1,
        INOTIFY_INIT => inotify_init,
        INOTIFY_INIT1 => inotify_init1,
        MEMFD_CREATE => memfd_create,
        PIDFD_OPEN => pidfd_open,
        IO_URING_SETUP => io_uring_setup,
        DUP => dup,
        DUP2 => dup2,
        DUP3 => dup3,
        FCNTL => fcntl,
        CLOSE_RANGE => close_range,
        CLONE => clone,
        CLONE3 => clone3,
        FORK => fork,
        VFORK => vfork,
        WRITE => write,
        MADVISE => madvise,
    }

    /// The handle kind a successful fd-creating syscall makes, if it makes one.
    /// Calls that only matter to the handle lens.
    pub fn is_handle_call(nr: u64) -> bool {
        creates(nr).is_some() || matches!(nr, CLOSE | CLOSE_RANGE | DUP | DUP2 | DUP3 | FCNTL)
    }

    /// Calls recorded at entry only (releases, stdout writes): no exit probe needed.
    pub fn recorded_on_entry(nr: u64) -> bool {
        matches!(nr, MUNMAP | CLOSE | CLOSE_RANGE | WRITE | MADVISE)
    }

    pub fn creates(nr: u64) -> Option<super::HandleKind> {
        use super::HandleKind::*;
        Some(match nr {
            SOCKET | SOCKETPAIR | ACCEPT | ACCEPT4 => Socket,
            OPEN | OPENAT | OPENAT2 | CREAT | MEMFD_CREATE => File,
            PIPE | PIPE2 => Pipe,
            EVENTFD | EVENTFD2 | TIMERFD_CREATE | SIGNALFD | SIGNALFD4 | EPOLL_CREATE | EPOLL_CREATE1
            | INOTIFY_INIT | INOTIFY_INIT1 | PIDFD_OPEN | IO_URING_SETUP => Event,
            _ => return None,
        })
    }
}

/// Slots of the kernel-side per-CPU counter array.
pub mod counters {
    use super::{syscalls, ALLOC_APIS};

    /// Per allocator entry point: calls seen (entry probe hits).
    pub const API_CALLS: usize = 0;
    /// Per traced syscall: completed calls seen.
    pub const SYSCALLS: usize = API_CALLS + ALLOC_APIS.len();
    /// Stack captures that failed (`bpf_get_stack` returned an error).
    pub const STACK_FAILED: usize = SYSCALLS + syscalls::TRACED.len();
    /// Events not delivered because the ring buffer was full.
    pub const RINGBUF_DROPS: usize = STACK_FAILED + 1;
    /// Allocator calls not tracked because the in-flight call map was full.
    pub const INFLIGHT_MAP_FULL: usize = RINGBUF_DROPS + 1;
    /// Allocator calls made from inside another probed allocator call
    /// (e.g. reallocarray -> realloc); the outer call is the one recorded.
    pub const NESTED_CALLS: usize = INFLIGHT_MAP_FULL + 1;
    /// Allocations that returned NULL / failed (not counted as outstanding).
    pub const FAILED_ALLOCS: usize = NESTED_CALLS + 1;
    /// Returns seen without a matching entry (probe attached mid-call).
    pub const UNMATCHED_RETURNS: usize = FAILED_ALLOCS + 1;
    /// Syscalls not tracked because the in-flight syscall map was full.
    pub const INFLIGHT_SYSCALL_MAP_FULL: usize = UNMATCHED_RETURNS + 1;
    /// Allocator calls left out by `--sample-bytes` (their trap is still paid).
    pub const UNSAMPLED_CALLS: usize = INFLIGHT_SYSCALL_MAP_FULL + 1;
    /// Sampled blocks not tracked because the sampled-block map was full.
    pub const SAMPLED_MAP_FULL: usize = UNSAMPLED_CALLS + 1;
    /// First-touch page faults seen (resident lens).
    pub const PAGE_FAULTS: usize = SAMPLED_MAP_FULL + 1;
    /// Events lost because every per-CPU scratch record was in use (programs
    /// nested or preempted more deeply than there are slots).
    pub const SCRATCH_BUSY: usize = PAGE_FAULTS + 1;
    /// Allocator calls whose return was never seen (the thread left the call
    /// otherwise, e.g. longjmp); found and recovered at the thread's next call.
    pub const MISSED_RETURNS: usize = SCRATCH_BUSY + 1;
    /// Page faults taken by the profiler's own reads of user memory (never
    /// the target's: such a read leaves the page not resident).
    pub const OWN_READ_FAULTS: usize = MISSED_RETURNS + 1;
    pub const COUNT: usize = OWN_READ_FAULTS + 1;
}

/// Slots of the `CONFIG` array map: settings userspace writes before attaching.
pub mod config {
    /// Offset of `child_pid` in the `sched_process_fork` record (from tracefs).
    pub const FORK_CHILD_PID_OFFSET: u32 = 0;
    /// 1 to add forked children of targets to TARGETS.
    pub const FOLLOW_CHILDREN: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// The names userspace finds the eBPF object's maps, globals and programs
/// by. The kernel side declares each under the same identifier (aya takes a
/// map's or program's name from it); `profiler`'s unit tests check that
/// every name here is in the built object.
pub mod names {
    /// Maps.
    pub mod maps {
        pub const EVENTS: &str = "EVENTS";
        pub const COUNTERS: &str = "COUNTERS";
        pub const TARGETS: &str = "TARGETS";
        pub const CGROUPS: &str = "CGROUPS";
        pub const CONFIG: &str = "CONFIG";
        pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
        pub const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
        pub const ALL: [&str; 7] =
            [EVENTS, COUNTERS, TARGETS, CGROUPS, CONFIG, UNWIND_ROWS, UNWIND_PROCESSES];
    }

    /// Globals set at load time.
    pub mod globals {
        pub const CGROUP_MODE: &str = "CGROUP_MODE";
        pub const SAMPLE_BYTES: &str = "SAMPLE_BYTES";
        pub const HOLD_AT_EXEC: &str = "HOLD_AT_EXEC";
        pub const ALL: [&str; 3] = [CGROUP_MODE, SAMPLE_BYTES, HOLD_AT_EXEC];
    }

    /// Programs (besides each allocator's entry probe, [`AllocApi::entry_program`](super::AllocApi::entry_program)).
    pub mod programs {
        pub const ALLOC_RETURN: &str = "alloc_return";
        pub const MARKER: &str = "marker";
        /// On node's `OOMErrorHandler`.
        pub const V8_OUT_OF_MEMORY: &str = "v8_out_of_memory";
        /// On libuv's `uv_fs_open` (in node).
        pub const THREADPOOL_REQUEST: &str = "threadpool_request";
        /// On libuv's threadpool work functions (in node).
        pub const THREADPOOL_WORK: &str = "threadpool_work";
        /// On libuv's `uv__stream_init` (in node).
        pub const STREAM_INIT: &str = "stream_init";
        /// On libuv's `uv__stream_open` (in node).
        pub const STREAM_OPEN: &str = "stream_open";
        pub const SYSCALL_ENTER: &str = "syscall_enter";
        pub const SYSCALL_EXIT: &str = "syscall_exit";
        pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
        pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
        pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
        pub const OOM_MARK_VICTIM: &str = "oom_mark_victim";
        /// Attached to both `exceptions:page_fault_user` and `exceptions:page_fault_kernel`.
        pub const PAGE_FAULT: &str = "page_fault";
        pub const ALL: [&str; 14] = [
            ALLOC_RETURN,
            MARKER,
            V8_OUT_OF_MEMORY,
            THREADPOOL_REQUEST,
            THREADPOOL_WORK,
            STREAM_INIT,
            STREAM_OPEN,
            SYSCALL_ENTER,
            SYSCALL_EXIT,
            SCHED_PROCESS_EXEC,
            SCHED_PROCESS_FORK,
            SCHED_PROCESS_EXIT,
            OOM_MARK_VICTIM,
            PAGE_FAULT,
        ];
    }
}

/// Fixed part of every ring-buffer record. `frames` user stack frames
/// (innermost first) follow it directly, then `hints` stack-hint words.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u16,
    /// [`AllocApi`] for heap events, the syscall number for syscall events.
    pub api: u16,
    /// Number of stack frames that follow the header.
    pub frames: u16,
    /// How the stack walk ended: a [`StackStatus`].
    pub stack_status: u8,
    /// Number of stack-hint words (syscall events) that follow the frames.
    pub hints: u8,
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub old_size: u64,
    pub arg: u64,
}

/// How a user stack walk ended (the record's `stack_status`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackStatus {
    /// Walked to the outermost frame (its return address is undefined in
    /// the call-frame information, or zero).
    Complete = 0,
    /// The frame-pointer capture failed outright.
    CaptureFailed = 1,
    /// Deeper than [`MAX_FRAMES`]: the outer frames are cut.
    Truncated = 2,
    /// A saved return address or frame pointer could not be read.
    Unreadable = 3,
    /// The frame's call-frame rule is not one the kernel walker follows
    /// (a DWARF expression, e.g. a signal frame).
    UnsupportedRule = 4,
    /// No call-frame tables for the process (yet): walked by frame
    /// pointers, which skip frameless functions and stop at code built
    /// without them.
    FramePointers = 5,
    /// A frame did not move up the stack: the walk left the real stack.
    BadFrame = 6,
}

impl StackStatus {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Complete,
            1 => Self::CaptureFailed,
            2 => Self::Truncated,
            3 => Self::Unreadable,
            4 => Self::UnsupportedRule,
            5 => Self::FramePointers,
            6 => Self::BadFrame,
            _ => return None,
        })
    }
}

/// Call-frame tables for the kernel's stack walker, built by userspace from
/// each module's `.eh_frame` / `.debug_frame`.
///
/// Every module's rows live in one array of [`RowPage`]s (a module's rows
/// are contiguous, sorted by `pc`); each process has a sorted list of its
/// executable file mappings pointing into it. A row gives, for the code from
/// its `pc` up to the next row's, how to find the caller's frame on x86_64:
/// the canonical frame address (CFA) from `rsp` or `rbp`, the return
/// address at CFA - 8, and where the caller's `rbp` was saved.
pub mod unwind {
    /// One row of a module's call-frame table.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Row {
        /// Code offset from the module table's base address.
        pub pc: u32,
        /// CFA = base register + this (CFA rules only).
        pub cfa_offset: u16,
        /// One of [`rule`].
        pub rule: u8,
        /// The caller's `rbp` is saved at CFA + 8 * this; 0: `rbp` is unchanged.
        pub rbp_offset: i8,
    }

    /// How a [`Row`] finds the caller's frame.
    pub mod rule {
        /// CFA = rsp + offset.
        pub const CFA_RSP: u8 = 1;
        /// CFA = rbp + offset.
        pub const CFA_RBP: u8 = 2;
        /// A lazy-binding PLT stub: CFA = rsp + 8, + 8 once past the stub's push
        /// (offset 11 of its 16 bytes), the one DWARF expression every
        /// linker emits.
        pub const PLT: u8 = 3;
        /// The outermost frame (return address undefined, e.g. `_start`).
        pub const END: u8 = 4;
        /// Code with no call-frame information: walk the frame pointer.
        pub const NO_CFI: u8 = 5;
        /// A rule the kernel walker does not follow; the walk stops here.
        pub const UNSUPPORTED: u8 = 6;
    }

    pub const ROWS_PER_PAGE: usize = 512;

    /// Rows are stored in pages: one map update writes 512 rows.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RowPage {
        pub rows: [Row; ROWS_PER_PAGE],
    }

    /// Pages in the row array: 4 Mi rows, 32 MiB of kernel memory.
    pub const ROW_PAGES: u32 = 8192;

    /// One executable file mapping of a process.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Mapping {
        pub start: u64,
        pub end: u64,
        /// A code address minus this is the module table's `pc`.
        pub bias: u64,
        /// Index of the module's first row in the row array.
        pub first_row: u32,
        /// Number of rows; 0 when the module has no call-frame information.
        pub rows: u32,
    }

    pub const MAX_MAPPINGS: usize = 128;

    /// A process's executable file mappings, sorted by `start`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Process {
        pub count: u32,
        pub _pad: u32,
        /// Where V8 keeps a JS frame's function; all zero when the process
        /// runs no V8.
        pub v8: V8Frames,
        pub mappings: [Mapping; MAX_MAPPINGS],
    }

    /// The V8 frame layout, from the engine's postmortem metadata
    /// (`v8dbg_*` symbols): a JS frame (interpreted, baseline or optimized
    /// code, all walked by frame pointer) keeps its context and its
    /// `JSFunction` just below the saved frame pointer, and the function
    /// points to its `SharedFunctionInfo`, which is the same for every tier
    /// of one JS function. The walker records that instead of the code
    /// address ([`super::V8_FUNCTION`]), with a stamp of the object's
    /// immutable fields, by which userspace tells a function that moved
    /// (V8 compacts its heap) from the one now at its old address.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct V8Frames {
        /// Frame-pointer offset of the `JSFunction`; 0: not V8. The word
        /// above it is the frame's context, or a typed frame's marker (a
        /// small integer) where the frame has no function.
        pub fp_function: i8,
        pub _pad: u8,
        /// Offset of `shared` in a `JSFunction`.
        pub function_shared: u16,
        /// Offset in a `SharedFunctionInfo` of 6 bytes that never change
        /// (its length, parameter count and function token offset); 0: no stamp.
        pub shared_stamp: u16,
        pub _pad2: u16,
    }

    /// The stamp of a `SharedFunctionInfo` from the 8 bytes at its
    /// [`V8Frames::shared_stamp`]: its low 6 bytes folded to 16 bits.
    #[inline(always)]
    pub fn v8_stamp(word: u64) -> u64 {
        let w = word & 0xffff_ffff_ffff;
        (w ^ (w >> 16) ^ (w >> 32)) & 0xffff
    }
}

/// A frame word that is not a code address: V8's `SharedFunctionInfo` (a
/// tagged heap pointer, below 2^47) of a JS frame, its stamp
/// ([`unwind::v8_stamp`]) in bits 47-62, and this. One JS function is then
/// one frame whatever its tier or code address, and userspace names it
/// from the target's heap.
pub const V8_FUNCTION: u64 = 1 << 63;
/// The bits of a [`V8_FUNCTION`] word that hold the object's address.
pub const V8_FUNCTION_ADDRESS: u64 = (1 << 47) - 1;
/// Where a [`V8_FUNCTION`] word holds the object's stamp.
pub const V8_STAMP_SHIFT: u32 = 47;

/// V8 tags a pointer to a heap object with 1 in its low bits (a small
/// integer, such as a typed frame's marker, has 0).
#[inline(always)]
pub fn is_v8_heap_object(word: u64) -> bool {
    word & 3 == 1
}

/// A complete record as the kernel side assembles it before output.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: EventHeader,
    pub frames: [u64; MAX_FRAMES],
}

pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::unwind::RowPage {}
    unsafe impl aya::Pod for super::unwind::Process {}
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    /// Retired kinds stay unused: an old number must never mean a new event.
    #[test]
    fn retired_event_kinds_are_not_decoded() {
        // 22: libuv queueing threadpool work (`uv__work_submit`), no longer traced.
        assert_eq!(EventKind::from_u16(22), None);
        assert_eq!(EventKind::from_u16(EventKind::WorkStart as u16), Some(EventKind::WorkStart));
    }
}
