//! Whose code a stack is: the program's own, or the runtime's (the C and
//! C++ runtimes, the C++ and Rust standard libraries, the dynamic loader and
//! the start-up glue). The gate allows runtime stacks and shows a failing
//! stack from its first frame of the program's; the text report lists the
//! program's stacks first and the runtime's grouped after them.

use crate::report::model::Frame;

/// Modules of the C and C++ runtimes and the dynamic loader.
pub fn is_runtime_module(module: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "libc.so",
        "libc-",
        "ld-linux",
        "ld-musl",
        "libpthread",
        "libdl",
        "libgcc_s",
        "librt",
        "libm.",
        "libstdc++",
    ];
    PREFIXES.iter().any(|p| module.starts_with(p)) || module == "[vdso]"
}

/// The program's start-up glue, which every complete stack passes through
/// (linked into the executable or in libc).
const ENTRY_GLUE: [&str; 5] =
    ["_start", "__libc_start_main", "__libc_start_main_impl", "__libc_start_call_main", "__libc_csu_init"];

/// Runtime structures made once (per process or per thread) on the
/// program's behalf, whoever's call triggered them: allowed by default.
/// Documented in the README ("What the gate counts as runtime").
pub const ONE_TIME_RUNTIME: [&str; 8] = [
    // glibc: the per-thread malloc cache, made by a thread's first malloc.
    "tcache_init",
    // glibc: stdio buffers (stdout, stderr, and each FILE's on first use).
    "_IO_file_doallocate",
    // glibc / the loader: per-thread TLS blocks and their vectors.
    "_dl_allocate_tls",
    "allocate_dtv",
    // glibc: locale data loaded by setlocale.
    "_nl_find_locale",
    "_nl_load_locale_from_archive",
    // libstdc++: per-thread exception-handling globals and the emergency
    // exception pool (made by a static constructor before main).
    "__cxa_get_globals",
    "(anonymous namespace)::pool::pool",
];

/// Functions of the C++ and Rust standard libraries, which templates and
/// generics compile into the program's own binary.
const STANDARD_LIBRARY_PREFIXES: [&str; 15] = [
    "std::",
    "<std::",
    "core::",
    "<core::",
    "alloc::",
    "<alloc::",
    "hashbrown::",
    "<hashbrown::",
    "__rust_",
    "__rdl_",
    "__rg_",
    "__gnu_cxx::",
    "operator new",
    "operator delete",
    "__cxa_",
];

/// Whether a demangled function belongs to the C++ or Rust standard
/// library; a C++ template's return type (`void std::vector<...>::...`) is
/// looked past.
pub fn is_standard_library_function(name: &str) -> bool {
    let starts = |n: &str| STANDARD_LIBRARY_PREFIXES.iter().any(|p| n.starts_with(p));
    let first = |c: char| name.find(c).unwrap_or(name.len());
    let past_return_type =
        name.find(' ').filter(|&sp| sp < first('(') && sp < first('<')).map(|sp| &name[sp + 1..]);
    starts(name) || past_return_type.is_some_and(starts) || is_library_trait_impl(name)
}

/// `<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem`: a
/// standard trait implemented for a primitive or standard type (not
/// `<app::Cache as core::clone::Clone>::clone`, the program's own impl).
fn is_library_trait_impl(name: &str) -> bool {
    const PRIMITIVES: [&str; 17] = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32", "f64",
        "bool", "char", "str",
    ];
    let Some((ty, _)) = name.strip_prefix('<').and_then(|rest| rest.split_once(" as ")) else { return false };
    let ty = ty.trim_start_matches('&').trim_start_matches("mut ").trim_start_matches('[');
    let base = ty.split([';', ']', '<']).next().unwrap_or(ty).trim();
    PRIMITIVES.contains(&base) || STANDARD_LIBRARY_PREFIXES.iter().any(|p| ty.starts_with(p))
}

/// A frame of the runtime or a standard library (C, C++, Rust, the loader):
/// not where a user reads the cause of a leak.
pub fn is_library_frame(f: &Frame) -> bool {
    is_runtime_module(&f.module) || is_standard_library_function(&f.function)
}

/// The frame to name a stack by: its first frame in the program's own code
/// (past allocator and standard-library frames), else its first.
pub fn naming_frame(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().find(|f| !is_library_frame(f)).or(frames.first())
}

