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

/// Module contents by (device, inode), shared by every process's unwinder:
/// a process tree maps one libc, and it is read once, not once per process.
static MODULES: Mutex<Option<HashMap<(u64, u64), Arc<Vec<u8>>>>> = Mutex::new(None);

/// The contents of `module`, read once per file.
fn contents(module: &ModuleFile) -> Option<Arc<Vec<u8>>> {
    let meta = module.file.metadata().ok()?;
    let key = (meta.dev(), meta.ino());
    let mut modules = MODULES.lock().ok()?;
    let modules = modules.get_or_insert_with(HashMap::new);
    if let Some(data) = modules.get(&key) {
        return Some(data.clone());
    }
    let data = Arc::new(module.read_all().ok()?);
    modules.insert(key, data.clone());
    Some(data)
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
        let answer = open().and_then(|m| contents(&m)).and_then(|d| slot_in(&d, file_offset));
        self.answers.insert((path.clone(), file_offset), answer);
        answer
    }
}

fn slot_in(data: &[u8], file_offset: u64) -> Option<u64> {
    let file = object::File::parse(data).ok()?;
    let vaddr = file.segments().find_map(|seg| {
        let (start, size) = seg.file_range();
        (start..start + size).contains(&file_offset).then(|| seg.address() + (file_offset - start))
    })?;
    let section = file.section_by_name(".eh_frame")?;
    let eh_frame = EhFrame::new(section.data().ok()?, NativeEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
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
