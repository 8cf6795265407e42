//! The ABI between xypriss's BPF programs and its userspace controller.
//!
//! Everything here is `#[repr(C)]`, laid out by hand so that no field is
//! preceded by hidden padding, and checked by a size assertion: the kernel
//! side and the host side compile this one file for two targets, and a
//! silent layout difference would corrupt every record.
//!
//! Names follow the kernel objects they belong to: [`rss_stat`] for the
//! `kmem/rss_stat` accounting, [`ring_buf`] for the records userspace reads,
//! and [`trace_point`] for the load-time kernel layout.
#![no_std]

/// The largest number of concurrently watched workers (slots in the per-worker arrays).
pub const MAX_WORKERS: u32 = 4096;

/// The largest number of watched tasks (workers, their descendants, and their threads).
pub const MAX_TASKS: u32 = 65536;

/// Words of the `WATCHED` bitmap: one bit per possible tgid, up to the
/// kernel's `PID_MAX_LIMIT` on 64-bit (4,194,304); 512 KiB.
pub const WATCHED_WORDS: u32 = (4 * 1024 * 1024) / 64;

/// log2 of the `MM_OWNED` filter's slots.
pub const MM_OWNED_BITS: u32 = 14;

/// Map names, shared so that neither side can misspell them.
pub mod map_name {
    /// `HashMap<u32 tgid, TaskEntry>`: the watched tasks. Userspace inserts workers;
    /// `sched_process_fork` inserts their descendants; `sched_process_exit` removes them.
    pub const TASKS: &str = "TASKS";
    /// `HashMap<u64 mm, u32 tgid>`: who owns an `mm_struct`, learned from events where it is `current->mm`.
    pub const MM_OWNERS: &str = "MM_OWNERS";
    /// `Array<WorkerState>` indexed by worker slot: kernel-maintained totals.
    pub const WORKERS: &str = "WORKERS";
    /// `Array<Thresholds>` indexed by worker slot: written by userspace.
    pub const THRESHOLDS: &str = "THRESHOLDS";
    /// `PerCpuArray<u64>` indexed by worker slot: user page faults.
    pub const FAULTS: &str = "FAULTS";
    /// `PerCpuArray<u64>` with one entry: records that did not fit in the ring buffer.
    pub const LOST: &str = "LOST";
    /// `Array<u64>` of [`crate::WATCHED_WORDS`] words, bit `tgid % 64` of word
    /// `tgid / 64` set while process `tgid` may be in `TASKS`: the programs
    /// test it before any hash lookup, so an unwatched process costs an
    /// array read (inlined by the verifier). Set by `sched_process_fork` for
    /// the children of watched processes and of the supervisor (which is how
    /// a worker, registered in `TASKS` by itself before exec, has its bit),
    /// cleared by `sched_process_exit`. Kernel-written only, with atomic
    /// or/and. A set bit without a `TASKS` entry costs only the hash lookup.
    pub const WATCHED: &str = "WATCHED";
    /// `Array<u32>` of `1 << MM_OWNED_BITS` counts: how many `MM_OWNERS` keys
    /// hash to each slot (a counting filter), so that `rss_stat` in an
    /// unwatched context looks an mm up in `MM_OWNERS` only when one might
    /// be there. Kernel-written only; never below the true count.
    pub const MM_OWNED: &str = "MM_OWNED";
    /// The ring buffer of [`crate::ring_buf::Record`]s.
    pub const EVENTS: &str = "EVENTS";
}

/// Program names, as the `#[raw_tracepoint]` functions are called in the object.
///
/// A tracepoint whose arguments changed across kernels has one program per
/// variant; the loader loads the one this kernel's BTF prototype calls for.
pub mod program_name {
    /// `rss_stat(mm, member)` (6.2 on): reads `mm->rss_stat[member].count`.
    pub const RSS_STAT: &str = "rss_stat";
    /// `rss_stat(mm, member, count)` (before 6.2): the new count is an argument.
    pub const RSS_STAT_COUNT: &str = "rss_stat_count";
    pub const PAGE_FAULT_USER: &str = "page_fault_user";
    /// `mark_victim(task, uid)` (6.12, 6.18, and Debian's 6.1.170 by backport).
    pub const MARK_VICTIM: &str = "mark_victim";
    /// `mark_victim(pid)` (older kernels, such as 5.15).
    pub const MARK_VICTIM_PID: &str = "mark_victim_pid";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    /// `sched_process_exit(task, group_dead)` (6.16 on).
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    /// `sched_process_exit(task)` (before 6.16): the group is dead when
    /// `task->signal->live` is 0.
    pub const SCHED_PROCESS_EXIT_LIVE: &str = "sched_process_exit_live";
}

