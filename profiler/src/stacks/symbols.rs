//! Naming frames: turns frame [`Location`]s into function names with
//! file:line and inlined frames (blazesym, from the ELF files and their
//! DWARF), falling back to `module+0xoffset` so no frame is ever dropped.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use blazesym::symbolize::{source::Elf, source::Source, CodeInfo, Input, Symbolized, Symbolizer};

use crate::{
    files::target::{open_path_mapped, ModuleFile},
    report::model::Frame,
    stacks::procmaps::ProcessMaps,
    stacks::Location,
};

/// Names frames; one instance serves every report of a session, so each
/// module's debug info is parsed once (blazesym caches it by path).
pub struct Symbols {
    symbolizer: Symbolizer,
    /// Every module symbolized, by (device, inode), and symbolized by
    /// `/proc/self/fd/N`: open as long as the symbolizer, so no path it
    /// cached names another file, and the same file keeps the same path.
    opened: RefCell<HashMap<(u64, u64), ModuleFile>>,
}

/// Modules kept open and parsed; past this the cache starts over (a fleet
/// agent meets new images for days).
const MAX_MODULES: usize = 512;

impl Default for Symbols {
    fn default() -> Self {
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            // Ours (`demangle`): blazesym's sends plain C names through the
            // C++ demangler, which reads `f` as `float`.
            .enable_demangling(false)
            .build();
        Self { symbolizer, opened: Default::default() }
    }
}

