//! A process's resident memory by kind of region, from `/proc/PID/smaps`:
//! what it already held when recording started (its origin unseen). The
//! mappings alone tell the brk heap, 64 MiB-aligned arenas (malloc's
//! per-thread arenas; a Go heap's look the same), thread stacks (below a
//! guard page), the main stack, file mappings and shared memory. Anonymous
//! mappings are told apart by the first bytes of what they hold:
//! V8's heap pages (each begins with its page header) and malloc's large
//! blocks (each its own mapping, beginning with its chunk header); the
//! rest is other anonymous memory. V8's page headers also give the bytes V8
//! counts as in use (its `heapUsed`), summed in [`RegionTotal::in_use_bytes`].

use std::io::Read;

/// Largest smaps read (about 60k mappings).
const MAX_SMAPS_BYTES: u64 = 64 << 20;
/// glibc's HEAP_MAX_SIZE on 64-bit: each non-main arena reserves this, aligned to it.
const ARENA_SIZE: u64 = 64 << 20;
/// V8's page size and alignment (`kPageSize`, 256 KiB on 64-bit targets);
/// large-object pages have the alignment and any size.
const V8_PAGE: u64 = 256 << 10;
/// Most headers read per mapping (mappings the kernel merged from adjacent pages or blocks).
const MAX_HEADERS_PER_MAPPING: usize = 4096;
/// Most headers read per process (a process may have 65530 mappings).
const MAX_HEADER_READS: usize = 1 << 16;
/// Words of a region's first bytes looked at.
const HEADER_WORDS: usize = 12;

/// What a resident region is, as far as its mapping and its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegionClass {
    V8Young,
    V8Old,
    LargeMallocBlocks,
    Brk,
    Arenas,
    OtherAnonymous,
    Unexamined,
    ThreadStacks,
    MainStack,
    FileMappings,
    SharedMemory,
}

impl RegionClass {
    pub fn label(self) -> &'static str {
        match self {
            Self::V8Young => "V8 heap, young generation (new objects)",
            Self::V8Old => "V8 heap, old generation (old objects, code, large objects)",
            Self::LargeMallocBlocks => {
                "large malloc blocks (each its own mapping; node's large ArrayBuffers among them)"
            }
            Self::Brk => "malloc heap (brk)",
            Self::Arenas => "64 MiB-aligned arenas (malloc's per-thread arenas)",
            Self::OtherAnonymous => "other anonymous",
            Self::Unexamined => "anonymous, not examined (past the 65536 headers read per process)",
            Self::ThreadStacks => "thread stacks",
            Self::MainStack => "main thread stack",
            Self::FileMappings => "file mappings",
            Self::SharedMemory => "shared memory",
        }
    }
}

/// One region class's resident total; `mappings` counts the mappings with
/// bytes in the class (a mapping shared between classes counts in each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTotal {
    pub class: RegionClass,
    pub rss_bytes: u64,
    pub mappings: u64,
    /// V8's pages: the bytes V8 counts as in use in them (objects and
    /// garbage not yet collected, as `heapUsed`; the young generation's
    /// semispaces count none, see `v8_page`); 0 for other classes.
    pub in_use_bytes: u64,
}

/// The bytes V8 counts as in use in its heap (`process.memoryUsage().heapUsed`
/// less the young generation's semispaces; every isolate's), from the page
/// headers found; `None` when part of the anonymous memory was not examined.
pub fn v8_heap_in_use(totals: &[RegionTotal]) -> Option<u64> {
    if totals.iter().any(|t| t.class == RegionClass::Unexamined) {
        return None;
    }
    Some(
        totals
            .iter()
            .filter(|t| matches!(t.class, RegionClass::V8Young | RegionClass::V8Old))
            .map(|t| t.in_use_bytes)
            .sum(),
    )
}

/// A region recognised by its first bytes: its length, class and the bytes in use in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    len: u64,
    class: RegionClass,
    in_use: u64,
}

#[derive(Clone, Debug, Default)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    name: String,
    rss: u64,
}

