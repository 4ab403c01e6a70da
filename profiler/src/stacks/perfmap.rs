//! JIT symbol maps (`/tmp/perf-<pid>.map`, written by `node --perf-basic-prof`
//! and other JITs): `START SIZE NAME` per line, hex.
//!
//! The file is written by the target and read by root, so it is handled as
//! hostile: opened inside the target's root with `openat2(RESOLVE_IN_ROOT)`
//! (a symlink cannot point out of it), regular files only, bounded in line
//! length and total size, malformed lines skipped and counted. It is read
//! incrementally as it grows and its entries are kept, so frames still
//! resolve after the target exits.
//!
//! A JIT reuses code space: a later entry over the same addresses replaces
//! what an earlier one said about them. An address is named by the latest
//! entry written that covers it, never by an older one that something newer
//! has overwritten there, nor by one that does not reach it.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    sync::Arc,
};

/// Longest line accepted (longer ones are skipped).
const MAX_LINE: usize = 4096;
/// Most bytes read from one map in total; what lies beyond is counted, not read.
pub const MAX_TOTAL: u64 = 64 << 20;
/// Bytes read per step: the transient buffer never holds more.
const CHUNK: usize = 1 << 20;

/// One entry, 24 bytes; its name lives in [`PerfMap::names`].
#[derive(Clone, Copy)]
struct Entry {
    start: u64,
    size: u32,
    name_at: u32,
    name_len: u32,
    /// Its place in the order the map was written.
    written: u32,
}

impl Entry {
    fn covers(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < u64::from(self.size)
    }
}

/// Entries examined below an address for the latest one covering it: an
/// entry that starts further down and still covers it (a huge range, then
/// overwritten in pieces) is not looked for, which bounds a hostile map's cost.
const MAX_SCAN: usize = 64;

/// One process's JIT map, as read so far. Memory is bounded by
/// [`MAX_TOTAL`]: about 1.3 bytes per byte of map read (entries of 24 bytes
/// plus the names, stored once in one arena).
#[derive(Default)]
pub struct PerfMap {
    /// Sorted by start once `sorted` is set.
    entries: Vec<Entry>,
    names: String,
    sorted: bool,
    offset: u64,
    partial: Vec<u8>,
    /// Lines that could not be parsed (or were too long).
    pub garbage_lines: u64,
    /// Bytes of the map past [`MAX_TOTAL`], left unread.
    pub unread_bytes: u64,
    /// Whether a map file was found at all.
    pub found: bool,
}

impl PerfMap {
    /// Reads what was appended to the map of `pid` since the last call.
    pub fn refresh(&mut self, pid: u32) {
        let Some(mut file) = open_in_root(pid) else { return };
        self.found = true;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.unread_bytes = len.saturating_sub(MAX_TOTAL);
        if self.offset >= MAX_TOTAL || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = vec![0u8; CHUNK];
        while self.offset < MAX_TOTAL {
            let want = CHUNK.min((MAX_TOTAL - self.offset) as usize);
            match file.read(&mut chunk[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.offset += n as u64;
                    self.ingest(&chunk[..n]);
                }
            }
        }
    }

    /// Parses appended bytes (lines may be split across calls).
    pub fn ingest(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
                self.partial.extend_from_slice(rest);
                if self.partial.len() > MAX_LINE {
                    self.partial.clear();
                    self.garbage_lines += 1;
                }
                return;
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..newline]);
            self.add_line(&line);
            rest = &rest[newline + 1..];
        }
        let complete = match rest.iter().rposition(|b| *b == b'\n') {
            Some(last) => {
                let (complete, tail) = rest.split_at(last + 1);
                self.partial.extend_from_slice(tail);
                complete
            }
            None => {
                self.partial.extend_from_slice(rest);
                &[]
            }
        };
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
            self.garbage_lines += 1;
        }
        for line in complete.split(|b| *b == b'\n') {
            self.add_line(line);
        }
    }

    fn add_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        match parse_line(line) {
            Some((start, size, name)) => {
                let name_at = self.names.len() as u32;
                self.names.push_str(name);
                let written = self.entries.len() as u32;
                self.entries.push(Entry { start, size, name_at, name_len: name.len() as u32, written });
                self.sorted = false;
            }
            None => self.garbage_lines += 1,
        }
    }

    /// The JIT function at `addr`: the latest entry written that covers it.
    pub fn lookup(&mut self, addr: u64) -> Option<Arc<str>> {
        if !self.sorted {
            self.entries.sort_by_key(|e| e.start);
            self.sorted = true;
        }
        let below = self.entries.partition_point(|e| e.start <= addr);
        let e = self.entries[..below]
            .iter()
            .rev()
            .take(MAX_SCAN)
            .filter(|e| e.covers(addr))
            .max_by_key(|e| e.written)?;
        Some(Arc::from(&self.names[e.name_at as usize..(e.name_at + e.name_len) as usize]))
    }
}

