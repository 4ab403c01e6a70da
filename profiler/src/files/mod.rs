//! Files the profiler touches as root on someone else's behalf: modules read
//! from a target ([`target`]: never a symlink out of its root, never a FIFO
//! or device, bounded) and outputs written for the user ([`output`]: never
//! through a planted symlink, always complete or absent).

pub mod output;
pub mod target;

/// 16 random hex digits from the kernel's generator (unpredictable names).
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, bytes.len() as isize, "getrandom failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