/// The process's resident memory by region class, largest first; `None`
/// when its smaps cannot be read. Anonymous mappings' first bytes are read
/// from the process's memory (a few words per mapping).
pub fn resident_by_region(pid: u32) -> Option<Vec<RegionTotal>> {
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/smaps"))
        .ok()?
        .take(MAX_SMAPS_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    // Only a resident page is read: nothing is swapped in or faulted (a
    // page a userfaultfd handler would have to provide is never asked for).
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok();
    let resident = |addr: u64| {
        let mut entry = [0u8; 8];
        pagemap.as_ref().is_some_and(|f| {
            std::os::unix::fs::FileExt::read_exact_at(f, &mut entry, addr / 4096 * 8).is_ok()
                && u64::from_le_bytes(entry) & 1 << 63 != 0
        })
    };
    let mut read = |addr: u64| {
        let mut buf = [0u8; HEADER_WORDS * 8];
        (resident(addr) && super::read_memory(pid, addr, &mut buf))
            .then(|| std::array::from_fn(|i| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap())))
    };
    // A mapped file's name is the target's to choose: invalid UTF-8 is replaced, not fatal.
    Some(classify(&parse(&String::from_utf8_lossy(&bytes)), &mut read, MAX_HEADER_READS))
}

fn parse(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else {
                continue;
            };
            let perms = fields.get(1).copied().unwrap_or_default().to_string();
            let name = fields.get(5..).map(|rest| rest.join(" ")).unwrap_or_default();
            out.push(Mapping { start, end, perms, name, rss: 0 });
        } else if *first == "Rss:" {
            if let (Some(m), Some(kb)) = (out.last_mut(), fields.get(1).and_then(|v| v.parse::<u64>().ok())) {
                m.rss = kb * 1024;
            }
        }
    }
    out
}

type Header = [u64; HEADER_WORDS];

/// A V8 heap page, recognised by its header (`MemoryChunk`'s fields, whose
/// order moves between V8 versions, so found by their relations): the
/// page's size, then the `Heap*`, the object area's start just past the
/// header and its end at (or, on a large page, just before) the page's
/// end. The flags word is the header's remaining small word; its
/// `FROM_PAGE`/`TO_PAGE` bits (3 and 4, stable since V8 7) mark the young
/// generation. Checked on node 20 (V8 11.3) and node 22 (V8 12.4).
///
/// The bytes in use are the page's `allocated_bytes`, the word after the
/// area's end in both: on an old-generation page (old objects, code) V8's
/// `SizeOfObjects` plus the unused part of the current allocation buffer,
/// on a large object's page the object. The young generation's semispace
/// pages count their whole area whatever they hold (nor is their
/// high-water mark reset by a full GC), so their use is not known here
/// and they count none: a young object that lives is soon promoted.
fn v8_page(start: u64, w: &Header) -> Option<Region> {
    const YOUNG: u64 = 1 << 3 | 1 << 4;
    const LARGE_PAGE: u64 = 1 << 7;
    let user_pointer = |v: u64| v != 0 && v.is_multiple_of(8) && v < 1 << 47;
    for k in 2..HEADER_WORDS - 1 {
        let (heap, area_start, area_end) = (w[k - 1], w[k], w[k + 1]);
        if !(area_start > start && area_start - start < 64 << 10 && area_end > area_start) {
            continue;
        }
        if !user_pointer(heap) || (start..area_end).contains(&heap) {
            continue;
        }
        // The page's end is at or just past the area's: of the words that
        // could be its size, the one ending nearest to it.
        let Some(size) = w[..k - 1]
            .iter()
            .copied()
            .filter(|&size| size >= 4096 && size.is_multiple_of(4096))
            .filter_map(|size| Some((size, start.checked_add(size)?.checked_sub(area_end)?)))
            .filter(|(_, past_area)| *past_area < 64 << 10)
            .min_by_key(|(_, past_area)| *past_area)
            .map(|(size, _)| size)
        else {
            continue;
        };
        let mut rest = w[..k - 1].iter().filter(|&&v| v != size && v != start);
        let flags = match (rest.next(), rest.next()) {
            (Some(&flags), None) => flags,
            _ => continue,
        };
        let young = flags & YOUNG != 0;
        let allocated = w.get(k + 2).copied().filter(|&a| a <= area_end - area_start).unwrap_or(0);
        // A young large object's page is V8's size or more (flag 0x80 on node 20 and 22).
        let semispace = young && size == V8_PAGE && flags & LARGE_PAGE == 0;
        let in_use = if semispace { 0 } else { allocated };
        let class = if young { RegionClass::V8Young } else { RegionClass::V8Old };
        return Some(Region { len: size, class, in_use });
    }
    None
}

