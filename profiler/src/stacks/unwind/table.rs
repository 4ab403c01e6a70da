//! A module's call-frame information (its `.eh_frame` and `.debug_frame`,
//! and its separate debug file's when given) as the kernel walker's rows: for each code range, where the caller's frame
//! starts (CFA from `rsp` or `rbp` plus an offset) and where the caller's
//! `rbp` was saved. Gaps between functions become [`rule::NO_CFI`] rows, so
//! code without information is walked by its frame pointer rather than with
//! the rule of the function before it.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, Reader, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, ReadRef};
use profiler_common::unwind::{rule, Row};

/// One module's rows, sorted by `pc` (an offset from `base`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleTable {
    /// Virtual address (in the module's own address space) of `pc` 0.
    pub base: u64,
    pub rows: Vec<Row>,
    /// Rows with a rule the kernel walker does not follow (signal frames,
    /// DWARF expressions): a walk reaching one stops there, marked.
    pub unsupported_rows: usize,
    /// Bytes of code the call-frame information describes, and the size of
    /// `.text`: code built without unwind tables leaves most of it bare.
    pub covered: u64,
    pub text_size: u64,
}

impl ModuleTable {
    /// Whether the module's own information leaves most of its code bare,
    /// so its separate debug file should be looked for.
    pub fn mostly_bare(&self) -> bool {
        self.covered * 2 < self.text_size
    }
}

/// Why a module has no table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTable {
    /// Neither `.eh_frame` nor `.debug_frame`: walked by frame pointers.
    NoCallFrameInfo,
    /// The file is not an ELF object we can read.
    Unreadable(String),
    /// The call-frame information does not parse.
    Malformed(String),
    /// The code spans more than 4 GiB (rows hold 32-bit offsets).
    TooLarge,
}

impl std::fmt::Display for NoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCallFrameInfo => write!(f, "no call-frame information"),
            Self::Unreadable(e) => write!(f, "unreadable: {e}"),
            Self::Malformed(e) => write!(f, "malformed call-frame information: {e}"),
            Self::TooLarge => write!(f, "code spans more than 4 GiB"),
        }
    }
}

/// A row's rule before offsets are made relative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    rule: u8,
    cfa_offset: u16,
    rbp_offset: i8,
}

/// Code `start..start + len` and its rule: 16 bytes, as a large module
/// (node: about 450k of them) holds them all while its table is built.
#[derive(Clone, Copy, Debug)]
struct Range {
    start: u64,
    len: u32,
    rule: Rule,
}

impl Range {
    fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

const NO_CFI: Rule = Rule { rule: rule::NO_CFI, cfa_offset: 0, rbp_offset: 0 };
const UNSUPPORTED: Rule = Rule { rule: rule::UNSUPPORTED, cfa_offset: 0, rbp_offset: 0 };

/// Builds the table of the ELF module `data` (any [`ReadRef`]: a file read
/// lazily reads only headers and the frame sections) from its `.eh_frame`
/// and `.debug_frame` together: code built without unwind tables has only
/// the latter, next to the C runtime's `.eh_frame` entries.
pub fn build<'a, R: ReadRef<'a>>(data: R) -> Result<ModuleTable, NoTable> {
    let file = parse(data)?;
    let mut ranges = Vec::new();
    frame_ranges(&file, &mut ranges)?;
    rows_of(ranges, text_size(&file))
}

/// [`build`], adding the call-frame information of the module's separate
/// debug file `debug` (`.gnu_debuglink` / build id). A debug file whose build
/// id differs from the module's is refused.
pub fn build_with_debug_file<'a, 'b, R: ReadRef<'a>, D: ReadRef<'b>>(
    data: R,
    debug: D,
) -> Result<ModuleTable, NoTable> {
    let file = parse(data)?;
    let debug = parse(debug)?;
    if let (Ok(Some(a)), Ok(Some(b))) = (file.build_id(), debug.build_id()) {
        if a != b {
            return Err(NoTable::Unreadable("the debug file's build id differs from the module's".into()));
        }
    }
    let mut ranges = Vec::new();
    frame_ranges(&file, &mut ranges)?;
    frame_ranges(&debug, &mut ranges)?;
    rows_of(ranges, text_size(&file))
}

/// Where a module's separate debug file may be, as paths in the target's
/// file system: by build id under `/usr/lib/debug/.build-id/`, then by its
/// `.gnu_debuglink` name beside the module, in `.debug/` beside it and under
/// `/usr/lib/debug` (gdb's order). `module_path` is the module's path.
pub fn debug_file_candidates<'a, R: ReadRef<'a>>(data: R, module_path: &str) -> Vec<String> {
    let Ok(file) = parse(data) else { return Vec::new() };
    let mut paths = Vec::new();
    if let Ok(Some(id)) = file.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            paths.push(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name);
        // A name with a path in it could point anywhere: only plain names.
        if !name.contains('/') && !name.is_empty() {
            let dir = module_path.rsplit_once('/').map_or("", |(dir, _)| dir);
            paths.push(format!("{dir}/{name}"));
            paths.push(format!("{dir}/.debug/{name}"));
            paths.push(format!("/usr/lib/debug{dir}/{name}"));
        }
    }
    paths
}

