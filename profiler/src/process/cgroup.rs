//! Container targets: a cgroup v2 directory (`--cgroup`) or a container id
//! (`--container`) resolved to one by scanning the cgroup v2 hierarchy; the
//! cgroup ids the kernel side filters on; and the memory limit and usage of
//! the memory controller, v2 (`memory.max`) or v1 (`memory.limit_in_bytes`).
//! Mounts are found from `/proc/self/mountinfo`, never assumed.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub use crate::report::model::CgroupMemory;
use anyhow::{bail, Context, Result};

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Default)]
pub struct CgroupMounts {
    /// The cgroup v2 (unified) hierarchy.
    pub v2: Option<PathBuf>,
    /// The v1 memory controller, in a hybrid or legacy layout.
    pub v1_memory: Option<PathBuf>,
}

impl CgroupMounts {
    pub fn read() -> Result<Self> {
        Ok(Self::parse(
            &std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?,
        ))
    }

    pub fn parse(mountinfo: &str) -> Self {
        let mut mounts = Self::default();
        for line in mountinfo.lines() {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let Some(mount_point) = left.split(' ').nth(4) else { continue };
            let mut right = right.split(' ');
            let (fstype, _source, options) = (right.next(), right.next(), right.next().unwrap_or(""));
            match fstype {
                Some("cgroup2") if mounts.v2.is_none() => {
                    mounts.v2 = Some(PathBuf::from(unescape(mount_point)))
                }
                Some("cgroup") if options.split(',').any(|o| o == "memory") => {
                    mounts.v1_memory = Some(PathBuf::from(unescape(mount_point)))
                }
                _ => {}
            }
        }
        mounts
    }

    fn v2(&self) -> Result<&Path> {
        self.v2.as_deref().context("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")
    }
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&code, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// No container's cgroup matches the id (it may not have started yet).
#[derive(Debug)]
pub struct NotStarted {
    id: String,
    root: PathBuf,
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no container with id {}* under {} (--wait waits for it to start)",
            self.id,
            self.root.display()
        )
    }
}

impl std::error::Error for NotStarted {}

/// A cgroup v2 directory being profiled.
#[derive(Clone, Debug)]
pub struct CgroupTarget {
    pub dir: PathBuf,
}

impl CgroupTarget {
    /// Validates that `dir` is a directory of the mounted cgroup v2 hierarchy.
    pub fn resolve(dir: &Path, mounts: &CgroupMounts) -> Result<Self> {
        let v2 = mounts.v2()?;
        if !dir.exists() {
            bail!("cgroup {} does not exist", dir.display());
        }
        let dir = dir.canonicalize()?;
        if !dir.starts_with(v2) || !dir.join("cgroup.procs").exists() {
            bail!(
                "{} is not a cgroup v2 directory (the v2 hierarchy is mounted at {})",
                dir.display(),
                v2.display()
            );
        }
        Ok(Self { dir })
    }