/// A block malloc mapped on its own (`IS_MMAPPED`): `prev_size` holds the
/// block's offset in the mapping, `size` (page-rounded) the rest of it.
fn malloc_block(start: u64, w: &Header) -> Option<Region> {
    const IS_MMAPPED: u64 = 2;
    const FLAGS: u64 = 7;
    let (offset, size) = (w[0], w[1] & !FLAGS);
    let end = start.checked_add(offset)?.checked_add(size)?;
    (w[1] & FLAGS == IS_MMAPPED && offset < 4096 && size >= 4096 && end.is_multiple_of(4096))
        .then_some(Region { len: offset + size, class: RegionClass::LargeMallocBlocks, in_use: 0 })
}

/// The regions from `start` (up to `end`) recognised by `recognise`,
/// region after region, summed by class (`len` the bytes in the mapping);
/// empty if the first is not one.
fn recognised_bytes(
    start: u64,
    end: u64,
    read: &mut dyn FnMut(u64) -> Result<Option<Header>, ()>,
    recognise: fn(u64, &Header) -> Option<Region>,
    align: u64,
) -> Result<Vec<Region>, ()> {
    let mut found: Vec<Region> = Vec::new();
    let mut at = start;
    for _ in 0..MAX_HEADERS_PER_MAPPING {
        if at >= end {
            break;
        }
        let Some(region) = read(at)?.and_then(|w| recognise(at, &w)) else { break };
        let len = region.len.min(end - at);
        match found.iter_mut().find(|r| r.class == region.class) {
            Some(total) => {
                total.len += len;
                total.in_use += region.in_use;
            }
            None => found.push(Region { len, ..region }),
        }
        match at.checked_add(region.len).and_then(|next| next.checked_next_multiple_of(align)) {
            Some(next) => at = next,
            None => break,
        }
    }
    Ok(found)
}

/// The resident totals by class of `mappings`, reading at most `max_reads`
/// headers with `read` (the mappings past that are [`RegionClass::Unexamined`]).
fn classify(
    mappings: &[Mapping],
    read: &mut dyn FnMut(u64) -> Option<Header>,
    max_reads: usize,
) -> Vec<RegionTotal> {
    let mut totals: Vec<RegionTotal> = Vec::new();
    let mut add = |class: RegionClass, rss_bytes: u64, in_use_bytes: u64| match totals
        .iter_mut()
        .find(|t| t.class == class)
    {
        Some(t) => {
            t.rss_bytes += rss_bytes;
            t.mappings += 1;
            t.in_use_bytes += in_use_bytes;
        }
        None => totals.push(RegionTotal { class, rss_bytes, mappings: 1, in_use_bytes }),
    };
    let mut reads = 0;
    let mut read = |addr: u64| {
        reads += 1;
        if reads > max_reads {
            return Err(());
        }
        Ok(read(addr))
    };
    for (i, m) in mappings.iter().enumerate() {
        let guard_below = i > 0 && mappings[i - 1].end == m.start && mappings[i - 1].perms.starts_with("---");
        let reserve_above =
            mappings.get(i + 1).is_some_and(|n| n.start == m.end && n.perms.starts_with("---"));
        let class = match m.name.as_str() {
            _ if m.rss == 0 => continue, // reserved, or never touched
            "[heap]" => RegionClass::Brk,
            "[stack]" => RegionClass::MainStack,
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => continue,
            name if name.starts_with("/dev/shm/")
                || name.starts_with("/memfd:")
                || name.starts_with("/SYSV")
                || name.starts_with("/dev/zero") =>
            {
                RegionClass::SharedMemory
            }
            name if name.starts_with('/') => RegionClass::FileMappings,
            _ => {
                // What its first bytes say goes first: a V8 page may sit where an arena would.
                let Ok(recognised) = recognise(m, &mut read) else {
                    add(RegionClass::Unexamined, m.rss, 0);
                    continue;
                };
                if recognised.is_empty() {
                    if m.start % ARENA_SIZE == 0 && (reserve_above || m.end - m.start == ARENA_SIZE) {
                        RegionClass::Arenas
                    } else if guard_below && m.end - m.start <= 16 << 20 {
                        RegionClass::ThreadStacks
                    } else {
                        RegionClass::OtherAnonymous
                    }
                } else {
                    // Resident pages are taken as spread evenly over the mapping.
                    let len = m.end.saturating_sub(m.start).max(1);
                    let mut rest = m.rss;
                    for region in recognised {
                        let part = ((m.rss as u128 * region.len as u128 / len as u128) as u64).min(rest);
                        add(region.class, part, region.in_use);
                        rest -= part;
                    }
                    if rest > 0 {
                        add(RegionClass::OtherAnonymous, rest, 0);
                    }
                    continue;
                }
            }
        };
        add(class, m.rss, 0);
    }
    totals.retain(|t| t.rss_bytes > 0);
    totals.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.class.cmp(&b.class)));
    totals
}

