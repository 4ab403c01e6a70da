//! Opening a target's mapped files (executables, libraries, the loader) as
//! root, for the unwinder, the return-address check, symbolization and
//! allocator probing. The target controls the paths in its own
//! `/proc/PID/maps` and what they lead to: a path replaced by a symlink to
//! `/etc/shadow`, a FIFO (blocks forever), `/dev/zero` (endless). So a file
//! is opened as the mapping itself, `/proc/PID/map_files/START-END` (the
//! inode actually mapped, whatever its path says now, deleted files
//! included), or else inside the target's root with `openat2`
//! (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, `O_NOFOLLOW`); never blocking,
//! only regular files whose inode is the mapped one, at most
//! [`MAX_MODULE_BYTES`].

use std::{
    ffi::CString,
    fmt,
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use crate::stacks::procmaps::{Mapping, ProcessMaps};

/// Largest module read or mapped on a target's behalf (a debug build of a
/// browser is ~2 GiB; node is ~100 MiB).
pub const MAX_MODULE_BYTES: u64 = 2 << 30;

/// Why a target's file was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The process maps nothing at that path (or is gone).
    NotMapped,
    /// Neither the mapping nor the path inside the root could be opened.
    Unreachable(String),
    /// Not a regular file (a FIFO, a device, a directory).
    NotRegular,
    /// The file at the path is not the inode that is mapped.
    Replaced,
    TooLarge(u64),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped => write!(f, "not mapped by the process"),
            Self::Unreachable(e) => write!(f, "cannot be opened: {e}"),
            Self::NotRegular => write!(f, "not a regular file"),
            Self::Replaced => write!(f, "replaced since it was mapped"),
            Self::TooLarge(n) => write!(f, "{n} bytes, over the {MAX_MODULE_BYTES}-byte bound"),
        }
    }
}

impl std::error::Error for Refusal {}

/// A target's mapped file, open and checked.
#[derive(Debug)]
pub struct ModuleFile {
    pub file: File,
    pub len: u64,
}

impl ModuleFile {
    /// A path that names this open file for libraries that take paths
    /// (valid while `self` lives).
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }
}

/// Opens the file that `mapping` (from a snapshot of process `pid`'s maps)
/// maps: through the mapping itself while it exists, else by its path inside
/// the target's root, else (the process is gone) by its path from ours;
/// every way checked against the mapped inode.
pub fn open_mapped(pid: u32, mapping: &Mapping) -> Result<ModuleFile, Refusal> {
    let path = mapping.file().ok_or(Refusal::NotMapped)?;
    let via_mapping = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/map_files/{:x}-{:x}", mapping.start, mapping.end));
    let path = path.trim_end_matches(" (deleted)");
    let file = match via_mapping {
        Ok(f) => f,
        Err(_) => match open_in_root(pid, path) {
            Ok(f) => f,
            Err(_) => {
                let host = File::open("/").map_err(|e| Refusal::Unreachable(e.to_string()))?;
                openat2_in(&host, path.trim_start_matches('/'))
                    .map_err(|e| Refusal::Unreachable(e.to_string()))?
            }
        },
    };
    checked(file, mapping.inode)
}

/// [`open_mapped`] for the first mapping of `path` in `maps`.
pub fn open_path_mapped(pid: u32, maps: &ProcessMaps, path: &str) -> Result<ModuleFile, Refusal> {
    let mapping = maps.mappings.iter().find(|m| m.file() == Some(path)).ok_or(Refusal::NotMapped)?;
    open_mapped(pid, mapping)
}

use std::os::unix::fs::OpenOptionsExt;

fn checked(file: File, inode: u64) -> Result<ModuleFile, Refusal> {
    let meta = file.metadata().map_err(|e| Refusal::Unreachable(e.to_string()))?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    if meta.ino() != inode {
        return Err(Refusal::Replaced);
    }
    if meta.len() > MAX_MODULE_BYTES {
        return Err(Refusal::TooLarge(meta.len()));
    }
    Ok(ModuleFile { file, len: meta.len() })
}

/// Opens `path` (absolute, as the target sees it) inside the target's root:
/// every component, symlinks included, resolves within that root, and a
/// symlink as the last component is refused.
pub fn open_in_root(pid: u32, path: &str) -> Result<File, Refusal> {
    let root = File::open(format!("/proc/{pid}/root")).map_err(|e| Refusal::Unreachable(e.to_string()))?;
    openat2_in(&root, path.trim_start_matches('/')).map_err(|e| Refusal::Unreachable(e.to_string()))
}

fn openat2_in(root: &File, relative: &str) -> std::io::Result<File> {
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let path = CString::new(relative).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a plain syscall with valid pointers; the fd returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Opens a regular file at `path` inside the target's root (files the target
/// writes for us, such as perf maps), at most `max` bytes.
pub fn open_regular_in_root(pid: u32, path: &str, max: u64) -> Result<File, Refusal> {
    let file = open_in_root(pid, path)?;
    let meta = file.metadata().map_err(|e| Refusal::Unreachable(e.to_string()))?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    if meta.len() > max {
        return Err(Refusal::TooLarge(meta.len()));
    }
    Ok(file)
}
