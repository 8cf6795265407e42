//! `sched/sched_process_exit`: when the last thread of a watched process
//! exits, its memory stops counting toward the worker and userspace is told.
//!
//! Two raw-tracepoint variants, one per prototype; the loader reads this
//! kernel's (`btf_trace_sched_process_exit`) and loads the one that fits:
//! - [`sched_process_exit`]: `(struct task_struct *task, bool group_dead)`
//!   (6.16 on): the kernel says whether the thread group is dead.
//! - [`sched_process_exit_live`]: `(struct task_struct *task)`: the group is
//!   dead when `task->signal->live`, which `do_exit` decrements before this
//!   tracepoint, is 0. Two threads exiting at once may both see 0; the second
//!   finds the process gone from `TASKS` and does nothing.
//!
//! Both fire in the exiting task. The process's `WATCHED` bit (`filter.rs`)
//! is cleared when its last thread exits, watched or not (a bit without a
//! `TASKS` entry: a supervisor's child that never registered, or a worker
//! userspace stopped watching). A thread's exit costs one hash lookup, as
//! exits are rare next to page faults, so that no `TASKS` entry outlives its
//! process even without a bit.
//!
//! # Minimum kernel version
//!
//! 4.17 for raw tracepoints, 5.5 for `bpf_probe_read_kernel`, 5.12 for the
//! atomic exchange in `forget` and the atomic and that clears the `WATCHED` bit.

use aya_ebpf::{
    helpers::bpf_get_current_task, macros::raw_tracepoint, programs::RawTracePointContext,
};
use aya_log_ebpf::info;
use xypriss_ebpf::ring_buf::{KIND_EXIT, Record};

use super::forget;
use crate::{
    filter::{clear_watched, maybe_watched, remove_owner},
    maps::{TASKS, WORKERS, layout, settings},
    record::{Wakeup, current_tgid, read, send, totals},
};

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        let tgid = current_tgid();
        clear_watched(tgid);
        let _ = exited(&ctx, tgid);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit_live(ctx: RawTracePointContext) -> i32 {
    let tgid = current_tgid();
    if (maybe_watched(tgid) || unsafe { TASKS.get(&tgid) }.is_some()) && group_dead() == Some(true)
    {
        clear_watched(tgid);
        let _ = exited(&ctx, tgid);
    }
    0
}

/// Whether `current->signal->live` is 0.
#[inline(always)]
fn group_dead() -> Option<bool> {
    let l = layout();
    let task = unsafe { bpf_get_current_task() };
    let signal = read::<u64>(task, l.task_signal)?;
    Some(read::<i32>(signal, l.signal_live)? == 0)
}

#[inline(always)]
fn exited(ctx: &RawTracePointContext, tgid: u32) -> Option<()> {
    let task = TASKS.get_ptr_mut(&tgid)?;
    let task = unsafe { &mut *task };
    let slot = task.worker;
    let state = WORKERS.get_ptr_mut(slot)?;
    forget(task, state);
    if task.mm != 0 {
        remove_owner(task.mm);
    }
    let _ = TASKS.remove(&tgid);
    if settings().log != 0 {
        info!(ctx, "process {} of worker slot {} exited", tgid, slot);
    }
    send(
        Record {
            kind: KIND_EXIT,
            worker: slot,
            pid: tgid,
            aux: 0,
            ktime_ns: 0,
            counters: totals(state),
        },
        Wakeup::Now,
    );
    Some(())
}