/// `START SIZE NAME`: the start, the size (at most 4 GiB, as no function
/// is larger) and the name.
fn parse_line(line: &[u8]) -> Option<(u64, u32, &str)> {
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
    start.checked_add(size)?;
    Some((start, u32::try_from(size).ok()?, name))
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

    /// Code space reused: the latest entry over an address names it, an
    /// older one keeps only what nothing newer covers, and a range no entry
    /// covers any more is unnamed.
    #[test]
    fn the_latest_entry_over_an_address_names_it() {
        let mut map = PerfMap::default();
        map.ingest(b"1000 100 old\n");
        map.ingest(b"1080 10 newer\n"); // inside old
        map.ingest(b"0f00 180 moved\n"); // over old's first half
        map.ingest(b"2000 10 a\n2000 20 b\n"); // same start, later and longer
        let mut at = |addr| map.lookup(addr);
        assert_eq!(
            at(0x1010).as_deref(),
            Some("moved"),
            "the greatest start <= addr is old, but moved is newer"
        );
        assert_eq!(at(0x1085).as_deref(), Some("newer"), "moved ends at 0x1080");
        assert_eq!(at(0x10a0).as_deref(), Some("old"), "old's tail, past everything newer");
        assert_eq!(at(0x1100), None);
        assert_eq!(at(0x0f00).as_deref(), Some("moved"));
        assert_eq!(at(0x2018).as_deref(), Some("b"));
        assert_eq!(at(0x2008).as_deref(), Some("b"));
        let mut shrunk = PerfMap::default();
        shrunk.ingest(b"3000 100 big\n3000 10 small\n4000 10 far\n");
        assert_eq!(shrunk.lookup(0x3050).as_deref(), Some("big"), "small replaced only its own range");
        assert_eq!(shrunk.lookup(0x3005).as_deref(), Some("small"));
    }

    /// Peak resident memory of this process (VmHWM), bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb << 10
    }

    #[test]
    fn a_hostile_one_gib_map_costs_bounded_memory_and_its_excess_is_counted() {
        let pid = std::process::id();
        let path = format!("/tmp/perf-{}.map", namespace_pid(pid));
        let mut text = String::new();
        let mut i = 0u64;
        while (text.len() as u64) < MAX_TOTAL + (1 << 20) {
            use std::fmt::Write;
            let _ = writeln!(
                text,
                "{:x} 10 LazyCompile:*hostileFunctionName{i} /srv/app/some/long/path/file.js:{i}",
                0x7f00_0000_0000u64 + i * 16
            );
            i += 1;
        }
        std::fs::write(&path, &text).unwrap();
        drop(text);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(1 << 30).unwrap(); // sparse: a 1 GiB map
        let before = peak_rss();
        let mut map = PerfMap::default();
        map.refresh(pid);
        let grown = peak_rss().saturating_sub(before);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(map.unread_bytes, (1 << 30) - MAX_TOTAL);
        assert!(map.entries.len() > 500_000, "{} entries", map.entries.len());
        assert!(grown < 2 * MAX_TOTAL, "a {} MiB read cost {} MiB", MAX_TOTAL >> 20, grown >> 20);
        assert_eq!(
            map.lookup(0x7f00_0000_0000 + 16 * 7 + 3).as_deref(),
            Some("LazyCompile:*hostileFunctionName7 /srv/app/some/long/path/file.js:7")
        );
    }
}