    /// Finds the cgroup of a docker / containerd / CRI-O / podman container by
    /// its id or a unique prefix of it.
    pub fn from_container(id: &str, mounts: &CgroupMounts) -> Result<Self> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 4 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("container id {id:?} must be at least 4 hexadecimal characters");
        }
        let v2 = mounts.v2()?;
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let mut stack = vec![(v2.to_path_buf(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = entry.path();
                if let Some(cid) = container_id(&entry.file_name().to_string_lossy()) {
                    if cid.starts_with(&id) && !found.iter().any(|(c, _)| *c == cid) {
                        found.push((cid, path.clone()));
                        continue; // the container's own sub-cgroups belong to it
                    }
                }
                if depth < 12 {
                    stack.push((path, depth + 1));
                }
            }
        }
        match found.len() {
            0 => Err(NotStarted { id, root: v2.to_path_buf() }.into()),
            1 => Ok(Self { dir: found.remove(0).1 }),
            _ => {
                let ids: Vec<String> = found.iter().map(|(c, p)| format!("{c} ({})", p.display())).collect();
                bail!("container id prefix {id} is ambiguous; it matches:\n  {}", ids.join("\n  "))
            }
        }
    }

    /// Whether `error`, from [`from_container`](Self::from_container), says
    /// only that no such container runs (yet).
    pub fn not_started(error: &anyhow::Error) -> bool {
        error.is::<NotStarted>()
    }

    /// Ids of the cgroup and all its descendants (the kernel filters on these).
    pub fn ids(&self) -> Vec<u64> {
        self.dirs().iter().filter_map(|d| std::fs::metadata(d).ok().map(|m| m.ino())).collect()
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.dir.clone()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(entries) = std::fs::read_dir(&out[i]) {
                out.extend(
                    entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
                );
            }
            i += 1;
        }
        out
    }

    /// Processes in the cgroup and its descendants.
    pub fn processes(&self) -> BTreeSet<u32> {
        self.dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect()
    }

    /// The memory controller's limit and usage for this cgroup: v2 files in
    /// the directory itself, else the memory cgroup of a member process.
    pub fn memory(&self, mounts: &CgroupMounts) -> Option<CgroupMemory> {
        v2_memory(&self.dir).or_else(|| memory_of_process(*self.processes().iter().next()?, mounts))
    }
}

fn v2_memory(dir: &Path) -> Option<CgroupMemory> {
    let current = std::fs::read_to_string(dir.join("memory.current")).ok()?;
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    Some(CgroupMemory {
        limit: max.trim().parse().ok(),
        usage: current.trim().parse().ok()?,
        controller: format!("v2 {}", dir.display()),
    })
}

/// The memory controller's numbers for the cgroup a process is in (v2 when
/// the unified hierarchy has the memory controller, else v1).
pub fn memory_of_process(pid: u32, mounts: &CgroupMounts) -> Option<CgroupMemory> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path_for = |wanted: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            wanted(controllers).then(|| path.trim_start_matches('/').to_string())
        })
    };
    if let (Some(v2), Some(rel)) = (&mounts.v2, path_for(&|c: &str| c.is_empty())) {
        if let Some(m) = v2_memory(&v2.join(rel)) {
            return Some(m);
        }
    }
    let dir = mounts.v1_memory.as_ref()?.join(path_for(&|c: &str| c.split(',').any(|c| c == "memory"))?);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
    let limit = read("memory.limit_in_bytes").filter(|l| *l < 1 << 62);
    Some(CgroupMemory {
        limit,
        usage: read("memory.usage_in_bytes")?,
        controller: format!("v1 {}", dir.display()),
    })
}

/// A process's cgroup in the unified (v2) hierarchy, e.g. `/system.slice/x.service`.
pub fn v2_path_of(pid: u32) -> Option<String> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    own.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// The container id in a cgroup directory name, as runtimes name them:
/// `<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`; not the runtime monitor's own (`libpod-conmon-<id>.scope`).
fn container_id(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if stem.contains("conmon-") {
        return None;
    }
    let id = stem.rsplit('-').next()?;
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let m = CgroupMounts::parse(hybrid);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1_memory.as_deref(), Some(Path::new("/sys/fs/cgroup/memory")));
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = CgroupMounts::parse(unified);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(m.v1_memory, None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn recognises_runtime_cgroup_names() {
        let id = "4f2a".repeat(16);
        for name in [
            id.clone(),
            format!("docker-{id}.scope"),
            format!("cri-containerd-{id}.scope"),
            format!("libpod-{id}.scope"),
        ] {
            assert_eq!(container_id(&name).as_deref(), Some(id.as_str()), "{name}");
        }
        assert_eq!(container_id("system.slice"), None);
        assert_eq!(container_id("docker-abc.scope"), None);
        // podman's monitor, created before the container's own scope
        assert_eq!(container_id(&format!("libpod-conmon-{id}.scope")), None);
    }
}
