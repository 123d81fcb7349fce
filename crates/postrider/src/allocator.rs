//! Makes freed large buffers go back to the system. glibc's malloc raises its mmap threshold
//! after each large free (up to 32 MiB), so later message-sized buffers come from per-thread
//! arenas that keep them after they are freed: a relay that once held a few 25 MiB messages
//! would keep hundreds of MiB for ever. A fixed threshold serves every buffer of 1 MiB or more
//! (only whole messages and their copies) with its own mapping, unmapped when freed.

/// Buffers from this size on get a mapping of their own.
const MMAP_THRESHOLD: i32 = 1024 * 1024;

/// Sets the allocator up for the relay; call in `serve` before the runtime's threads start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn return_large_buffers() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other
    // thread exists, and a refused setting (return 0) just keeps glibc's default.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if set == 0 {
        tracing::warn!("could not fix the allocator's mmap threshold");
    }
}

/// Other allocators return large buffers on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_large_buffers() {}