fn parse<'a, R: ReadRef<'a>>(data: R) -> Result<object::File<'a, R>, NoTable> {
    object::File::parse(data).map_err(|e| NoTable::Unreadable(e.to_string()))
}

fn text_size<'a, R: ReadRef<'a>>(file: &object::File<'a, R>) -> u64 {
    file.section_by_name(".text").map_or(0, |s| s.size())
}

/// Adds the rows of `file`'s `.eh_frame` and `.debug_frame` to `ranges`.
fn frame_ranges<'a, R: ReadRef<'a>>(
    file: &object::File<'a, R>,
    ranges: &mut Vec<Range>,
) -> Result<(), NoTable> {
    // A debug file keeps section headers of stripped sections with no data.
    let with_data = |name: &str| {
        file.section_by_name(name)
            .filter(|s| s.kind() != object::SectionKind::UninitializedData)
            .and_then(|s| Some((s.address(), s.data().ok().filter(|d| !d.is_empty())?)))
    };
    if let Some((address, bytes)) = with_data(".eh_frame") {
        let mut bases = BaseAddresses::default().set_eh_frame(address);
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        collect(&EhFrame::new(bytes, gimli::LittleEndian), &bases, ranges)?;
    }
    if let Some((_, bytes)) = with_data(".debug_frame") {
        let mut frame = DebugFrame::new(bytes, gimli::LittleEndian);
        frame.set_address_size(8);
        collect(&frame, &BaseAddresses::default(), ranges)?;
    }
    Ok(())
}

/// (start, end, rule) of every row of every FDE in `section`.
fn collect<R: Reader<Offset = usize>, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    ranges: &mut Vec<Range>,
) -> Result<(), NoTable> {
    let malformed = |e: gimli::Error| NoTable::Malformed(e.to_string());
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(malformed)? {
        let CieOrFde::Fde(partial) = entry else { continue };
        // A broken FDE loses its function, not the module.
        let Ok(fde) = partial.parse(S::cie_from_offset) else { continue };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else { continue };
        // Rows that differ only in registers the walker does not restore are
        // one range (most of a prologue's pushes): fewer to hold and sort.
        let mut open: Option<Range> = None;
        while let Ok(Some(row)) = table.next_row() {
            let (start, end) = (row.start_address(), row.end_address());
            // No function spans 4 GiB: such a row is malformed.
            let Some(len) = end.checked_sub(start).and_then(|l| u32::try_from(l).ok()).filter(|l| *l > 0)
            else {
                continue;
            };
            let rule = rule_of(section, row);
            match &mut open {
                Some(last)
                    if last.end() == start && last.rule == rule && last.len.checked_add(len).is_some() =>
                {
                    last.len += len
                }
                _ => ranges.extend(open.replace(Range { start, len, rule })),
            }
        }
        ranges.extend(open);
    }
    Ok(())
}

fn rule_of<R: Reader<Offset = usize>, S: UnwindSection<R>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Rule { rule: rule::END, cfa_offset: 0, rbp_offset: 0 },
        Some(RegisterRule::Offset(-8)) | None => {}
        _ => return UNSUPPORTED,
    }
    let (base, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (rule::CFA_RSP, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (rule::CFA_RBP, *offset)
        }
        CfaRule::Expression(expr) => {
            let is_plt = expr
                .get(section)
                .ok()
                .and_then(|e| e.0.to_slice().ok().map(|b| is_plt_expression(&b)))
                .unwrap_or(false);
            return if is_plt { Rule { rule: rule::PLT, cfa_offset: 0, rbp_offset: 0 } } else { UNSUPPORTED };
        }
        _ => return UNSUPPORTED,
    };
    let Ok(cfa_offset) = u16::try_from(offset) else { return UNSUPPORTED };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(n)) if n % 8 == 0 && n != 0 => match i8::try_from(n / 8) {
            Ok(n) => n,
            Err(_) => return UNSUPPORTED,
        },
        _ => return UNSUPPORTED,
    };
    Rule { rule: base, cfa_offset, rbp_offset }
}

