//! What the pool reads from the host besides its workers' memory: the host's
//! memory and swap, memory pressure (PSI), the workers' CPU time, and the
//! process table (parents, threads). Every such read goes through [`Host`],
//! so that the pool reads the machine in one place, never as a side effect
//! hidden in a status or a datagram handler, and so that its decisions can
//! be tested on a made-up host without root.

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

use procfs::{Current as _, Meminfo, process::Process};

/// The host's memory and swap, in bytes (`/proc/meminfo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl Memory {
    /// Memory in use: all of it but what is available.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }

    /// Swap in use, percent of the swap there is; `None` without swap.
    pub fn swap_used_pct(&self) -> Option<f64> {
        (self.swap_total > 0).then(|| {
            self.swap_total.saturating_sub(self.swap_free) as f64 * 100.0 / self.swap_total as f64
        })
    }
}

/// The host, as the pool reads it.
pub trait Host {
    /// The host's memory and swap, when `/proc/meminfo` says (MemAvailable included).
    fn memory(&self) -> Option<Memory>;
    /// The smaller of the host's available memory and the room under
    /// xypriss's own memory cgroup limit: what more workers could use.
    fn available_memory(&self) -> Option<u64>;
    /// PSI `some avg10` of memory, percent; `None` without PSI.
    fn memory_pressure(&self) -> Option<f64>;
    /// CPU time (user + system, clock ticks) of process `pid`.
    fn cpu_ticks(&self, pid: u32) -> Option<u64>;
    /// Clock ticks per second.
    fn ticks_per_second(&self) -> u64;
    /// The parent of process `pid`.
    fn parent(&self, pid: u32) -> Option<u32>;
    /// Whether `pid` is a process (a thread-group leader) rather than a thread.
    fn is_process(&self, pid: u32) -> bool;
}

/// The real host, read through `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Procfs;

impl Host for Procfs {
    fn memory(&self) -> Option<Memory> {
        let m = Meminfo::current().ok()?;
        Some(Memory {
            total: m.mem_total,
            available: m.mem_available?,
            swap_total: m.swap_total,
            swap_free: m.swap_free,
        })
    }

    fn available_memory(&self) -> Option<u64> {
        available_memory()
    }

    fn memory_pressure(&self) -> Option<f64> {
        psi_some_avg10(&fs::read_to_string("/proc/pressure/memory").ok()?)
    }

    fn cpu_ticks(&self, pid: u32) -> Option<u64> {
        let stat = Process::new(pid as i32).ok()?.stat().ok()?;
        Some(stat.utime + stat.stime)
    }

    fn ticks_per_second(&self) -> u64 {
        procfs::ticks_per_second()
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        let stat = Process::new(pid as i32).ok()?.stat().ok()?;
        u32::try_from(stat.ppid).ok()
    }

    fn is_process(&self, pid: u32) -> bool {
        Process::new(pid as i32)
            .and_then(|p| p.status())
            .is_ok_and(|s| s.tgid == pid as i32)
    }
}

/// PSI's `some avg10` (percent) from the text of /proc/pressure/memory.
pub fn psi_some_avg10(text: &str) -> Option<f64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?
        .parse()
        .ok()
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

/// The kernel's initial pid namespace's inode (`PROC_PID_INIT_INO`): the
/// same on every Linux.
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The inode of this process's pid namespace when it is not the host's
/// (the kernel's initial one).
pub fn own_pid_namespace() -> Option<u64> {
    let inode = fs::metadata("/proc/self/ns/pid").ok()?.ino();
    (inode != INIT_PID_NAMESPACE).then_some(inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_avg10_is_read_from_the_some_line() {
        let text = "some avg10=12.34 avg60=1.00 avg300=0.00 total=44306\n\
                    full avg10=3.00 avg60=0.00 avg300=0.00 total=11718\n";
        assert_eq!(psi_some_avg10(text), Some(12.34));
        assert_eq!(psi_some_avg10("full avg10=3.00\n"), None);
        assert_eq!(psi_some_avg10("some avg10=x\n"), None);
        assert_eq!(psi_some_avg10(""), None);
    }

    #[test]
    fn used_memory_and_swap_share() {
        let m = Memory {
            total: 1000,
            available: 300,
            swap_total: 200,
            swap_free: 150,
        };
        assert_eq!(m.used(), 700);
        assert_eq!(m.swap_used_pct(), Some(25.0));
        assert_eq!(Memory::default().swap_used_pct(), None);
    }
}
