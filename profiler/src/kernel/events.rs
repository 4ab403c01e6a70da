//! Decoding ring-buffer records written by `profiler-ebpf` into typed
//! events: one variant per [`EventKind`], its header fields under the names
//! they have for that kind. This is the only code that reads a header field;
//! a record it cannot decode is an [`Undecodable`] reason, counted by the caller.

use profiler_common::{syscalls, AllocApi, EventHeader, EventKind, HandleKind, StackStatus, HEADER_SIZE};

/// What one record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An allocator returned block `addr`; `size` and `arg` as the call took
    /// them (`calloc(arg, size)`, ...), see [`Event::requested_bytes`].
    Alloc {
        api: AllocApi,
        addr: u64,
        size: u64,
        arg: u64,
    },
    /// `realloc`-like move: `old` released, `addr` allocated.
    Realloc {
        api: AllocApi,
        old: u64,
        addr: u64,
        size: u64,
        arg: u64,
    },
    /// Block `addr` released; `caller` is `free`'s return address when read.
    Free {
        addr: u64,
        caller: Option<u64>,
    },
    /// `mmap` returned `addr` for `len` bytes; `fd` for a file mapping.
    Mmap {
        addr: u64,
        len: u64,
        file_backed: bool,
        fd: Option<i32>,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mremap {
        old: u64,
        old_len: u64,
        addr: u64,
        len: u64,
    },
    /// `brk` returned the break `brk`.
    Brk {
        brk: u64,
    },
    /// Pages `addr..addr+len` dropped by `madvise`.
    Madvise {
        addr: u64,
        len: u64,
    },
    /// First touch of page `page`.
    PageFault {
        page: u64,
    },
    /// First touch of page `page`, continuing the thread's run of touches
    /// from `first_page` (whose [`Event::PageFault`] has the stack).
    PageFaultRun {
        page: u64,
        first_page: u64,
    },
    /// Syscall `syscall` opened `fd` (and `pair` for pipes and socketpairs).
    /// `detail`: a socket's `domain << 32 | type`; accept's listening fd.
    FdOpen {
        syscall: u64,
        kind: HandleKind,
        fd: u64,
        pair: Option<u64>,
        detail: u64,
        cloexec: bool,
    },
    FdDup {
        old: u64,
        new: u64,
        cloexec: bool,
    },
    FdClose {
        fd: u64,
    },
    CloseRange {
        first: u64,
        last: u64,
        cloexec_only: bool,
    },
    FdSetCloexec {
        fd: u64,
        on: bool,
    },
    /// A new program; `held` if it is stopped before its first instruction.
    Exec {
        held: bool,
    },
    Fork {
        child: u32,
    },
    /// The process exited (its main thread did).
    Exit,
    /// The OOM killer chose `victim` (any process).
    OomKill {
        victim: u32,
    },
    /// The target called the user-named marker function.
    Marker,
    /// Node's V8 out-of-memory handler ran; `heap`: the JS heap hit its limit.
    V8OutOfMemory {
        heap: Option<bool>,
    },
    /// Request `request`, whose work opens an fd on the threadpool (the stack is the request's).
    WorkRequest {
        request: u64,
    },
    /// A threadpool thread starts `work`.
    WorkStart {
        work: u64,
    },
    /// libuv initialised stream handle `stream` (the stack is its creator's).
    StreamInit {
        stream: u64,
    },
    /// libuv gave stream handle `stream` its `fd`.
    StreamOpen {
        stream: u64,
        fd: u64,
    },
    /// `write(1, _, bytes)`.
    StdoutWrite {
        bytes: u64,
    },
}

impl Event {
    /// Bytes an allocator call makes outstanding.
    pub fn requested_bytes(api: AllocApi, size: u64, arg: u64) -> u64 {
        const PAGE: u64 = 4096;
        match api {
            AllocApi::Calloc | AllocApi::Reallocarray => size.saturating_mul(arg),
            AllocApi::Pvalloc => size.max(1).div_ceil(PAGE) * PAGE,
            _ => size,
        }
    }
}

/// What made the call an event's stack was captured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Allocator(AllocApi),
    Syscall(u64),
    PageFault,
    /// Process events (exec, fork, exit, OOM) have no meaningful stack.
    Other,
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// Shorter than the header.
    Short,
    UnknownKind(u16),
    UnknownAllocator(u16),
    UnknownHandleKind(u64),
}