/// `kmem/rss_stat` accounting state.
pub mod rss_stat {
    /// `MM_FILEPAGES`: file-backed resident pages.
    pub const MM_FILEPAGES: usize = 0;
    /// `MM_ANONPAGES`: anonymous resident pages.
    pub const MM_ANONPAGES: usize = 1;
    /// `MM_SWAPENTS`: swapped-out anonymous pages.
    pub const MM_SWAPENTS: usize = 2;
    /// `MM_SHMEMPAGES`: resident shared memory pages.
    pub const MM_SHMEMPAGES: usize = 3;
    /// `NR_MM_COUNTERS`.
    pub const NR_MM_COUNTERS: usize = 4;

    /// One watched task (a worker process, one of its descendants, or a thread of either).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TaskEntry {
        /// The worker slot the task's memory counts toward.
        pub worker: u32,
        pub _pad: u32,
        /// The `mm_struct` last seen as this task's own (`current->mm`); 0 before any.
        pub mm: u64,
        /// The last value, in bytes, of each of the mm's counters.
        pub counters: [i64; NR_MM_COUNTERS],
    }
    const _: () = assert!(size_of::<TaskEntry>() == 48);

    /// Per-worker totals, maintained by the kernel programs only.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct WorkerState {
        /// The sum over the worker's processes of each counter, in bytes.
        pub counters: [i64; NR_MM_COUNTERS],
        /// The resident size last sent to userspace.
        pub reported_rss: i64,
        /// How many thresholds the resident size was at or above when last reported.
        pub level: u32,
        pub _pad: u32,
    }
    const _: () = assert!(size_of::<WorkerState>() == 48);

    /// Per-worker thresholds in bytes, written by userspace. 0 means unset.
    ///
    /// A change of the count of thresholds at or below the resident size sends a
    /// record at once, with a wake-up, whatever the granularity.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Thresholds {
        pub bytes: [u64; 3],
    }
    const _: () = assert!(size_of::<Thresholds>() == 24);

    /// The resident set size: file + anon + shmem, as `/proc/<pid>/status` VmRSS.
    #[inline(always)]
    pub fn resident(counters: &[i64; NR_MM_COUNTERS]) -> i64 {
        counters[MM_FILEPAGES] + counters[MM_ANONPAGES] + counters[MM_SHMEMPAGES]
    }

    /// How many of the set thresholds `rss` is at or above.
    #[inline(always)]
    pub fn level(thresholds: &Thresholds, rss: i64) -> u32 {
        let mut level = 0;
        let mut i = 0;
        while i < thresholds.bytes.len() {
            let t = thresholds.bytes[i];
            if t != 0 && rss >= 0 && rss as u64 >= t {
                level += 1;
            }
            i += 1;
        }
        level
    }
}

/// Records sent through the `EVENTS` ring buffer.
pub mod ring_buf {
    use crate::rss_stat::NR_MM_COUNTERS;

    /// A worker's resident size moved by the granularity since the last record.
    pub const KIND_SAMPLE: u32 = 1;
    /// A worker's resident size crossed one of its thresholds (either way).
    pub const KIND_THRESHOLD: u32 = 2;
    /// A watched task cloned a task (a process or a thread); `pid` is the new task.
    pub const KIND_FORK: u32 = 3;
    /// A watched process exited; its memory no longer counts toward the worker.
    pub const KIND_EXIT: u32 = 4;
    /// The OOM killer chose a watched process as its victim.
    pub const KIND_OOM_VICTIM: u32 = 5;

