//! `oom/mark_victim`: the OOM killer chose a process. When it is watched,
//! userspace learns it at once, so the worker's death is named as an OOM kill.
//!
//! # Minimum kernel version
//!
//! 4.13.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use xypriss_ebpf::ring_buf::{KIND_OOM_VICTIM, Record};

use crate::{
    maps::{TASKS, WORKERS, offsets, settings},
    record::{Header, Wakeup, send, totals},
};

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

#[inline(always)]
fn try_mark_victim(ctx: &TracePointContext) -> Option<()> {
    let pid = Header::read(ctx)?.u32_at(offsets().victim_pid)?;
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