/// One decoded record: who, when, what, and the captured user stack.
pub struct Record<'a> {
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    pub ts_ns: u64,
    pub event: Event,
    pub caller: Caller,
    /// How the stack walk ended ([`StackStatus::BadFrame`] for a value this
    /// build does not know).
    pub stack_status: StackStatus,
    /// Innermost frame first.
    frames: &'a [u8],
    hints: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Undecodable> {
        if bytes.len() < HEADER_SIZE {
            return Err(Undecodable::Short);
        }
        // SAFETY: the length was checked; EventHeader is plain old data.
        let h: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = EventKind::from_u16(h.kind).ok_or(Undecodable::UnknownKind(h.kind))?;
        let api = || AllocApi::from_u16(h.api).ok_or(Undecodable::UnknownAllocator(h.api));
        let syscall = Caller::Syscall(h.api as u64);
        let (event, caller) = match kind {
            EventKind::Alloc => {
                let api = api()?;
                (Event::Alloc { api, addr: h.addr, size: h.size, arg: h.arg }, Caller::Allocator(api))
            }
            EventKind::Realloc => {
                let api = api()?;
                let event = Event::Realloc { api, old: h.old_addr, addr: h.addr, size: h.size, arg: h.arg };
                (event, Caller::Allocator(api))
            }
            EventKind::Free => {
                let from_free = h.api == AllocApi::Free as u16;
                let caller = from_free.then_some(h.arg).filter(|&a| a != 0);
                (Event::Free { addr: h.addr, caller }, api().map_or(Caller::Other, Caller::Allocator))
            }
            EventKind::Mmap => {
                const MAP_ANONYMOUS: u64 = 0x20;
                let fd = (h.old_size as i32 >= 0).then_some(h.old_size as i32);
                let file_backed = h.arg & MAP_ANONYMOUS == 0;
                (Event::Mmap { addr: h.addr, len: h.size, file_backed, fd }, syscall)
            }
            EventKind::Munmap => (Event::Munmap { addr: h.addr, len: h.size }, syscall),
            EventKind::Mremap => {
                (Event::Mremap { old: h.old_addr, old_len: h.old_size, addr: h.addr, len: h.size }, syscall)
            }
            EventKind::Brk => (Event::Brk { brk: h.addr }, syscall),
            EventKind::Madvise => (Event::Madvise { addr: h.addr, len: h.size }, syscall),
            EventKind::PageFault => (Event::PageFault { page: h.addr }, Caller::PageFault),
            EventKind::PageFaultRun => {
                (Event::PageFaultRun { page: h.addr, first_page: h.arg }, Caller::PageFault)
            }
            EventKind::FdOpen => {
                let kind = HandleKind::from_u64(h.arg).ok_or(Undecodable::UnknownHandleKind(h.arg))?;
                let event = Event::FdOpen {
                    syscall: h.api as u64,
                    kind,
                    fd: h.addr,
                    pair: (h.old_addr != u64::MAX).then_some(h.old_addr),
                    detail: h.size,
                    cloexec: h.old_size != 0,
                };
                (event, syscall)
            }
            EventKind::FdDup => {
                (Event::FdDup { old: h.old_addr, new: h.addr, cloexec: h.old_size != 0 }, syscall)
            }
            EventKind::FdClose => (Event::FdClose { fd: h.addr }, syscall),
            EventKind::CloseRange => {
                const CLOSE_RANGE_CLOEXEC: u64 = 4;
                let event = Event::CloseRange {
                    first: h.addr,
                    last: h.size,
                    cloexec_only: h.arg & CLOSE_RANGE_CLOEXEC != 0,
                };
                (event, syscall)
            }
            EventKind::FdSetCloexec => (Event::FdSetCloexec { fd: h.addr, on: h.arg != 0 }, syscall),
            EventKind::Exec => (Event::Exec { held: h.arg == 1 }, Caller::Other),
            EventKind::Fork => (Event::Fork { child: h.addr as u32 }, Caller::Other),
            EventKind::Exit => (Event::Exit, Caller::Other),
            EventKind::OomKill => (Event::OomKill { victim: h.addr as u32 }, Caller::Other),
            EventKind::Marker => (Event::Marker, Caller::Other),
            EventKind::WorkRequest => (Event::WorkRequest { request: h.addr }, Caller::Other),
            EventKind::WorkStart => (Event::WorkStart { work: h.addr }, Caller::Other),
            EventKind::StreamInit => (Event::StreamInit { stream: h.addr }, Caller::Other),
            EventKind::StreamOpen => (Event::StreamOpen { stream: h.addr, fd: h.size }, Caller::Other),
            EventKind::V8OutOfMemory => {
                (Event::V8OutOfMemory { heap: (h.size <= 1).then_some(h.size == 1) }, Caller::Other)
            }
            EventKind::StdoutWrite => {
                (Event::StdoutWrite { bytes: h.size }, Caller::Syscall(syscalls::WRITE))
            }
        };
        let body = &bytes[HEADER_SIZE..];
        let frames_len = (h.frames as usize * 8).min(body.len());
        let hints_len = (h.hints as usize * 8).min(body.len() - frames_len);
        Ok(Self {
            pid: h.tgid,
            tid: h.tid,
            ts_ns: h.ts_ns,
            event,
            caller,
            stack_status: StackStatus::from_u8(h.stack_status).unwrap_or(StackStatus::BadFrame),
            frames: &body[..frames_len],
            hints: &body[frames_len..frames_len + hints_len],
        })
    }

    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        words(self.frames)
    }

    /// Words found at the user stack pointer (syscall events).
    pub fn hints(&self) -> Vec<u64> {
        words(self.hints).collect()
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
}

