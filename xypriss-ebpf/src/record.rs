//! Reading kernel memory, and writing ring-buffer records.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
};
use xypriss_ebpf::{ring_buf::Record, rss_stat::WorkerState};

use crate::maps::{EVENTS, LAST_WAKEUP, LOST, settings};

/// The `T` at `base + offset` in kernel memory (an offset from BTF).
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The current task's thread-group id (its process id).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// How a record wakes userspace.
#[derive(Clone, Copy)]
pub enum Wakeup {
    /// At once: threshold crossings, exits, OOM victims.
    Now,
    /// At most once per `wakeup_interval_ns` across all samples; the rest wait
    /// in the ring for the next wake-up or userspace's own flush tick.
    Batched,
    /// Never by itself.
    Never,
}

/// Sends `record`. When the ring is full, counts the loss and returns `false`.
///
/// The record is reserved before it is stamped and its wake-up decided. A
/// record sent without a wake-up counts on userspace's flush, which comes a
/// wake-up interval after the wake-up it follows (`observe/ring_buf.rs`): its
/// stamp is within that interval, so its reservation, before the stamp, is
/// before the flush, which then reads it or waits for its submit. Stamped
/// first, a program whose CPU was taken between the stamp and the reserve
/// (a vCPU descheduled) could reserve after the flush, and its record, woken
/// by no one, would wait for the next wake-up: in a quiet pool, indefinitely.
#[inline(always)]
pub fn send(mut record: Record, wakeup: Wakeup) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            unsafe { *lost += 1 };
        }
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    record.ktime_ns = now;
    let flags = match wakeup {
        Wakeup::Now => BPF_RB_FORCE_WAKEUP,
        Wakeup::Never => BPF_RB_NO_WAKEUP,
        Wakeup::Batched => match LAST_WAKEUP.get_ptr_mut(0) {
            Some(last) if now.wrapping_sub(unsafe { *last }) >= settings().wakeup_interval_ns => {
                unsafe { *last = now };
                BPF_RB_FORCE_WAKEUP
            }
            _ => BPF_RB_NO_WAKEUP,
        },
    };
    entry.write(record);
    entry.submit(u64::from(flags));
    true
}

/// A consistent-enough copy of a worker's totals (each field is read once).
#[inline(always)]
pub fn totals(state: *const WorkerState) -> [i64; 4] {
    unsafe {
        [
            core::ptr::read_volatile(&(*state).counters[0]),
            core::ptr::read_volatile(&(*state).counters[1]),
            core::ptr::read_volatile(&(*state).counters[2]),
            core::ptr::read_volatile(&(*state).counters[3]),
        ]
    }
}