/// The bytes of anonymous mapping `m` recognised by their headers (V8's
/// pages, else malloc's blocks), by class; `Err` when the reads allowed are spent.
fn recognise(
    m: &Mapping,
    read: &mut dyn FnMut(u64) -> Result<Option<Header>, ()>,
) -> Result<Vec<Region>, ()> {
    let mut recognised = Vec::new();
    if m.start.is_multiple_of(V8_PAGE) {
        recognised = recognised_bytes(m.start, m.end, read, v8_page, V8_PAGE)?;
    }
    if recognised.is_empty() {
        recognised = recognised_bytes(m.start, m.end, read, malloc_block, 4096)?;
    }
    Ok(recognised)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
555555554000-555555556000 r-xp 00000000 08:01 1234                       /usr/bin/demo
Rss:                   8 kB
555555560000-555555581000 rw-p 00000000 00:00 0                          [heap]
Rss:                 132 kB
7ffff0000000-7ffff0021000 rw-p 00000000 00:00 0 
Rss:                 100 kB
7ffff0021000-7ffff4000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7ffff6000000-7ffff6001000 ---p 00000000 00:00 0 
Rss:                   0 kB
7ffff6001000-7ffff6801000 rw-p 00000000 00:00 0 
Rss:                  16 kB
7ffff7000000-7ffff7200000 rw-p 00000000 00:00 0 
Rss:                2048 kB
7ffff7d80000-7ffff7f00000 r-xp 00028000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1000 kB
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0                          [vvar]
Rss:                   0 kB
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
Rss:                  24 kB
";

    fn header(words: &[u64]) -> Header {
        let mut h = [0; HEADER_WORDS];
        h[..words.len()].copy_from_slice(words);
        h
    }

    fn summary(totals: &[RegionTotal]) -> Vec<(RegionClass, u64, u64)> {
        totals.iter().map(|t| (t.class, t.rss_bytes / 1024, t.mappings)).collect()
    }

    #[test]
    fn regions_are_classed_by_what_the_mappings_tell() {
        let totals = classify(&parse(SMAPS), &mut |_| None, MAX_HEADER_READS);
        assert_eq!(
            summary(&totals),
            [
                (RegionClass::OtherAnonymous, 2048, 1),
                (RegionClass::FileMappings, 1008, 2),
                (RegionClass::Brk, 132, 1),
                (RegionClass::Arenas, 100, 1),
                (RegionClass::MainStack, 24, 1),
                (RegionClass::ThreadStacks, 16, 1),
            ]
        );
    }

    /// Page headers as node 20 (V8 11.3) and node 22 (V8 12.4) lay them
    /// out, read from running processes: new-space pages (to-space 0x12 or
    /// 0x8012, from-space 0xa), old-space pages (0x4, 0x204), node 20's
    /// large-object pages (0x84, its area ending before the page does; 0x92
    /// young). The bytes in use summed per space matched
    /// `v8.getHeapSpaceStatistics()` there, to the byte after a GC.
    #[test]
    fn v8_pages_are_recognised_by_their_headers_in_both_layouts() {
        let node20 =
            |start: u64, size: u64, flags: u64, area_end: u64, allocated: u64, high_water_mark: u64| {
                header(&[
                    size,
                    flags,
                    0x3d69_c040,
                    start + 0x1148,
                    start + area_end,
                    allocated,
                    0,
                    high_water_mark,
                    0x3d66_f1c8,
                ])
            };
        let page = |len: u64, class: RegionClass, in_use: u64| Some(Region { len, class, in_use });
        let p = 0x11ce_9fc0_0000;
        let young = RegionClass::V8Young;
        assert_eq!(v8_page(p, &node20(p, 0x40000, 0x12, 0x40000, 0x3eeb8, 0x20000)), page(0x40000, young, 0));
        assert_eq!(v8_page(p, &node20(p, 0x40000, 0xa, 0x40000, 0x3eeb8, 0x3fff8)), page(0x40000, young, 0));
        let old = RegionClass::V8Old;
        assert_eq!(
            v8_page(p, &node20(p, 0x40000, 0x4, 0x40000, 0x3d000, 0x3fff8)),
            page(0x40000, old, 0x3d000)
        );
        assert_eq!(
            v8_page(p, &node20(p, 0x65000, 0x84, 0x64690, 0x63548, 0x1148)),
            page(0x65000, old, 0x63548)
        );
        // Counts past the area are not believed.
        assert_eq!(v8_page(p, &node20(p, 0x40000, 0x4, 0x40000, 0x50000, 0x3fff8)), page(0x40000, old, 0));
        let node22 = |start: u64, flags: u64, allocated: u64, high_water_mark: u64| {
            header(&[
                flags,
                start,
                0x40000,
                0x2493_0ea0,
                start + 0x1140,
                start + 0x40000,
                allocated,
                0,
                high_water_mark,
                0x2487_7818,
            ])
        };
        let p = 0x004f_70f0_0000;
        assert_eq!(v8_page(p, &node22(p, 0x8012, 0x3eec0, 0x40000)), page(0x40000, young, 0));
        // A young large object (new large-object space, node 20) is counted, of V8's page size too.
        assert_eq!(
            v8_page(p, &node20(p, 0x2f4000, 0x92, 0x2f4000, 0x2f2eb8, 0)),
            page(0x2f4000, young, 0x2f2eb8)
        );
        assert_eq!(v8_page(p, &node20(p, 0x40000, 0x92, 0x40000, 0x3e000, 0)), page(0x40000, young, 0x3e000));
        assert_eq!(v8_page(p, &node22(p, 0x800a, 0x3eec0, 0x40000)), page(0x40000, young, 0));
        assert_eq!(v8_page(p, &node22(p, 0x204, 0x3e000, 0x3fff8)), page(0x40000, old, 0x3e000));
        // Not a page: JS objects (tagged pointers), malloc's chunk header, zeros.
        let objects = header(&[0x1e31_f063_dff1, 0x1e31_f063_e019, 0x1e31_f063_e041, 0x1e31_f063_e069]);
        assert_eq!(v8_page(p, &objects), None);
        assert_eq!(v8_page(p, &header(&[0, 0x41002])), None);
        assert_eq!(v8_page(p, &[0; HEADER_WORDS]), None);
        // The area's end past the page's: not a page.
        assert_eq!(v8_page(p, &node20(p, 0x40000, 0x4, 0x50000, 0, 0)), None);
    }

    #[test]
    fn malloc_blocks_mapped_on_their_own_are_recognised() {
        assert_eq!(
            malloc_block(0x7f00_0000_0000, &header(&[0, 0x41002])),
            Some(Region { len: 0x41000, class: RegionClass::LargeMallocBlocks, in_use: 0 })
        );
        assert_eq!(
            malloc_block(0x7f00_0000_0000, &header(&[0x10, 0x40ff2])),
            Some(Region { len: 0x41000, class: RegionClass::LargeMallocBlocks, in_use: 0 })
        );
        // In an arena (NON_MAIN_ARENA), not mapped, or not page-rounded.
        assert_eq!(malloc_block(0x7f00_0000_0000, &header(&[0, 0x41006])), None);
        assert_eq!(malloc_block(0x7f00_0000_0000, &header(&[0, 0x41001])), None);
        assert_eq!(malloc_block(0x7f00_0000_0000, &header(&[0, 0x41012])), None);
    }

    /// A mapping the kernel merged from two adjacent V8 pages and a mapping
    /// whose first page is V8's and the rest not: resident bytes are
    /// shared by the bytes recognised.
    #[test]
    fn merged_mappings_are_shared_by_what_their_headers_tell() {
        let smaps = "\
100000000000-100000080000 rw-p 00000000 00:00 0 
Rss:                 512 kB
200000000000-200000080000 rw-p 00000000 00:00 0 
Rss:                 512 kB
300000000000-300000041000 rw-p 00000000 00:00 0 
Rss:                 260 kB
";
        let page = |start: u64, flags: u64| {
            header(&[0x40000, flags, 0x5000, start + 0x1148, start + 0x40000, 0x3eeb8, 0, 0x2148])
        };
        let mut read = |addr: u64| match addr {
            0x1000_0000_0000 => Some(page(addr, 0x12)),
            0x1000_0004_0000 => Some(page(addr, 0x4)),
            0x2000_0000_0000 => Some(page(addr, 0x4)),
            0x3000_0000_0000 => Some(header(&[0, 0x41002])),
            _ => Some([0; HEADER_WORDS]),
        };
        let totals = classify(&parse(smaps), &mut read, MAX_HEADER_READS);
        assert_eq!(
            summary(&totals),
            [
                (RegionClass::V8Old, 512, 2),
                (RegionClass::LargeMallocBlocks, 260, 1),
                (RegionClass::V8Young, 256, 1),
                (RegionClass::OtherAnonymous, 256, 1),
            ],
            "the merged pages classed page by page; the half-V8 mapping split"
        );
        assert_eq!(
            v8_heap_in_use(&totals),
            Some(2 * 0x3eeb8),
            "two old pages; the semispace page counts none"
        );
    }

    /// The first bytes are the target's to choose: extreme values are not
    /// pages, and nothing overflows.
    #[test]
    fn hostile_headers_are_not_regions() {
        let smaps = "\
7fffffffc0000-7ffffffffff00 rw-p 00000000 00:00 0 
Rss:                 256 kB
";
        let start = 0x7_ffff_fffc_0000;
        for words in [
            [u64::MAX; HEADER_WORDS],
            header(&[u64::MAX - 4095, 0, 0x5000, start + 0x1148, start + 0x40000]),
            header(&[0x40000, 0, 0x5000, start + 0x1148, u64::MAX]),
            header(&[0xfff, !7 | 2]),
        ] {
            let totals = classify(&parse(smaps), &mut |_| Some(words), MAX_HEADER_READS);
            assert_eq!(summary(&totals), [(RegionClass::OtherAnonymous, 256, 1)], "{words:x?}");
        }
        // A page claiming the rest of the address space ends the walk.
        let huge = header(&[!4095, 0, 0x5000, start + 0x1148, start + 0x40000]);
        assert_eq!(v8_page(start, &huge), None);
    }

    /// Headers are read before the mapping's shape decides: a V8 page where
    /// an arena could be is V8's. Past the reads allowed, mappings are
    /// reported as not examined, not guessed.
    #[test]
    fn headers_go_first_and_the_reads_are_bounded() {
        let smaps = "\
7f0004000000-7f0004040000 rw-p 00000000 00:00 0 
Rss:                 256 kB
7f0004040000-7f0008000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0010000000-7f0010001000 rw-p 00000000 00:00 0 
Rss:                   4 kB
";
        let page = |start: u64| header(&[0x40000, 0x4, 0x5000, start + 0x1148, start + 0x40000]);
        let mut read =
            |addr: u64| Some(if addr == 0x7f00_0400_0000 { page(addr) } else { [0; HEADER_WORDS] });
        let totals = classify(&parse(smaps), &mut read, MAX_HEADER_READS);
        assert_eq!(summary(&totals), [(RegionClass::V8Old, 256, 1), (RegionClass::OtherAnonymous, 4, 1)]);
        let totals = classify(&parse(smaps), &mut read, 1);
        assert_eq!(summary(&totals), [(RegionClass::V8Old, 256, 1), (RegionClass::Unexamined, 4, 1)]);
        assert_eq!(v8_heap_in_use(&totals), None, "part of the memory not examined: V8's use unknown");
    }

    #[test]
    fn our_own_smaps_is_read() {
        let totals = resident_by_region(std::process::id()).unwrap();
        assert!(totals.iter().any(|t| t.class == RegionClass::FileMappings && t.rss_bytes > 0), "{totals:?}");
    }
}