/// The CFA expression linkers emit for lazy-binding PLT entries:
/// `rsp + 8 + ((rip & 15) >= 11 ? 8 : 0)`.
fn is_plt_expression(b: &[u8]) -> bool {
    const PLT: [u8; 11] = [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
    b == PLT
}

/// Sorted, merged rows, with [`NO_CFI`] rows where no FDE covers the code.
fn rows_of(mut ranges: Vec<Range>, text_size: u64) -> Result<ModuleTable, NoTable> {
    ranges.sort_by_key(|r| r.start);
    let Some(base) = ranges.first().map(|r| r.start) else { return Err(NoTable::NoCallFrameInfo) };
    let mut rows: Vec<Row> = Vec::with_capacity(ranges.len() + ranges.len() / 4);
    let mut covered_to = base;
    let mut covered = 0;
    let mut unsupported_rows = 0;
    let push = |rows: &mut Vec<Row>, at: u64, r: Rule| -> Result<(), NoTable> {
        let pc = u32::try_from(at - base).map_err(|_| NoTable::TooLarge)?;
        if let Some(last) = rows.last_mut() {
            let same =
                last.rule == r.rule && last.cfa_offset == r.cfa_offset && last.rbp_offset == r.rbp_offset;
            if same {
                return Ok(());
            }
            if last.pc == pc {
                rows.pop();
            }
        }
        rows.push(Row { pc, cfa_offset: r.cfa_offset, rule: r.rule, rbp_offset: r.rbp_offset });
        Ok(())
    };
    for Range { start, len, rule: r } in ranges {
        let end = start + u64::from(len);
        if start > covered_to {
            push(&mut rows, covered_to, NO_CFI)?;
        }
        if r == UNSUPPORTED {
            unsupported_rows += 1;
        }
        push(&mut rows, start, r)?;
        covered += end.saturating_sub(start.max(covered_to));
        covered_to = covered_to.max(end);
    }
    push(&mut rows, covered_to, NO_CFI)?;
    Ok(ModuleTable { base, rows, unsupported_rows, covered, text_size })
}

/// The delta between virtual addresses and file offsets (vaddr = offset +
/// delta) of the executable segment that a mapping at page-aligned
/// `file_offset` maps. A segment's own offset need not be page-aligned
/// (lld packs segments), so the mapping may start below it.
pub fn vaddr_delta<'a, R: ReadRef<'a>>(data: R, file_offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    const PF_X: u32 = 1;
    let file = object::File::parse(data).ok()?;
    // (file start, file size, vaddr, executable) of each segment.
    let segments: Vec<(u64, u64, u64, bool)> = file
        .segments()
        .map(|seg| {
            let (start, size) = seg.file_range();
            let x = matches!(seg.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
            (start, size, seg.address(), x)
        })
        .collect();
    let holds = |&&(start, size, _, _): &&(u64, u64, u64, bool)| {
        (start & !(PAGE - 1)..start + size).contains(&file_offset)
    };
    let (start, _, vaddr, _) =
        segments.iter().find(|s| holds(s) && s.3).or_else(|| segments.iter().find(holds))?;
    Some(vaddr.wrapping_sub(*start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u32, rule: u8, cfa_offset: u16, rbp_offset: i8) -> Row {
        Row { pc, cfa_offset, rule, rbp_offset }
    }

    #[test]
    fn gaps_between_functions_are_walked_by_frame_pointer() {
        let f = |start: u64, end: u64, rule, cfa_offset| Range {
            start,
            len: (end - start) as u32,
            rule: Rule { rule, cfa_offset, rbp_offset: 0 },
        };
        let t = rows_of(
            vec![
                f(0x1000, 0x1001, rule::CFA_RSP, 8),
                f(0x1001, 0x1010, rule::CFA_RSP, 16),
                f(0x1010, 0x1020, rule::CFA_RSP, 16),
                f(0x1040, 0x1050, rule::CFA_RSP, 8),
            ],
            0x100,
        )
        .unwrap();
        assert_eq!(t.base, 0x1000);
        assert_eq!(t.covered, 0x30);
        assert!(t.mostly_bare(), "0x30 of 0x100 bytes described");
        assert_eq!(
            t.rows,
            vec![
                row(0, rule::CFA_RSP, 8, 0),
                row(1, rule::CFA_RSP, 16, 0),
                row(0x20, rule::NO_CFI, 0, 0),
                row(0x40, rule::CFA_RSP, 8, 0),
                row(0x50, rule::NO_CFI, 0, 0),
            ]
        );
    }

    #[test]
    fn plt_expression_is_recognized() {
        assert!(is_plt_expression(&[0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22]));
        assert!(!is_plt_expression(&[0x77, 0x08]));
    }

    /// The C library's own table: `malloc` is frameless at -O2 (CFA from
    /// rsp), `_start`-like entry code ends the walk, and signal return code is
    /// marked unsupported rather than guessed.
    #[test]
    fn libc_table_has_rsp_rbp_and_end_rules() {
        let Some(libc) = ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            return;
        };
        let data = std::fs::read(libc).unwrap();
        let t = build(&*data).unwrap();
        assert!(t.rows.len() > 5_000, "{} rows", t.rows.len());
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        for r in [rule::CFA_RSP, rule::CFA_RBP, rule::END, rule::NO_CFI] {
            assert!(t.rows.iter().any(|row| row.rule == r), "no rule {r}");
        }
        assert!(t.unsupported_rows > 0, "__restore_rt's expression rule");
    }
}
