//! `kmem/rss_stat`, as a raw tracepoint: fires on every update of an mm's
//! resident counters, with `(struct mm_struct *mm, int member)`.
//!
//! Attached raw, the kernel builds no trace record, and in particular does not
//! sum the counter's per-CPU parts on every page fault, as the classic
//! tracepoint does. The program reads `mm->rss_stat[member].count` itself:
//! the value `/proc/<pid>/status` shows too. The layout comes from BTF at load.
//!
//! Unwatched processes cost two hash lookups. For watched ones, the per-task
//! counters and the worker's totals are updated here, and a record goes to
//! userspace only when the worker's resident size moved by the granularity, or
//! crossed one of its thresholds (then with an immediate wake-up).
//!
//! # Minimum kernel version
//!
//! 6.2, where `mm->rss_stat` is an array of `percpu_counter` and the
//! tracepoint fires on every update.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use xypriss_ebpf::{
    ring_buf::{KIND_SAMPLE, KIND_THRESHOLD, Record},
    rss_stat::{NR_MM_COUNTERS, TaskEntry, WorkerState, level, resident},
};

use super::{add, exchange, forget};
use crate::{
    maps::{MM_OWNERS, TASKS, THRESHOLDS, WORKERS, layout, settings},
    record::{Wakeup, current_tgid, send, totals},
};

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat(ctx: RawTracePointContext) -> i32 {
    let _ = try_rss_stat(&ctx);
    0
}

/// The task whose memory `mm` is, and its tgid, if it is watched.
#[inline(always)]
fn owner(mm: u64) -> Option<(&'static mut TaskEntry, u32)> {
    let tgid = current_tgid();
    if let Some(task) = TASKS.get_ptr_mut(&tgid) {
        let task = unsafe { &mut *task };
        if task.mm == mm {
            return Some((task, tgid));
        }
        // A new mm for this process (its first event, or after an exec), or
        // another process's mm touched from here (a fork copying pages).
        let current = unsafe { bpf_get_current_task() } as *const u8;
        let current_mm: u64 =
            unsafe { bpf_probe_read_kernel(current.add(layout().task_mm as usize).cast()) }.ok()?;
        if current_mm == mm {
            return Some((task, tgid));
        }
    }
    // Another context (reclaim, a fork, an exit) updating a watched mm.
    let tgid = *unsafe { MM_OWNERS.get(&mm) }?;
    let task = unsafe { &mut *TASKS.get_ptr_mut(&tgid)? };
    (task.mm == mm).then_some((task, tgid))
}

#[inline(always)]
fn try_rss_stat(ctx: &RawTracePointContext) -> Option<()> {
    let mm: u64 = ctx.arg(0);
    let (task, tgid) = owner(mm)?;
    let member: i32 = ctx.arg(1);
    let member = usize::try_from(member)
        .ok()
        .filter(|&m| m < NR_MM_COUNTERS)?;
    let l = layout();
    let counter = mm as usize
        + l.mm_rss_stat as usize
        + member * l.counter_size as usize
        + l.counter_count as usize;
    let pages: i64 = unsafe { bpf_probe_read_kernel(counter as *const i64) }.ok()?;
    let size = pages.max(0) << l.page_shift;
    let slot = task.worker;
    let state = WORKERS.get_ptr_mut(slot)?;
    if task.mm != mm {
        if task.mm != 0 {
            // The first event on a new mm, after an exec: the old mm no longer counts.
            forget(task, state);
            let _ = MM_OWNERS.remove(&task.mm);
        }
        // With `mm == 0` (a worker registered before exec, or a new child) the
        // counters are still zero: nothing to take back.
        task.mm = mm;
        let _ = MM_OWNERS.insert(&mm, &tgid, 0);
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
