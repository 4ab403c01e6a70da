//! Writing outputs as root into directories others may control. The
//! directory is opened once, `O_DIRECTORY | O_NOFOLLOW`, and every file is
//! written through that descriptor: created under a fresh random name with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` (a planted symlink or file makes the
//! create fail, never redirects it), then renamed over its final name (which
//! replaces a planted symlink itself, never its target). A write that fails
//! (a full disk) leaves the previous complete file or none.

use std::{
    ffi::CString,
    fs::File,
    io::Write,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::random_suffix;

/// An output directory, held open.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    dir: OwnedFd,
    /// Set when this run made the directory.
    new: Option<NewDir>,
}

/// A directory this run made: removed again if the run fails before
/// writing anything into it.
#[derive(Debug)]
pub struct NewDir {
    parent: File,
    name: CString,
}

impl NewDir {
    /// Removes the directory if it is still empty (`rmdir` through its
    /// parent: a symlink planted in its place is not followed).
    pub fn remove_if_empty(self) {
        // SAFETY: a plain syscall on a NUL-terminated name.
        unsafe { libc::unlinkat(self.parent.as_raw_fd(), self.name.as_ptr(), libc::AT_REMOVEDIR) };
    }
}

fn c_name(name: &str) -> Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} is not a plain file name");
    }
    Ok(CString::new(name)?)
}

fn open_dir_at(at: libc::c_int, name: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the fd returned is ours.
    let fd = unsafe {
        libc::openat(
            at,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates directory `name` in `at` (`exclusive`: it must not exist yet) and
/// opens it; says whether it was made here.
fn make_dir_at(at: libc::c_int, name: &CString, exclusive: bool) -> std::io::Result<(OwnedFd, bool)> {
    // SAFETY: a plain syscall on a NUL-terminated name.
    let made = unsafe { libc::mkdirat(at, name.as_ptr(), 0o755) } == 0;
    if !made {
        let e = std::io::Error::last_os_error();
        if exclusive || e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok((open_dir_at(at, name)?, made))
}

impl OutputDir {
    /// Creates `path` (and missing parents) if needed and opens it; a symlink
    /// as its last component is refused. With `exclusive` it must be new.
    pub fn create(path: &Path, exclusive: bool) -> Result<Self> {
        let what = || format!("cannot create output directory {}", path.display());
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).with_context(what)?;
        let parent_dir = File::open(parent).with_context(what)?;
        let name = path.file_name().with_context(what)?;
        let name = c_name(&name.to_string_lossy()).with_context(what)?;
        let (dir, made) = make_dir_at(parent_dir.as_raw_fd(), &name, exclusive)
            .with_context(|| format!("{} (it must be a directory, not a symlink)", what()))?;
        let new = made.then_some(NewDir { parent: parent_dir, name });
        let out = Self { path: path.to_path_buf(), dir, new };
        out.write(".write-test", b"")
            .with_context(|| format!("output directory {} is not writable", path.display()))?;
        out.remove(".write-test");
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, if this run made it (see [`NewDir::remove_if_empty`]).
    pub fn take_new(&mut self) -> Option<NewDir> {
        self.new.take()
    }

    /// The same directory through another descriptor (for another thread).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self { path: self.path.clone(), dir: self.dir.try_clone()?, new: None })
    }

    /// Creates (or reuses) the subdirectory `name` and opens it.
    pub fn subdir(&self, name: &str) -> Result<Self> {
        let (dir, _) = make_dir_at(self.dir.as_raw_fd(), &c_name(name)?, false)
            .with_context(|| format!("creating {}", self.path.join(name).display()))?;
        Ok(Self { path: self.path.join(name), dir, new: None })
    }

    /// Writes `data` as file `name`, completely or not at all.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write_with_mode(name, data, 0o644)
    }

    /// [`OutputDir::write`] for a file only its owner (root) may read.
    pub fn write_private(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write_with_mode(name, data, 0o600)
    }

    fn write_with_mode(&self, name: &str, data: &[u8], mode: libc::c_uint) -> Result<()> {
        let target = c_name(name)?;
        let temp = c_name(&format!(".{name}.{}.tmp", random_suffix()))?;
        let shown = || self.path.join(name).display().to_string();
        // SAFETY: a plain syscall; the fd returned is ours.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                temp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("writing {}", shown()));
        }
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = file.write_all(data).and_then(|_| file.sync_data());
        drop(file);
        let renamed = written.and_then(|_| {
            // SAFETY: plain syscall on NUL-terminated names relative to our directory.
            let r = unsafe {
                libc::renameat(self.dir.as_raw_fd(), temp.as_ptr(), self.dir.as_raw_fd(), target.as_ptr())
            };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        if let Err(e) = renamed {
            // SAFETY: as above.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
            return Err(e).with_context(|| format!("writing {}", shown()));
        }
        Ok(())
    }

    /// Removes file `name` if present (a symlink is removed, not followed).
    pub fn remove(&self, name: &str) {
        if let Ok(name) = c_name(name) {
            // SAFETY: plain syscall on a NUL-terminated name relative to our directory.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
        }
    }

    /// Removes subdirectory `name` and the plain files in it (an old
    /// snapshot); a symlink in its place is removed, never followed.
    pub fn remove_subdir(&self, name: &str) {
        let Ok(c) = c_name(name) else { return };
        if let Ok(fd) = open_dir_at(self.dir.as_raw_fd(), &c) {
            let sub = Self { path: self.path.join(name), dir: fd, new: None };
            for file in sub.file_names() {
                sub.remove(&file);
            }
        }
        // SAFETY: plain syscalls on a NUL-terminated name relative to our directory.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
        }
    }

    /// The plain files in the directory (for clearing an earlier run's outputs).
    pub fn file_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd())) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

/// Writes the file at `path` atomically, in its directory as given.
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
    let dir = OutputDir { path: parent.to_path_buf(), dir: OwnedFd::from(dir), new: None };
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    dir.write(&name.to_string_lossy(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_planted_symlinks_instead_of_following_them() {
        let base = std::env::temp_dir().join(format!("outdir-test-{}", random_suffix()));
        let victim = base.with_extension("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = OutputDir::create(&base, true).unwrap();
        std::os::unix::fs::symlink(&victim, base.join("report.json")).unwrap();
        out.write("report.json", b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(base.join("report.json")).unwrap(), b"{}");
        assert!(!std::fs::symlink_metadata(base.join("report.json")).unwrap().file_type().is_symlink());
        assert!(OutputDir::create(&base, true).is_err(), "exclusive creation of an existing directory");
        let link = base.with_extension("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        let err = OutputDir::create(&link, false).unwrap_err();
        assert!(format!("{err:#}").contains("not a symlink"), "{err:#}");
        assert!(out.write("a/b", b"").is_err());
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_file(&victim).unwrap();
        std::fs::remove_file(&link).unwrap();
    }
}
