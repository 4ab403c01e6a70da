//! JIT symbol maps (`/tmp/perf-<pid>.map`, written by `node --perf-basic-prof`
//! and other JITs): `START SIZE NAME` per line, hex.
//!
//! The file is written by the target and read by root, so it is handled as
//! hostile: opened inside the target's root with `openat2(RESOLVE_IN_ROOT)`
//! (a symlink cannot point out of it), regular files only, bounded in line
//! length and total size, malformed lines skipped and counted. It is read
//! incrementally as it grows and its entries are kept, so frames still
//! resolve after the target exits.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    sync::Arc,
};

/// Longest line accepted (longer ones are skipped).
const MAX_LINE: usize = 4096;
/// Most bytes read from one map in total.
const MAX_TOTAL: u64 = 256 << 20;

/// One process's JIT map, as read so far.
#[derive(Default)]
pub struct PerfMap {
    /// (start, end, name), sorted by start once `sorted` is set.
    entries: Vec<(u64, u64, Arc<str>)>,
    sorted: bool,
    offset: u64,
    partial: Vec<u8>,
    /// Lines that could not be parsed (or were too long).
    pub garbage_lines: u64,
    /// Whether a map file was found at all.
    pub found: bool,
}

impl PerfMap {
    /// Reads what was appended to the map of `pid` since the last call.
    pub fn refresh(&mut self, pid: u32) {
        let Some(mut file) = open_in_root(pid) else { return };
        self.found = true;
        if self.offset >= MAX_TOTAL || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if file.take(MAX_TOTAL - self.offset).read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.ingest(&buf);
    }

    /// Parses appended bytes (lines may be split across calls).
    fn ingest(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else {
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.garbage_lines += 1;
            }
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some(entry) => {
                    self.entries.push(entry);
                    self.sorted = false;
                }
                None => self.garbage_lines += 1,
            }
        }
    }

    /// The JIT function containing `addr`, if the map names it.
    pub fn lookup(&mut self, addr: u64) -> Option<Arc<str>> {
        if !self.sorted {
            self.entries.sort_by_key(|e| e.0);
            self.sorted = true;
        }
        let i = self.entries.partition_point(|e| e.0 <= addr);
        // Code can be moved and re-registered: the latest entry at an address wins.
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (addr >= *start && addr < *end).then(|| name.clone())
    }
}

fn parse_line(line: &[u8]) -> Option<(u64, u64, Arc<str>)> {
    if line.len() > MAX_LINE {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    if name.is_empty() || size == 0 || name.chars().any(|c| c.is_control()) {
        return None;
    }
    Some((start, start.checked_add(size)?, Arc::from(name)))
}

/// The pid of `pid` as its own PID namespace sees it (the number in the
/// map's file name): the last field of `NSpid`.
fn namespace_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
        })
        .unwrap_or(pid)
}

/// Opens `/tmp/perf-<nspid>.map` inside the target's root; every path
/// component, symlinks included, resolves within that root.
fn open_in_root(pid: u32) -> Option<File> {
    let path = format!("/tmp/perf-{}.map", namespace_pid(pid));
    let file = crate::files::target::open_in_root(pid, &path).ok()?;
    file.metadata().ok().filter(|m| m.is_file()).map(|_| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defensively_and_across_partial_writes() {
        let mut map = PerfMap::default();
        map.ingest(b"7f0000001000 40 LazyCompile:*retainResponse /app/server.js:2\n7f00000020");
        map.ingest(b"00 10 Builtin:Foo\nnot a line\n0x7f0000003000 8 X\n7f0000004000 0 zero\n");
        map.ingest(&[b'a'; MAX_LINE + 10]);
        assert_eq!(
            map.lookup(0x7f0000001010).as_deref(),
            Some("LazyCompile:*retainResponse /app/server.js:2")
        );
        assert_eq!(map.lookup(0x7f0000002005).as_deref(), Some("Builtin:Foo"));
        assert_eq!(map.lookup(0x7f0000003004).as_deref(), Some("X"));
        assert_eq!(map.lookup(0x7f0000001040), None);
        assert_eq!(map.garbage_lines, 3, "the bad line, the zero-size entry, the overlong line");
    }
}
