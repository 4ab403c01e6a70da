//! A process's resident memory by kind of region, from `/proc/PID/smaps`:
//! what it already held when recording started (its origin unseen). The
//! classes are what the mappings alone tell: the brk heap, 64 MiB-aligned
//! arenas (malloc's per-thread arenas; a Go heap's look the same), thread stacks (below a
//! guard page), the main stack, file mappings, shared memory, and the other
//! anonymous memory (large malloc blocks, runtimes' own heaps such as V8's).

use std::io::Read;

/// Largest smaps read (about 60k mappings).
const MAX_SMAPS_BYTES: u64 = 64 << 20;
/// glibc's HEAP_MAX_SIZE on 64-bit: each non-main arena reserves this, aligned to it.
const ARENA_SIZE: u64 = 64 << 20;

/// One region class's resident total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTotal {
    pub class: &'static str,
    pub rss_bytes: u64,
    pub mappings: u64,
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
/// when its smaps cannot be read.
pub fn resident_by_region(pid: u32) -> Option<Vec<RegionTotal>> {
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/smaps"))
        .ok()?
        .take(MAX_SMAPS_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    // A mapped file's name is the target's to choose: invalid UTF-8 is replaced, not fatal.
    Some(classify(&parse(&String::from_utf8_lossy(&bytes))))
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

fn classify(mappings: &[Mapping]) -> Vec<RegionTotal> {
    let mut totals: Vec<RegionTotal> = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        let guard_below = i > 0 && mappings[i - 1].end == m.start && mappings[i - 1].perms.starts_with("---");
        let reserve_above =
            mappings.get(i + 1).is_some_and(|n| n.start == m.end && n.perms.starts_with("---"));
        let class = match m.name.as_str() {
            "[heap]" => "malloc heap (brk)",
            "[stack]" => "main thread stack",
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => continue,
            name if name.starts_with("/dev/shm/")
                || name.starts_with("/memfd:")
                || name.starts_with("/SYSV")
                || name.starts_with("/dev/zero") =>
            {
                "shared memory"
            }
            name if name.starts_with('/') => "file mappings",
            _ if m.perms.starts_with("---") => continue, // reserved, never resident
            _ if m.start % ARENA_SIZE == 0 && (reserve_above || m.end - m.start == ARENA_SIZE) => {
                "64 MiB-aligned arenas (malloc's per-thread arenas)"
            }
            _ if guard_below && m.end - m.start <= 16 << 20 => "thread stacks",
            _ => "other anonymous (large malloc blocks, runtime heaps such as V8's)",
        };
        match totals.iter_mut().find(|t| t.class == class) {
            Some(t) => {
                t.rss_bytes += m.rss;
                t.mappings += 1;
            }
            None => totals.push(RegionTotal { class, rss_bytes: m.rss, mappings: 1 }),
        }
    }
    totals.retain(|t| t.rss_bytes > 0);
    totals.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.class.cmp(b.class)));
    totals
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

    #[test]
    fn regions_are_classed_by_what_the_mappings_tell() {
        let totals = classify(&parse(SMAPS));
        let by: Vec<(&str, u64, u64)> =
            totals.iter().map(|t| (t.class, t.rss_bytes / 1024, t.mappings)).collect();
        assert_eq!(
            by,
            [
                ("other anonymous (large malloc blocks, runtime heaps such as V8's)", 2048, 1),
                ("file mappings", 1008, 2),
                ("malloc heap (brk)", 132, 1),
                ("64 MiB-aligned arenas (malloc's per-thread arenas)", 100, 1),
                ("main thread stack", 24, 1),
                ("thread stacks", 16, 1),
            ]
        );
    }

    #[test]
    fn our_own_smaps_is_read() {
        let totals = resident_by_region(std::process::id()).unwrap();
        assert!(totals.iter().any(|t| t.class == "file mappings" && t.rss_bytes > 0), "{totals:?}");
    }
}
