//! `kmem/rss_stat`, as a raw tracepoint: fires on updates of an mm's
//! resident counters. Attached raw, the kernel builds no trace record (the
//! classic tracepoint sums the counter's per-CPU parts for every record).
//!
//! Two variants, one per prototype; the loader reads this kernel's
//! (`btf_trace_rss_stat` in its BTF) and loads the one that fits:
//! - [`rss_stat`]: `(struct mm_struct *mm, int member)` (6.2 on). It fires
//!   on every update, and the program reads `mm->rss_stat[member].count`, a
//!   `percpu_counter`'s global part: the value `/proc/<pid>/status` shows
//!   too, off from the exact sum by at most the per-CPU batches.
//! - [`rss_stat_count`]: `(struct mm_struct *mm, int member, long count)`
//!   (before 6.2): the counter is an `atomic_long_t` and `count` its new
//!   value in pages. With `SPLIT_RSS_COUNTING` (x86-64's default) each
//!   thread caches its own faults' updates and adds them to the mm's
//!   counter every 64 faults (and at exit), which is when this fires. So it
//!   fires about once per 64 faults per thread, and each thread's last
//!   cached pages (up to 64 faults' worth, 256 KiB of 4 KiB pages, more with
//!   fault-around on file pages) are not seen until it flushes. That is
//!   what `/proc/<pid>/status` shows too: it reads the same mm counter.
//!
//! Unwatched processes cost two array reads, no hash lookup: the `WATCHED`
//! bit of the current process, and the `MM_OWNED` count of `mm` (`filter.rs`). For watched ones, the per-task
//! counters and the worker's totals are updated here, and a record goes to
//! userspace only when the worker's resident size moved by the granularity, or
//! crossed one of its thresholds (then with an immediate wake-up).
//!
//! # Minimum kernel version
//!
//! 5.5 for the tracepoint (and `bpf_probe_read_kernel`), 5.8 for the ring
//! buffer, 5.12 for BPF atomics: [`rss_stat_count`] from 5.12 on,
//! [`rss_stat`] from 6.2, where `mm->rss_stat` became per-CPU counters.

use aya_ebpf::{
    helpers::bpf_get_current_task, macros::raw_tracepoint, programs::RawTracePointContext,
};
use xypriss_ebpf::{
    ring_buf::{KIND_SAMPLE, KIND_THRESHOLD, Record},
    rss_stat::{NR_MM_COUNTERS, TaskEntry, WorkerState, level, resident},
};

use super::{add, exchange, forget};
use crate::{
    filter::{insert_owner, maybe_owned, maybe_watched, remove_owner},
    maps::{MM_OWNERS, TASKS, THRESHOLDS, WORKERS, layout, settings},
    record::{Wakeup, current_tgid, read, send, totals},
};

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat(ctx: RawTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    if let Some(watched) = owner(mm) {
        let member: i32 = ctx.arg(1);
        let _ = per_cpu_counter(mm, member, watched);
    }
    0
}

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat_count(ctx: RawTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    if let Some(watched) = owner(mm) {
        let member: i32 = ctx.arg(1);
        let pages: i64 = ctx.arg(2);
        let _ = account(mm, member, pages, watched);
    }
    0
}

/// The task whose memory `mm` is, and its tgid, if it is watched.
#[inline(always)]
fn owner(mm: u64) -> Option<(&'static mut TaskEntry, u32)> {
    let tgid = current_tgid();
    if maybe_watched(tgid)
        && let Some(task) = TASKS.get_ptr_mut(&tgid)
    {
        let task = unsafe { &mut *task };
        if task.mm == mm {
            return Some((task, tgid));
        }
        // A new mm for this process (its first event, or after an exec), or
        // another process's mm touched from here (a fork copying pages).
        let current_mm: u64 = read(unsafe { bpf_get_current_task() }, layout().task_mm)?;
        if current_mm == mm {
            return Some((task, tgid));
        }
    }
    // Another context (reclaim, a fork, an exit) updating a watched mm.
    if !maybe_owned(mm) {
        return None;
    }
    let tgid = *unsafe { MM_OWNERS.get(&mm) }?;
    let task = unsafe { &mut *TASKS.get_ptr_mut(&tgid)? };
    (task.mm == mm).then_some((task, tgid))
}

/// `member` as an index into the counters. The kernel's members are
/// `0..NR_MM_COUNTERS`; a mask, rather than a compare the compiler may do on
/// the 32-bit value before indexing with the 64-bit one, is a bound every
/// verifier can follow (6.1's refused the compare).
#[inline(always)]
fn counter_index(member: i32) -> usize {
    const _: () = assert!(NR_MM_COUNTERS.is_power_of_two());
    (member as u32 & (NR_MM_COUNTERS as u32 - 1)) as usize
}

/// Reads `mm->rss_stat[member].count`, then accounts it.
#[inline(always)]
fn per_cpu_counter(mm: u64, member: i32, watched: (&'static mut TaskEntry, u32)) -> Option<()> {
    let index = counter_index(member) as u32;
    let l = layout();
    let pages: i64 = read(mm, l.mm_rss_stat + index * l.counter_size + l.counter_count)?;
    account(mm, member, pages, watched)
}

/// Counter `member` of `mm`, owned by the watched `task`, is now `pages`.
#[inline(always)]
fn account(
    mm: u64,
    member: i32,
    pages: i64,
    (task, tgid): (&'static mut TaskEntry, u32),
) -> Option<()> {
    let member = counter_index(member);
    let size = pages.max(0) << layout().page_shift;
    let slot = task.worker;
    let state = WORKERS.get_ptr_mut(slot)?;
    if task.mm != mm {
        if task.mm != 0 {
            // The first event on a new mm, after an exec: the old mm no longer counts.
            forget(task, state);
            remove_owner(task.mm);
        }
        // With `mm == 0` (a worker registered before exec, or a new child) the
        // counters are still zero: nothing to take back.
        task.mm = mm;
        insert_owner(mm, tgid);
    }
    let old = exchange(&mut task.counters[member], size);
    add(unsafe { &mut (*state).counters[member] }, size - old);
    report(slot, tgid, state)
}

/// Sends the worker's totals if they crossed a threshold or moved by the granularity.
#[inline(always)]
fn report(slot: u32, tgid: u32, state: *mut WorkerState) -> Option<()> {
    let counters = totals(state);
    let rss = resident(&counters);
    let thresholds = THRESHOLDS.get(slot)?;
    let level = level(thresholds, rss);
    let state = unsafe { &mut *state };
    let (kind, wakeup) = if level != state.level {
        (KIND_THRESHOLD, Wakeup::Now)
    } else if (rss - state.reported_rss).unsigned_abs() >= settings().granularity {
        (KIND_SAMPLE, Wakeup::Batched)
    } else {
        return None;
    };
    let record = Record {
        kind,
        worker: slot,
        pid: tgid,
        aux: level,
        ktime_ns: 0,
        counters,
    };
    // Only a record that was sent moves the baseline, so a lost crossing is
    // sent again on the next update.
    if send(record, wakeup) {
        state.level = level;
        state.reported_rss = rss;
    }
    Some(())
}
