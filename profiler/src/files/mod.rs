//! Files the profiler touches as root on someone else's behalf: modules read
//! from a target ([`target`]: never a symlink out of its root, never a FIFO
//! or device, bounded) and outputs written for the user ([`output`]: never
//! through a planted symlink, always complete or absent).

pub mod output;
pub mod target;

/// Largest report, baseline or configuration file read (user-supplied input).
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Reads a user-supplied input file, refusing one over [`MAX_INPUT_BYTES`].
pub fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut data = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > MAX_INPUT_BYTES {
        anyhow::bail!(
            "{} is larger than {} MiB: not a file this profiler wrote",
            path.display(),
            MAX_INPUT_BYTES >> 20
        );
    }
    Ok(data)
}

/// 16 random hex digits from the kernel's generator (unpredictable names).
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, bytes.len() as isize, "getrandom failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
