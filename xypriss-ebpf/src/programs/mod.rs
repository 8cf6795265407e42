//! One file per tracepoint; in it, one program per variant of its prototype.

mod mark_victim;
mod page_fault_user;
mod rss_stat;
mod sched_process_exit;
mod sched_process_fork;

use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

use xypriss_ebpf::rss_stat::{NR_MM_COUNTERS, TaskEntry, WorkerState};

/// Atomically replaces `*slot` with `value` and returns the old value.
///
/// Threads of one process update its counters from several CPUs at once. With
/// an exchange, the deltas added to the worker's totals always telescope to the
/// latest value, whatever the interleaving.
#[inline(always)]
fn exchange(slot: *mut i64, value: i64) -> i64 {
    // `AtomicI64` has no read-modify-write methods on the BPF target.
    unsafe { atomic_xchg::<i64, { AtomicOrdering::Relaxed }>(slot, value) }
}

/// Takes a task's counters out of its worker's totals, and zeroes them.
#[inline(always)]
fn forget(task: &mut TaskEntry, state: *mut WorkerState) {
    for m in 0..NR_MM_COUNTERS {
        let old = exchange(&mut task.counters[m], 0);
        add(unsafe { &mut (*state).counters[m] }, -old);
    }
}

/// Atomically adds `delta` to `*slot`.
#[inline(always)]
fn add(slot: *mut i64, delta: i64) {
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(slot, delta) };
}
