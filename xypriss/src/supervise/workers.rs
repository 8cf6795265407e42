//! `--workers auto`: as many workers as the CPUs and the memory this process
//! may use allow. Both honour limits, not only host totals: the CPU count
//! honours affinity, cpusets and CPU quotas (`available_parallelism`), and the
//! memory is the smaller of the host's available memory and what is left
//! under this process's memory cgroup limit (v1 or v2).

use std::{fs, path::PathBuf};

use procfs::{Current as _, Meminfo, process::Process};

/// The memory a worker is budgeted when no `--max-memory-per-worker` is given.
pub const DEFAULT_WORKER_BUDGET: u64 = 256 << 20;

/// The worker count for `cpus` CPUs and `available` bytes of memory (if known),
/// with `budget` bytes per worker: never more than the CPUs, never fewer than one.
pub fn auto_count(cpus: u32, available: Option<u64>, budget: u64) -> u32 {
    let by_memory = available
        .map(|bytes| (bytes / budget.max(1)).min(u64::from(u32::MAX)) as u32)
        .unwrap_or(u32::MAX);
    cpus.min(by_memory).clamp(1, xypriss_ebpf::MAX_WORKERS)
}

/// Reads this machine's limits and applies [`auto_count`].
pub fn auto(limit_per_worker: Option<u64>) -> u32 {
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    auto_count(
        cpus,
        available_memory(),
        limit_per_worker.unwrap_or(DEFAULT_WORKER_BUDGET),
    )
}

/// The smaller of the host's MemAvailable and the room under our memory cgroup's limit.
pub fn available_memory() -> Option<u64> {
    let host = Meminfo::current().ok().and_then(|m| m.mem_available);
    match (host, cgroup_room()) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// Limit minus usage of this process's memory cgroup, when it has a limit.
fn cgroup_room() -> Option<u64> {
    let groups = Process::myself().ok()?.cgroups().ok()?;
    for group in groups.0 {
        let rel = group.pathname.trim_start_matches('/');
        let (dir, limit, usage) = if group.hierarchy == 0 {
            (
                PathBuf::from("/sys/fs/cgroup").join(rel),
                "memory.max",
                "memory.current",
            )
        } else if group.controllers.iter().any(|c| c == "memory") {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(rel),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let read = |name: &str| -> Option<u64> {
            fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
        };
        // "max" (v2) fails to parse, and v1's "no limit" is a huge number: both mean no limit here.
        if let (Some(limit), Some(usage)) = (read(limit), read(usage))
            && limit < (1 << 60)
        {
            return Some(limit.saturating_sub(usage));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_bound_the_count_when_memory_is_plenty() {
        assert_eq!(auto_count(8, Some(64 << 30), 256 << 20), 8);
        assert_eq!(auto_count(8, None, 256 << 20), 8);
    }

    #[test]
    fn memory_bounds_the_count_when_it_is_short() {
        assert_eq!(auto_count(8, Some(1 << 30), 512 << 20), 2);
    }

    #[test]
    fn never_fewer_than_one_worker() {
        assert_eq!(auto_count(8, Some(10 << 20), 512 << 20), 1);
        assert_eq!(auto_count(0, None, 1), 1);
    }

    #[test]
    fn never_more_than_the_kernel_maps_hold() {
        assert_eq!(auto_count(100_000, None, 1), xypriss_ebpf::MAX_WORKERS);
    }
}
