//! `oom/mark_victim`: the OOM killer chose a process. When it is watched,
//! userspace learns it at once, so the worker's death is named as an OOM kill.
//!
//! Two raw-tracepoint variants, one per prototype; the loader reads this
//! kernel's (`btf_trace_mark_victim` in its BTF) and loads the one that fits:
//! - [`mark_victim`]: `(struct task_struct *task, uid_t uid)` (6.12 and 6.18
//!   have it, and Debian's 6.1.170 by backport): the victim's tgid is read
//!   from the task, at the offset BTF gives.
//! - [`mark_victim_pid`]: `(int pid)` (older kernels): the victim task's pid,
//!   which is its process's unless the OOM killer picked a thread other than
//!   the leader (when the leader has already released its memory).
//!
//! # Minimum kernel version
//!
//! 4.17 for raw tracepoints (the tracepoint is from 4.13), 5.5 for
//! `bpf_probe_read_kernel`.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use aya_log_ebpf::info;
use xypriss_ebpf::ring_buf::{KIND_OOM_VICTIM, Record};

use crate::{
    maps::{TASKS, WORKERS, layout, settings},
    record::{Wakeup, read, send, totals},
};

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    if let Some(tgid) = read::<u32>(task, layout().task_tgid) {
        victim(&ctx, tgid);
    }
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_pid(ctx: RawTracePointContext) -> i32 {
    let pid: u64 = ctx.arg(0);
    victim(&ctx, pid as u32);
    0
}

#[inline(always)]
fn victim(ctx: &RawTracePointContext, pid: u32) -> Option<()> {
    let task = unsafe { TASKS.get(&pid) }?;
    let state = WORKERS.get_ptr(task.worker)?;
    if settings().log != 0 {
        info!(ctx, "oom victim {} (worker slot {})", pid, task.worker);
    }
    send(
        Record {
            kind: KIND_OOM_VICTIM,
            worker: task.worker,
            pid,
            aux: 0,
            ktime_ns: 0,
            counters: totals(state),
        },
        Wakeup::Now,
    );
    Some(())
}
