//! The pool's size and bounds, as the configuration gives them, and what
//! `workers: "auto"` means on a given host.
//!
//! Why the auto count is computed here, from figures the caller read: it is
//! a decision (how many workers fit), and a decision is tested on synthetic
//! hosts. Reading the host is the caller's part.

use xypriss_ebpf::MAX_WORKERS;

use super::{MemoryConfig, WorkerCount};

/// Every option of XyPriss's cluster configuration, resolved: the pool's
/// size and bounds (held here once), and the memory options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `workers`.
    pub workers: WorkerCount,
    /// `autoScaling.minWorkers`.
    pub min_workers: u32,
    /// `autoScaling.maxWorkers`.
    pub max_workers: u32,
    /// `resources` and the rest of `autoScaling`.
    pub memory: MemoryConfig,
}

impl Default for Options {
    /// `"auto"` (the reference), then ours: a pool bounded only by the
    /// kernel maps' size.
    fn default() -> Self {
        Self {
            workers: WorkerCount::Auto,
            min_workers: 1,
            max_workers: MAX_WORKERS,
            memory: MemoryConfig::default(),
        }
    }
}

/// What `workers: "auto"` reads from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The CPUs this process may use.
    pub cpus: u32,
    /// Memory available to the pool (the host's, or its cgroup's room), if known.
    pub available: Option<u64>,
}

/// The pool's size at start: `workers` when it is a number; for `auto`, one
/// worker per CPU, no more than the memory holds at `maxMemoryPerWorker`
/// each. With `memoryManagement` on, that memory is `maxTotalMemory`, or
/// what is available less `memoryReservation` if that is smaller. Always
/// within `minWorkers..=maxWorkers` (the checks already made the smallest
/// pool fit `maxTotalMemory`).
pub fn auto_workers(host: Host, options: &Options) -> u32 {
    let count = match options.workers {
        WorkerCount::Fixed(n) => return n,
        WorkerCount::Auto => {
            let memory = &options.memory;
            let management = &memory.memory_management;
            let room = if management.enabled {
                let budget = management.max_total_memory;
                host.available.map_or(budget, |available| {
                    budget.min(available.saturating_sub(management.memory_reservation))
                })
            } else {
                host.available.unwrap_or(u64::MAX)
            };
            let by_memory = room / memory.max_memory_per_worker.max(1);
            host.cpus.min(u32::try_from(by_memory).unwrap_or(u32::MAX))
        }
    };
    count.clamp(options.min_workers.max(1), options.max_workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// The reference's "For High Memory Environments" example.
    fn high_memory() -> Options {
        let mut options = Options::default();
        options.memory.max_memory_per_worker = 2 * GIB;
        let management = &mut options.memory.memory_management;
        management.max_total_memory = 12 * GIB;
        management.memory_reservation = 2 * GIB;
        options
    }

    #[test]
    fn auto_fits_max_total_memory_on_a_big_host() {
        let host = Host {
            cpus: 16,
            available: Some(64 * GIB),
        };
        // 12 GB at 2 GB a worker: 6, not one per CPU.
        assert_eq!(auto_workers(host, &high_memory()), 6);
    }

    #[test]
    fn auto_keeps_the_reservation_free() {
        let host = Host {
            cpus: 16,
            available: Some(8 * GIB),
        };
        // 8 GB available less 2 GB reserved: 3 workers of 2 GB.
        assert_eq!(auto_workers(host, &high_memory()), 3);
        let unknown = Host {
            cpus: 16,
            available: None,
        };
        assert_eq!(auto_workers(unknown, &high_memory()), 6);
    }

    #[test]
    fn auto_is_the_cpus_when_memory_is_plenty() {
        let host = Host {
            cpus: 2,
            available: Some(64 * GIB),
        };
        assert_eq!(auto_workers(host, &high_memory()), 2);
    }

    #[test]
    fn auto_stays_within_the_pool_bounds() {
        let starved = Host {
            cpus: 16,
            available: Some(GIB),
        };
        let mut options = high_memory();
        options.min_workers = 2;
        assert_eq!(auto_workers(starved, &options), 2);
        options.max_workers = 4;
        let big = Host {
            cpus: 64,
            available: Some(1 << 50),
        };
        options.memory.memory_management.max_total_memory = 1 << 50;
        assert_eq!(auto_workers(big, &options), 4);
    }

    #[test]
    fn without_memory_management_only_the_host_bounds_auto() {
        let mut options = high_memory();
        options.memory.memory_management.enabled = false;
        let host = Host {
            cpus: 16,
            available: Some(64 * GIB),
        };
        assert_eq!(auto_workers(host, &options), 16);
    }

    #[test]
    fn a_fixed_count_is_kept() {
        let mut options = high_memory();
        options.workers = WorkerCount::Fixed(9);
        let host = Host {
            cpus: 1,
            available: Some(GIB),
        };
        assert_eq!(auto_workers(host, &options), 9);
    }

    #[test]
    fn never_fewer_than_one_worker_nor_more_than_the_kernel_maps_hold() {
        let mut options = Options::default();
        options.memory.memory_management.enabled = false;
        let none = Host {
            cpus: 0,
            available: Some(10 << 20),
        };
        assert_eq!(auto_workers(none, &options), 1);
        let huge = Host {
            cpus: 100_000,
            available: None,
        };
        assert_eq!(auto_workers(huge, &options), MAX_WORKERS);
    }
}