/// Encodes a record as the kernel side writes it: for tests and synthetic
/// sessions (the golden-file tests feed these through the whole pipeline).
pub fn encode(header: EventHeader, frames: &[u64], hints: &[u64]) -> Vec<u8> {
    let header = EventHeader { frames: frames.len() as u16, hints: hints.len() as u8, ..header };
    let mut bytes = vec![0u8; HEADER_SIZE];
    // SAFETY: the buffer is HEADER_SIZE bytes; EventHeader is plain old data.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header) };
    for word in frames.iter().chain(hints) {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// A zeroed header of `kind` for process `pid` at `ts_ns` (fill in the rest).
pub fn header(kind: EventKind, pid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u16,
        api: 0,
        frames: 0,
        stack_status: StackStatus::Complete as u8,
        hints: 0,
        tgid: pid,
        tid: pid,
        ts_ns,
        addr: 0,
        size: 0,
        old_addr: 0,
        old_size: 0,
        arg: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_named_fields_frames_and_hints() {
        let h = EventHeader {
            api: AllocApi::Calloc as u16,
            addr: 0xabc,
            size: 8,
            arg: 3,
            ..header(EventKind::Alloc, 7, 1)
        };
        let bytes = encode(h, &[0x1111, 0x2222], &[0x3333]);
        let r = Record::decode(&bytes).unwrap();
        assert_eq!(r.event, Event::Alloc { api: AllocApi::Calloc, addr: 0xabc, size: 8, arg: 3 });
        assert_eq!(r.caller, Caller::Allocator(AllocApi::Calloc));
        assert_eq!((r.pid, r.ts_ns), (7, 1));
        assert_eq!(r.frames().collect::<Vec<_>>(), vec![0x1111, 0x2222]);
        assert_eq!(r.hints(), vec![0x3333]);
        assert_eq!(Event::requested_bytes(AllocApi::Calloc, 8, 3), 24);
    }

    #[test]
    fn a_pair_and_close_on_exec_are_named() {
        let h = EventHeader {
            api: syscalls::PIPE2 as u16,
            addr: 3,
            old_addr: 4,
            old_size: 1,
            arg: HandleKind::Pipe as u64,
            ..header(EventKind::FdOpen, 1, 0)
        };
        let bytes = encode(h, &[], &[]);
        assert_eq!(
            Record::decode(&bytes).unwrap().event,
            Event::FdOpen {
                syscall: syscalls::PIPE2,
                kind: HandleKind::Pipe,
                fd: 3,
                pair: Some(4),
                detail: 0,
                cloexec: true
            }
        );
    }

    #[test]
    fn undecodable_records_say_why() {
        let ok = encode(header(EventKind::Alloc, 1, 0), &[], &[]);
        assert_eq!(Record::decode(&ok[..10]).err(), Some(Undecodable::Short));
        let unknown = EventHeader { kind: 999, ..header(EventKind::Alloc, 1, 0) };
        assert_eq!(Record::decode(&encode(unknown, &[], &[])).err(), Some(Undecodable::UnknownKind(999)));
        let api = EventHeader { api: 77, ..header(EventKind::Alloc, 1, 0) };
        assert_eq!(Record::decode(&encode(api, &[], &[])).err(), Some(Undecodable::UnknownAllocator(77)));
        let handle = EventHeader { arg: 9, ..header(EventKind::FdOpen, 1, 0) };
        assert_eq!(Record::decode(&encode(handle, &[], &[])).err(), Some(Undecodable::UnknownHandleKind(9)));
    }
}
