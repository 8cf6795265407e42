//! `sched/sched_process_fork`: a watched task's new tasks are watched too,
//! under the same worker, so a worker's children count toward its memory.
//!
//! The tracepoint cannot tell a thread from a process, so threads get an
//! entry as well; it is never looked up by tgid and goes when the thread exits.
//!
//! # Minimum kernel version
//!
//! 2.6.32.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::info;
use xypriss_ebpf::{
    ring_buf::{KIND_FORK, Record},
    rss_stat::TaskEntry,
};

use crate::{
    maps::{TASKS, offsets, settings},
    record::{Header, Wakeup, current_tgid, send},
};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

#[inline(always)]
fn try_sched_process_fork(ctx: &TracePointContext) -> Option<()> {
    let parent = current_tgid();
    let worker = unsafe { TASKS.get(&parent) }?.worker;
    let child = Header::read(ctx)?.u32_at(offsets().fork_child_pid)?;
    let entry = TaskEntry {
        worker,
        ..TaskEntry::default()
    };
    TASKS.insert(&child, &entry, u64::from(BPF_NOEXIST)).ok()?;
    if settings().log != 0 {
        info!(
            ctx,
            "task {} of worker slot {} cloned {}", parent, worker, child
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