    /// One ring-buffer record. 56 bytes, 8-byte aligned, no padding.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Record {
        /// One of the `KIND_*` constants.
        pub kind: u32,
        /// The worker slot.
        pub worker: u32,
        /// The process (tgid) concerned; for forks, the new task's pid.
        pub pid: u32,
        /// For thresholds and samples: the threshold level; for forks: the parent's tgid.
        pub aux: u32,
        /// `bpf_ktime_get_ns()` when the record was made (CLOCK_MONOTONIC).
        pub ktime_ns: u64,
        /// The worker's totals, in bytes, after the change.
        pub counters: [i64; NR_MM_COUNTERS],
    }
    const _: () = assert!(size_of::<Record>() == 56);

    /// The ring buffer's size in bytes: 4096 records.
    pub const BYTE_SIZE: u32 = 256 * 1024;
}

/// Global variables the loader sets before the programs are verified.
///
/// Every program is a raw tracepoint: it gets the tracepoint's C arguments
/// (`TP_PROTO`), not a trace record, so it needs no tracefs. What it reads
/// through those arguments (a task's pid, an mm's counters) is at offsets
/// read from the kernel's BTF at load time, never compiled in here.
pub mod trace_point {
    /// Kernel struct layouts the programs read, from BTF. A field a program
    /// does not read on this kernel stays 0.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct KernelLayout {
        /// `offsetof(struct task_struct, mm)`.
        pub task_mm: u32,
        /// `offsetof(struct task_struct, pid)`.
        pub task_pid: u32,
        /// `offsetof(struct task_struct, tgid)`.
        pub task_tgid: u32,
        /// `offsetof(struct task_struct, signal)`.
        pub task_signal: u32,
        /// `offsetof(struct signal_struct, live)`: an `atomic_t`, the count of live threads.
        pub signal_live: u32,
        /// `offsetof(struct mm_struct, rss_stat)`: an array of `struct percpu_counter`.
        pub mm_rss_stat: u32,
        /// `sizeof(struct percpu_counter)`.
        pub counter_size: u32,
        /// `offsetof(struct percpu_counter, count)`: an `s64` count of pages.
        pub counter_count: u32,
        /// log2 of the page size.
        pub page_shift: u32,
        pub _pad: u32,
    }
    const _: () = assert!(size_of::<KernelLayout>() == 40);

    /// Tunables, fixed at load.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Settings {
        /// A sample is sent when the resident size moved by at least this many bytes.
        pub granularity: u64,
        /// Samples wake userspace at most once per this many nanoseconds; the
        /// others are written without a wake-up and read at the next one.
        pub wakeup_interval_ns: u64,
        /// Non-zero: the programs log through aya-log.
        pub log: u32,
        /// The supervisor's tgid: its children get their `WATCHED` bit at
        /// fork, before they run, so that a worker put in `TASKS` before it
        /// execs the app is seen from the app's first instruction.
        pub supervisor: u32,
    }
    const _: () = assert!(size_of::<Settings>() == 24);

    /// The name of the [`KernelLayout`] global.
    pub const LAYOUT: &str = "LAYOUT";
    /// The name of the [`Settings`] global.
    pub const SETTINGS: &str = "SETTINGS";
}

/// Userspace reads and writes these through aya's typed maps.
#[cfg(feature = "user")]
mod pod {
    use crate::{
        rss_stat::{TaskEntry, Thresholds, WorkerState},
        trace_point::{KernelLayout, Settings},
    };

    // SAFETY: each is #[repr(C)], made of integers only, with no padding (see the size assertions).
    unsafe impl aya::Pod for TaskEntry {}
    unsafe impl aya::Pod for WorkerState {}
    unsafe impl aya::Pod for Thresholds {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for KernelLayout {}
}

#[cfg(test)]
mod tests {
    use super::rss_stat::{Thresholds, level, resident};

    #[test]
    fn level_counts_only_set_thresholds_at_or_below() {
        let t = Thresholds {
            bytes: [100, 0, 300],
        };
        assert_eq!(level(&t, 99), 0);
        assert_eq!(level(&t, 100), 1);
        assert_eq!(level(&t, 299), 1);
        assert_eq!(level(&t, 300), 2);
        assert_eq!(level(&t, -5), 0);
    }

    #[test]
    fn resident_excludes_swap() {
        assert_eq!(resident(&[1, 2, 1000, 4]), 7);
    }
}
