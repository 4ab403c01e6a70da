//! One-frame unwinding from DWARF call-frame information (`.eh_frame`).
//!
//! At a syscall the user stack pointer sits inside the libc wrapper, whose
//! frame holds the return address into its caller at a fixed distance given
//! by the CFI: CFA = rsp + N, return address at CFA - 8. Reading that one
//! slot is exact, where scanning the stack for code pointers can pick up a
//! stale return address left in an uninitialized slot.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    sync::{Arc, Mutex},
};

use gimli::{BaseAddresses, CfaRule, EhFrame, NativeEndian, UnwindContext, UnwindSection};
use object::{Object, ObjectSection, ObjectSegment};

use crate::files::target::ModuleFile;

/// What one-frame unwinding needs of a module: its segments and its
/// `.eh_frame`, read on demand (not the whole file), by (device, inode),
/// shared by every process's unwinder: a process tree maps one libc, and
/// it is read once, not once per process.
struct ModuleCfi {
    /// (file offset, file size, virtual address) of each segment.
    segments: Vec<(u64, u64, u64)>,
    eh_frame: Vec<u8>,
    eh_frame_address: u64,
    text_address: Option<u64>,
}

/// A module whose `.eh_frame` claims more than this is not unwound here
/// (its calls fall back to the scan): bounded memory per target-controlled file.
const MAX_EH_FRAME: u64 = 64 << 20;

/// Modules by (device, inode); `None` for a module without call-frame information.
type ModuleCache = HashMap<(u64, u64), Option<Arc<ModuleCfi>>>;
static MODULES: Mutex<Option<ModuleCache>> = Mutex::new(None);

/// The call-frame information of `module`, read once per file.
fn cfi_of(module: &ModuleFile) -> Option<Arc<ModuleCfi>> {
    let meta = module.file.metadata().ok()?;
    let key = (meta.dev(), meta.ino());
    let mut modules = MODULES.lock().ok()?;
    let modules = modules.get_or_insert_with(HashMap::new);
    modules.entry(key).or_insert_with(|| read_cfi(module).map(Arc::new)).clone()
}

fn read_cfi(module: &ModuleFile) -> Option<ModuleCfi> {
    let cache = object::ReadCache::new(&module.file);
    let file = object::File::parse(&cache).ok()?;
    let segments = file
        .segments()
        .map(|seg| {
            let (start, size) = seg.file_range();
            (start, size, seg.address())
        })
        .collect();
    let section = file.section_by_name(".eh_frame")?;
    if section.size() > MAX_EH_FRAME {
        return None;
    }
    Some(ModuleCfi {
        segments,
        eh_frame: section.data().ok()?.to_vec(),
        eh_frame_address: section.address(),
        text_address: file.section_by_name(".text").map(|t| t.address()),
    })
}

/// One process's answers, from the shared module contents.
#[derive(Default)]
pub struct Unwinder {
    answers: HashMap<(Arc<str>, u64), Option<u64>>,
}

impl Unwinder {
    /// For code at `file_offset` in the module at `path`, how many bytes
    /// above the stack pointer the return address is stored; `open` opens
    /// the module (only when this offset was not answered before).
    pub fn return_address_slot(
        &mut self,
        path: &Arc<str>,
        open: impl FnOnce() -> Option<ModuleFile>,
        file_offset: u64,
    ) -> Option<u64> {
        if let Some(answer) = self.answers.get(&(path.clone(), file_offset)) {
            return *answer;
        }
        let answer = open().and_then(|m| cfi_of(&m)).and_then(|cfi| slot_in(&cfi, file_offset));
        self.answers.insert((path.clone(), file_offset), answer);
        answer
    }
}

fn slot_in(cfi: &ModuleCfi, file_offset: u64) -> Option<u64> {
    let vaddr = cfi.segments.iter().find_map(|&(start, size, address)| {
        (start..start + size).contains(&file_offset).then(|| address + (file_offset - start))
    })?;
    let eh_frame = EhFrame::new(&cfi.eh_frame, NativeEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(cfi.eh_frame_address);
    if let Some(text) = cfi.text_address {
        bases = bases.set_text(text);
    }
    let mut ctx = UnwindContext::new();
    let row = eh_frame.unwind_info_for_address(&bases, &mut ctx, vaddr, EhFrame::cie_from_offset).ok()?;
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset }
            if *register == gimli::X86_64::RSP && *offset >= 8 =>
        {
            Some(*offset as u64 - 8)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary's own `main`-like functions have CFI; at a function's
    /// first instruction the return address is at the stack pointer.
    #[test]
    fn return_address_is_at_rsp_on_function_entry() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let sym = file
            .symbols()
            .find(|s| object::ObjectSymbol::name(s).is_ok_and(|n| n.contains("slot_in")))
            .expect("slot_in symbol");
        let addr = object::ObjectSymbol::address(&sym);
        let offset = file
            .segments()
            .find_map(|seg| {
                let (start, _) = seg.file_range();
                let range = seg.address()..seg.address() + seg.size();
                range.contains(&addr).then(|| addr - seg.address() + start)
            })
            .unwrap();
        let mut u = Unwinder::default();
        let path: Arc<str> = Arc::from(exe.to_str().unwrap());
        let open = || {
            Some(ModuleFile {
                len: std::fs::metadata(&exe).unwrap().len(),
                file: std::fs::File::open(&exe).unwrap(),
            })
        };
        assert_eq!(u.return_address_slot(&path, open, offset), Some(0));
    }
}
