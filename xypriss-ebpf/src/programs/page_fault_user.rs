//! `exceptions/page_fault_user`, as a raw tracepoint: counts each watched
//! worker's user page faults in a per-CPU array. Nothing is sent; userspace
//! sums the CPUs when it reports.
//!
//! It fires on every user page fault of every process, and reads none of the
//! tracepoint's fields, so it is attached raw: the kernel then builds no trace
//! record for it, which makes the unwatched path cheaper than a classic
//! tracepoint (see BENCHMARKS.md). An unwatched process costs one read of
//! the `WATCHED` bitmap (`filter.rs`), no hash lookup.
//!
//! # Minimum kernel version
//!
//! 4.17 for raw tracepoints (x86 only: other architectures have no such tracepoint).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    filter::maybe_watched,
    maps::{FAULTS, TASKS},
    record::current_tgid,
};

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(_ctx: RawTracePointContext) -> i32 {
    let tgid = current_tgid();
    if maybe_watched(tgid)
        && let Some(task) = unsafe { TASKS.get(&tgid) }
        && let Some(count) = FAULTS.get_ptr_mut(task.worker)
    {
        unsafe { *count += 1 };
    }
    0
}
