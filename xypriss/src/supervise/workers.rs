//! What `--workers auto` reads of the host: the memory this process may use,
//! the smaller of the host's available memory and what is left under this
//! process's memory cgroup limit (v1 or v2). The count itself is decided by
//! `settings::auto_workers`, from these figures and the CPUs
//! (`available_parallelism`, which honours affinity, cpusets and quotas).

use std::{fs, path::PathBuf};

use procfs::{Current as _, Meminfo, process::Process};

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
