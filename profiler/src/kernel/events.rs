//! Decoding ring-buffer records written by `profiler-ebpf`.

use profiler_common::{EventHeader, EventKind, HEADER_SIZE};

/// One decoded record: the fixed header and the captured user stack.
pub struct RawEvent<'a> {
    pub header: EventHeader,
    pub kind: EventKind,
    /// Innermost frame first.
    frames: &'a [u8],
    hints: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// Returns `None` for a truncated or unknown record.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < HEADER_SIZE {
            return None;
        }
        // SAFETY: the length was checked; EventHeader is plain old data.
        let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = EventKind::from_u16(header.kind)?;
        let body = &bytes[HEADER_SIZE..];
        let frames_len = (header.frames as usize * 8).min(body.len());
        let hints_len = (header.hints as usize * 8).min(body.len() - frames_len);
        Some(Self {
            header,
            kind,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_header_and_frames() {
        let mut header: EventHeader = unsafe { std::mem::zeroed() };
        header.kind = EventKind::Alloc as u16;
        header.frames = 2;
        header.hints = 1;
        header.addr = 0xabc;
        let mut bytes = vec![0u8; HEADER_SIZE];
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header) };
        bytes.extend_from_slice(&0x1111u64.to_ne_bytes());
        bytes.extend_from_slice(&0x2222u64.to_ne_bytes());
        bytes.extend_from_slice(&0x3333u64.to_ne_bytes());
        let ev = RawEvent::decode(&bytes).unwrap();
        assert_eq!(ev.hints(), vec![0x3333]);
        assert_eq!(ev.kind, EventKind::Alloc);
        assert_eq!(ev.header.addr, 0xabc);
        assert_eq!(ev.frames().collect::<Vec<_>>(), vec![0x1111, 0x2222]);
        assert!(RawEvent::decode(&bytes[..10]).is_none());
    }
}
