//! Reading a process's address space from `/proc/PID/maps`: which file (and
//! file offset) an address belongs to, where the C library is, and where the
//! heap ends.

use std::{io, path::Path};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    pub inode: u64,
    /// The pathname column: a file path, `[heap]`, `[vdso]`, ... or empty.
    pub name: String,
}

impl Mapping {
    /// The mapped file, when this maps a file (path as seen by the process).
    pub fn file(&self) -> Option<&str> {
        (self.name.starts_with('/') && self.inode != 0).then_some(self.name.as_str())
    }

    /// File offset of `addr`, which must lie inside this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// A snapshot of a process's mappings, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    pub mappings: Vec<Mapping>,
}

impl ProcessMaps {
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?))
    }

    pub fn parse(text: &str) -> Self {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// The path of the C library mapped into the process (glibc or musl).
    pub fn libc(&self) -> Option<&str> {
        self.mappings.iter().filter_map(Mapping::file).find(|p| is_libc(Path::new(p)))
    }

    /// Whether the C library's code is mapped (the loader maps a library in
    /// steps: first a read-only reservation, then its segments).
    pub fn libc_code_mapped(&self) -> bool {
        self.mappings.iter().any(|m| m.executable && m.file().is_some_and(|p| is_libc(Path::new(p))))
    }

    /// Whether no dynamic loader is mapped: a statically linked program.
    pub fn is_static(&self) -> bool {
        !self.mappings.iter().filter_map(Mapping::file).any(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.starts_with("ld-linux") || name.starts_with("ld-musl") || name.starts_with("ld.so")
        })
    }

    /// The end of the `[heap]` mapping: the program break, page-rounded.
    pub fn heap_end(&self) -> Option<u64> {
        self.mappings.iter().find(|m| m.name == "[heap]").map(|m| m.end)
    }
}

/// glibc's `libc.so.6` (or `libc-2.xx.so`), or musl's loader-and-libc.
pub fn is_libc(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("libc.so")
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || name.starts_with("ld-musl-")
        || name.starts_with("libc.musl-")
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset, _dev, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let name = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 123 /usr/bin/demo
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:00 123 /usr/bin/demo
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000028000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001a0000-7f00001a4000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_and_finds_addresses() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.mappings.len(), 7);
        let m = maps.find(0x7f0000028010).unwrap();
        assert!(m.executable);
        assert_eq!(m.file(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(m.file_offset(0x7f0000028010), 0x28010);
        assert!(maps.find(0x7f00001a4000).is_none());
        assert_eq!(maps.find(0x7f00001a0000).unwrap().file(), None);
        assert_eq!(maps.find(0x7ffd00000001).unwrap().name, "[vdso]");
    }

    #[test]
    fn finds_libc_and_heap_end() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.libc(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(maps.heap_end(), Some(0x55d0c1021000));
        assert!(is_libc(Path::new("/lib/ld-musl-x86_64.so.1")));
        assert!(!is_libc(Path::new("/usr/lib/libcrypto.so.3")));
    }
}