/// A symbol as people read it: Rust names (v0 `_R...`, legacy `_ZN...E`,
/// without the hash), then C++ names (`_Z...`); anything else is a plain C
/// name and is left alone, as is a name no demangler parses.
pub fn demangle(name: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    if name.starts_with("_Z") {
        if let Some(cpp) = cpp_demangle::Symbol::new(name).ok().and_then(|s| s.demangle().ok()) {
            return cpp;
        }
    }
    name.to_string()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A frame; `code` gives its file:line when the debug info has it.
fn frame(function: &str, module: &str, offset: u64, code: Option<&CodeInfo>, inlined: bool) -> Frame {
    let (file, line) = code.map(|c| (c.to_path().display().to_string(), c.line)).unwrap_or_default();
    Frame {
        function: demangle(function),
        module: module.to_string(),
        offset: format!("{offset:#x}"),
        file: (!file.is_empty()).then_some(file),
        line,
        inlined,
    }
}

fn fallback(loc: &Location) -> Frame {
    let (module, offset) = match loc {
        Location::File { path, offset } => (basename(path).to_string(), *offset),
        Location::Anonymous { name, addr } => (name.to_string(), *addr),
        Location::Jit { addr, .. } => ("[jit]".to_string(), *addr),
        Location::Unmapped { addr } => ("[unknown]".to_string(), *addr),
        Location::Cut(reason) => return frame(&crate::stacks::cut_name(*reason), "[unwind]", 0, None, false),
        Location::Handoff(handoff) => return frame(handoff.name(), handoff.module(), 0, None, false),
        Location::JsFunction { function, sfi } => return js_frame(function.as_deref(), *sfi),
    };
    frame(&format!("{module}+{offset:#x}"), &module, offset, None, false)
}

/// A JS function whose V8 objects could not be read (counted as an unnamed JIT frame).
pub const UNREADABLE_JS: &str = "JS:[function not readable]";

/// A JS function's frame, named as perf maps name JIT code (so one
/// function reads the same from either), with its script and line.
fn js_frame(function: Option<&crate::stacks::v8::JsFunction>, sfi: u64) -> Frame {
    let Some(f) = function else {
        return frame(UNREADABLE_JS, "[jit]", sfi, None, false);
    };
    Frame {
        file: (!f.script.is_empty()).then(|| f.script.clone()),
        line: (f.line > 0).then_some(f.line),
        ..frame(&f.label(), "[jit]", sfi, None, false)
    }
}

/// The build id and executable segment of module `path` as process `pid`
/// mapped it (headers and notes only are read).
pub fn module_info(pid: u32, maps: &ProcessMaps, path: &str) -> Option<crate::report::model::ModuleInfo> {
    use object::{Object, ObjectSegment, SegmentFlags};
    let module = open_path_mapped(pid, maps, path).ok()?;
    let cache = object::ReadCache::new(&module.file);
    let elf = object::File::parse(&cache).ok()?;
    let build_id = elf.build_id().ok().flatten().map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
    const PF_X: u32 = 1;
    let text = elf.segments().find_map(|seg| {
        let executable = matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
        let (offset, size) = seg.file_range();
        executable.then_some(crate::report::model::TextSegment { offset, vaddr: seg.address(), size })
    });
    Some(crate::report::model::ModuleInfo {
        name: basename(path).to_string(),
        path: path.to_string(),
        build_id,
        text,
    })
}

impl Symbols {
    /// Starts over when too many modules are cached.
    pub fn trim(&mut self) {
        if self.opened.get_mut().len() > MAX_MODULES {
            *self = Self::default();
        }
    }

    /// The path to symbolize an opened module by: the first opened copy of the same file.
    fn path_of(&self, module: ModuleFile) -> String {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = module.file.metadata() else { return String::new() };
        let mut opened = self.opened.borrow_mut();
        opened.entry((meta.dev(), meta.ino())).or_insert(module).proc_path()
    }

    /// Names every location of process `pid`, whose files are opened as
    /// `maps` (a snapshot of its mappings) maps them (see [`open_mapped`]).
    pub fn resolve(
        &self,
        pid: u32,
        maps: &ProcessMaps,
        locations: &[Location],
    ) -> HashMap<Location, Vec<Frame>> {
        let mut by_file: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        let mut names = HashMap::new();
        for loc in locations {
            match loc {
                Location::File { path, offset } => by_file.entry(path.clone()).or_default().push(*offset),
                Location::Jit { name, addr } => {
                    let function = crate::stacks::jit::without_tier(name);
                    names.insert(loc.clone(), vec![frame(&function, "[jit]", *addr, None, false)]);
                }
                other => {
                    names.insert(other.clone(), vec![fallback(other)]);
                }
            }
        }
        for (path, mut offsets) in by_file {
            offsets.sort_unstable();
            offsets.dedup();
            // Frames are return addresses: look up the call instruction before them.
            let lookups: Vec<u64> = offsets.iter().map(|o| o.saturating_sub(1)).collect();
            let results = match open_path_mapped(pid, maps, &path).map(|module| self.path_of(module)) {
                Ok(path) if !path.is_empty() => self
                    .symbolizer
                    .symbolize(&Source::Elf(Elf::new(path)), Input::FileOffset(&lookups))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            for (i, offset) in offsets.iter().enumerate() {
                let loc = Location::File { path: path.clone(), offset: *offset };
                let frames = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => {
                        let module = basename(&path);
                        let mut frames =
                            vec![frame(&sym.name, module, *offset, sym.code_info.as_deref(), false)];
                        // An inlined copy of the function into itself adds nothing.
                        for inl in sym.inlined.iter().filter(|i| i.name != sym.name) {
                            frames.push(frame(&inl.name, module, *offset, inl.code_info.as_ref(), true));
                        }
                        frames
                    }
                    _ => vec![fallback(&loc)],
                };
                names.insert(loc, frames);
            }
        }
        names
    }
}
#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn plain_c_names_are_not_demangled() {
        for name in ["f", "d", "i", "v", "main", "leak_strdup"] {
            assert_eq!(demangle(name), name);
        }
    }

    #[test]
    fn cpp_and_rust_names_are() {
        assert_eq!(demangle("_Znwm"), "operator new(unsigned long)");
        assert_eq!(demangle("_ZN8rustleak13leak_box_leak17h09d227c3cfbc7001E"), "rustleak::leak_box_leak");
        assert_eq!(demangle("_Zbogus"), "_Zbogus", "kept as written when no demangler parses it");
    }
}
