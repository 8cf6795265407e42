//! `kmem/rss_stat`: fires on every update of an mm's resident counters.
//!
//! Unwatched processes cost one hash lookup. For watched ones, the per-task
//! counters and the worker's totals are updated here, and a record goes to
//! userspace only when the worker's resident size moved by the granularity, or
//! crossed one of its thresholds (then with an immediate wake-up).
//!
//! # Minimum kernel version
//!
//! 6.2, where `rss_stat` carries `mm_id` and `curr` and fires on every update.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use xypriss_ebpf::{
    ring_buf::{KIND_SAMPLE, KIND_THRESHOLD, Record},
    rss_stat::{NR_MM_COUNTERS, level, resident},
};

use super::{add, exchange};
use crate::{
    maps::{MM_OWNERS, TASKS, THRESHOLDS, WORKERS, offsets, settings},
    record::{Header, Wakeup, current_tgid, send, totals},
};

#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let _ = try_rss_stat(&ctx);
    0
}

#[inline(always)]
fn try_rss_stat(ctx: &TracePointContext) -> Option<()> {
    let off = offsets();
    let header = Header::read(ctx)?;
    let mm_id = header.u32_at(off.rss_mm_id)?;
    let curr = header.u32_at(off.rss_curr)? != 0;
    // `curr == 0` events come from other contexts (exit, reclaim, a fork
    // copying pages): only the mm's owner, learned below, names the process.
    let tgid = if curr {
        current_tgid()
    } else {
        *unsafe { MM_OWNERS.get(&mm_id) }?
    };
    let task = TASKS.get_ptr_mut(&tgid)?;
    let member = header.u32_at(off.rss_member)? as usize;
    if member >= NR_MM_COUNTERS {
        return None;
    }
    let size = header.i64_at(off.rss_size)?;
    let task = unsafe { &mut *task };
    let slot = task.worker;
    let state = WORKERS.get_ptr_mut(slot)?;
    if task.mm_id != mm_id {
        if !curr {
            // A previous mm of this process (replaced by exec) being torn down.
            return None;
        }
        if task.mm_id != 0 {
            // The first event on a new mm, after an exec: the old mm no longer counts.
            for m in 0..NR_MM_COUNTERS {
                let old = exchange(&mut task.counters[m], 0);
                add(unsafe { &mut (*state).counters[m] }, -old);
            }
            let _ = MM_OWNERS.remove(&task.mm_id);
        }
        // With `mm_id == 0` the counters are userspace's seed from /proc, or zero for a
        // new child: both describe this mm.
        task.mm_id = mm_id;
        let _ = MM_OWNERS.insert(&mm_id, &tgid, 0);
    }
    let old = exchange(&mut task.counters[member], size);
    add(unsafe { &mut (*state).counters[member] }, size - old);
    report(slot, tgid, state)
}

/// Sends the worker's totals if they crossed a threshold or moved by the granularity.
#[inline(always)]
fn report(slot: u32, tgid: u32, state: *mut xypriss_ebpf::rss_stat::WorkerState) -> Option<()> {
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
