//! `sched/sched_process_exit`: when the last thread of a watched process
//! exits, its memory stops counting toward the worker and userspace is told.
//! A watched thread's exit only drops its entry.
//!
//! # Minimum kernel version
//!
//! 6.16, where the tracepoint carries `group_dead`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use xypriss_ebpf::ring_buf::{KIND_EXIT, Record};

use super::forget;
use crate::{
    maps::{MM_OWNERS, TASKS, WORKERS, offsets, settings},
    record::{Header, Wakeup, current_tgid, send, totals},
};

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exit(&ctx);
    0
}

#[inline(always)]
fn try_sched_process_exit(ctx: &TracePointContext) -> Option<()> {
    let off = offsets();
    let header = Header::read(ctx)?;
    let pid = header.u32_at(off.exit_pid)?;
    let group_dead = header.u8_at(off.exit_group_dead)? != 0;
    let tgid = current_tgid();
    if pid != tgid {
        let _ = TASKS.remove(&pid);
    }
    if !group_dead {
        return None;
    }
    let task = TASKS.get_ptr_mut(&tgid)?;
    let task = unsafe { &mut *task };
    let slot = task.worker;
    let state = WORKERS.get_ptr_mut(slot)?;
    forget(task, state);
    if task.mm != 0 {
        let _ = MM_OWNERS.remove(&task.mm);
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
