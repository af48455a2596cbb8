//! Allocator settings for commands that build and drop buffers stage after
//! stage.
//!
//! A stream worker builds and drops Arrow buffers of a few MiB for every
//! decoded chunk and every micro-batch; a training set, for every bucket of
//! its as-of join (keys, times, sort orders, Polars' frames, the gathered
//! columns). glibc's malloc serves allocations above its mmap threshold
//! with fresh mappings and hands freed heap back to the kernel past its
//! trim threshold, so each batch pays again for page faults and zeroed
//! pages (`clear_page` was a leading entry in profiles of `kiln stream`;
//! on a training set of 1 M labels over 10 M feature rows the defaults
//! took 465 k page faults and 4.7 s of CPU, these settings 229 k and 3.7
//! s). Raising both thresholds lets those buffers be reused from the
//! heap. `kiln run` keeps glibc's defaults: on the sample pipelines the
//! same settings saved no time and held up to a quarter more memory.

/// Buffers up to this size come from the heap instead of their own mapping.
/// glibc refuses more than half its heap size (32 MiB on 64-bit targets).
const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of the heap is returned only past this size.
const TRIM_THRESHOLD: usize = 1 << 30;

/// Tune the allocator to reuse freed buffers. Returns whether the settings
/// were applied (only glibc on Linux takes them).
pub fn tune_for_reuse() -> bool {
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
    fn glibc_accepts_the_reuse_thresholds() {
        assert!(tune_for_reuse());
    }
}
