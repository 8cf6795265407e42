//! `exceptions/page_fault_user`: counts each watched worker's user page faults
//! in a per-CPU array. Nothing is sent; userspace sums the CPUs when it reports.
//!
//! # Minimum kernel version
//!
//! 3.13 (x86 only: other architectures have no such tracepoint).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    maps::{FAULTS, TASKS},
    record::current_tgid,
};

#[tracepoint]
pub fn page_fault_user(_ctx: TracePointContext) -> u32 {
    if let Some(task) = unsafe { TASKS.get(&current_tgid()) }
        && let Some(count) = FAULTS.get_ptr_mut(task.worker)
    {
        unsafe { *count += 1 };
    }
    0
}
