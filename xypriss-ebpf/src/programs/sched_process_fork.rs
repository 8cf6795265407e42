//! `sched/sched_process_fork`: a watched process's new processes are watched
//! too, under the same worker, so a worker's children count toward its memory.
//!
//! A raw tracepoint, `(struct task_struct *parent, struct task_struct *child)`
//! on every kernel, fired in the parent. The child's pid and tgid are read
//! from the task at offsets from BTF (the classic tracepoint's record put
//! `child_pid` at different offsets across kernels). A new thread (its tgid is
//! its parent's) needs no entry: the programs look tasks up by tgid.
//!
//! It also sets the new process's `WATCHED` bit (`filter.rs`), before the
//! child runs, when the parent is watched or is the supervisor: a new worker
//! is put in `TASKS` before it execs the app, and the other programs test
//! the bit before they look it up.
//!
//! # Minimum kernel version
//!
//! 4.17 for raw tracepoints, 5.5 for `bpf_probe_read_kernel`, 5.12 for the
//! BPF atomic or that sets the `WATCHED` bit.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::raw_tracepoint, programs::RawTracePointContext};
use aya_log_ebpf::info;
use xypriss_ebpf::{
    ring_buf::{KIND_FORK, Record},
    rss_stat::TaskEntry,
};

use crate::{
    filter::{maybe_watched, set_watched},
    maps::{TASKS, layout, settings},
    record::{Wakeup, current_tgid, read, send},
};

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

#[inline(always)]
fn try_sched_process_fork(ctx: &RawTracePointContext) -> Option<()> {
    let parent = current_tgid();
    let worker = if maybe_watched(parent) {
        unsafe { TASKS.get(&parent) }.map(|task| task.worker)
    } else {
        None
    };
    if worker.is_none() && parent != settings().supervisor {
        return None;
    }
    let task: u64 = ctx.arg(1);
    let l = layout();
    let child = read::<u32>(task, l.task_pid)?;
    if read::<u32>(task, l.task_tgid)? != child {
        return None;
    }
    set_watched(child);
    let worker = worker?;
    let entry = TaskEntry {
        worker,
        ..TaskEntry::default()
    };
    TASKS.insert(&child, &entry, u64::from(BPF_NOEXIST)).ok()?;
    if settings().log != 0 {
        info!(
            ctx,
            "process {} of worker slot {} forked {}", parent, worker, child
        );
    }
    send(
        Record {
            kind: KIND_FORK,
            worker,
            pid: child,
            aux: parent,
            ..Record::default()
        },
        Wakeup::Never,
    );
    Some(())
}
