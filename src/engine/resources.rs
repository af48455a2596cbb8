//! How much CPU and memory this process may use: a container's cgroup
//! limits when there are any, the machine's otherwise.

use std::path::PathBuf;

/// Resource settings for one DataFusion session.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Parallelism of scans, joins and aggregates.
    pub target_partitions: usize,
    /// Bytes the memory pool may hand out before operators spill.
    pub memory_pool_bytes: usize,
    /// Bytes for the buffers the pool does not see: Kafka fetches in flight
    /// and the Parquet writers' row groups, sized from it.
    pub buffer_bytes: usize,
    /// Where spill files go; the OS temp dir when `None`.
    pub spill_dir: Option<PathBuf>,
}

/// Share of the memory limit given to DataFusion's pool. The rest is for
/// what the pool does not see: batches in flight, Delta and Parquet
/// writers, the allocator's own slack.
const POOL_SHARE: f64 = 0.6;
/// Share of the memory limit for fetch and write buffers; the rest of what
/// the pool does not get is for the program itself and the allocator.
const BUFFER_SHARE: f64 = 0.15;

impl Resources {
    /// From the environment: `KILN_MEMORY_LIMIT` (bytes, or with a K/M/G
    /// suffix) and `KILN_SPILL_DIR` override what the container says.
    pub fn detect() -> Self {
        let limit = std::env::var("KILN_MEMORY_LIMIT")
            .ok()
            .and_then(|v| parse_bytes(&v))
            .or_else(cgroup_memory_limit)
            .or_else(total_memory)
            .unwrap_or(4 << 30);
        Self {
            // Respects cgroup CPU quotas on Linux.
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_pool_bytes: (limit as f64 * POOL_SHARE) as usize,
            buffer_bytes: (limit as f64 * BUFFER_SHARE) as usize,
            spill_dir: std::env::var_os("KILN_SPILL_DIR").map(PathBuf::from),
        }
    }
}

impl Resources {
    /// One of `n` sessions that run at once: each gets an equal share of
    /// the memory, and all of the CPUs (they take turns on them).
    pub fn shared_by(&self, n: usize) -> Self {
        let n = n.max(1);
        Self {
            memory_pool_bytes: self.memory_pool_bytes / n,
            buffer_bytes: self.buffer_bytes / n,
            ..self.clone()
        }
    }
}

/// `512M`, `4G`, `1048576`.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 1usize << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits.trim().parse::<usize>().ok()?.checked_mul(mult)
}

fn cgroup_memory_limit() -> Option<usize> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            // "max", or a v1 limit so large it means "none".
            if let Ok(n) = text.trim().parse::<usize>()
                && n < (1usize << 50)
            {
                return Some(n);
            }
        }
    }
    None
}

fn total_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("lots"), None);
        // Too large to hold: refused, not wrapped around.
        assert_eq!(parse_bytes("99999999999999999999G"), None);
        assert_eq!(parse_bytes(&format!("{}G", usize::MAX >> 20)), None);
    }

    #[test]
    fn detects_something_sane() {
        let r = Resources::detect();
        assert!(r.target_partitions >= 1);
        assert!(r.memory_pool_bytes > 0);
    }
}
