//! Allocator settings for long-running workers.
//!
//! A stream worker builds and drops Arrow buffers of a few MiB for every
//! decoded chunk and every micro-batch. glibc's malloc serves allocations
//! above its mmap threshold with fresh mappings and hands freed heap back to
//! the kernel past its trim threshold, so each batch pays again for page
//! faults and zeroed pages (`clear_page` was a leading entry in profiles of
//! `kiln stream`). Raising both thresholds lets those buffers be reused from
//! the heap. File runs keep glibc's defaults: there the same settings would
//! only keep memory that a single pass never needs again.

/// Buffers up to this size come from the heap instead of their own mapping.
/// glibc refuses more than half its heap size (32 MiB on 64-bit targets).
const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of the heap is returned only past this size.
const TRIM_THRESHOLD: usize = 1 << 30;

/// Tune the allocator for a worker that runs batch after batch. Returns
/// whether the settings were applied (only glibc on Linux takes them).
pub fn tune_for_streaming() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters, which glibc
        // guards with its own lock; it takes no pointers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_streaming_thresholds() {
        assert!(tune_for_streaming());
    }
}