/// Whether a stack's allocation is the runtime's, not the program's: every
/// frame is in the C/C++ runtime, a standard library, the loader or the
/// start-up glue (nothing of the program's own code asked for it; Rust's
/// `main` shim counts as glue under `std::rt::lang_start`), or it passes
/// through a documented one-time runtime allocation. A leak made through a
/// libc helper (`strdup`, `fopen`) or a standard container from the
/// program's code is the program's.
pub fn is_runtime_stack(frames: &[Frame]) -> bool {
    let name = |f: &Frame| f.function.trim_start_matches("__GI_").to_string();
    let real: Vec<&Frame> = frames.iter().filter(|f| f.module != "[unwind]").collect();
    if real.is_empty() {
        return false;
    }
    let rust_start = real.iter().any(|f| f.function.starts_with("std::rt::lang_start"));
    let only_runtime = real.iter().all(|f| {
        is_library_frame(f) || ENTRY_GLUE.contains(&name(f).as_str()) || (rust_start && f.function == "main")
    });
    only_runtime || real.iter().any(|f| ONE_TIME_RUNTIME.iter().any(|r| name(f) == *r))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_standard_type_in_a_parameter_does_not_make_a_library_function() {
        assert!(is_standard_library_function(
            "void std::vector<int, std::allocator<int> >::push_back(int const&)"
        ));
        assert!(!is_standard_library_function("app::store(int, std::string const&)"));
        assert!(is_standard_library_function("<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"));
        assert!(is_standard_library_function("<alloc::string::String as core::clone::Clone>::clone"));
        assert!(!is_standard_library_function("<app::Cache as core::clone::Clone>::clone"));
    }

    #[test]
    fn runtime_modules() {
        assert!(is_runtime_module("libc.so.6"));
        assert!(is_runtime_module("ld-linux-x86-64.so.2"));
        assert!(!is_runtime_module("leaky"));
        assert!(!is_runtime_module("libcrypto.so.3"));
    }

    pub(crate) fn frames(list: &[(&str, &str)]) -> Vec<Frame> {
        list.iter()
            .map(|(function, module)| {
                let mut f = Frame::named(function);
                f.module = module.to_string();
                f
            })
            .collect()
    }

    #[test]
    fn runtime_is_judged_on_the_complete_stack() {
        let glue = [("__libc_start_call_main", "libc.so.6"), ("_start", "app")];
        // strdup called by the program: the program's leak.
        let strdup = frames(&[("__GI___strdup", "libc.so.6"), ("main", "app"), glue[0], glue[1]]);
        assert!(!is_runtime_stack(&strdup));
        // libc's own start-up work, under the executable's _start: runtime.
        let init = frames(&[("_IO_setb", "libc.so.6"), ("__libc_start_main_impl", "libc.so.6"), glue[1]]);
        assert!(is_runtime_stack(&init));
        // A thread's malloc cache, made by the program's first malloc: runtime.
        let tcache =
            frames(&[("tcache_init", "libc.so.6"), ("__GI___libc_malloc", "libc.so.6"), ("main", "app")]);
        assert!(is_runtime_stack(&tcache));
        // The emergency pool, before main, from the loader: runtime.
        let pool = frames(&[
            ("(anonymous namespace)::pool::pool", "libstdc++.so.6"),
            ("call_init", "ld-linux-x86-64.so.2"),
            ("_dl_start_user", "ld-linux-x86-64.so.2"),
        ]);
        assert!(is_runtime_stack(&pool));
        // std::string growth in the program's code: the program's.
        let string =
            frames(&[("operator new(unsigned long)", "libstdc++.so.6"), ("make", "app"), ("main", "app")]);
        assert!(!is_runtime_stack(&string));
        assert!(!is_runtime_stack(&[]));
        // Rust's std allocating before the program's main (its thread info): runtime.
        let rust_init = frames(&[
            ("alloc::alloc::alloc", "app"),
            ("std::sys::pal::unix::stack_overflow::thread_info::set_current_info", "app"),
            ("std::rt::lang_start_internal", "app"),
            ("main", "app"),
            glue[0],
        ]);
        assert!(is_runtime_stack(&rust_init));
        // A Vec the program's function leaks: the program's.
        let vec = frames(&[
            ("alloc::alloc::alloc", "app"),
            ("app::leak", "app"),
            ("app::main", "app"),
            ("main", "app"),
        ]);
        assert!(!is_runtime_stack(&vec));
    }
}
