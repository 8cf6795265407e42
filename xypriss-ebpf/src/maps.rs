//! The maps and load-time globals every program shares. Names and value types
//! come from the ABI in the lib, so userspace opens exactly these.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use xypriss_ebpf::{
    MAX_TASKS, MAX_WORKERS, MM_OWNED_BITS, WATCHED_WORDS, ring_buf,
    rss_stat::{TaskEntry, Thresholds, WorkerState},
    trace_point::{KernelLayout, Settings},
};

#[map]
pub static TASKS: HashMap<u32, TaskEntry> = HashMap::with_max_entries(MAX_TASKS, 0);

#[map]
pub static MM_OWNERS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TASKS, 0);

/// See `filter.rs`.
#[map]
pub static WATCHED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

/// See `filter.rs`.
#[map]
pub static MM_OWNED: Array<u32> = Array::with_max_entries(1 << MM_OWNED_BITS, 0);

#[map]
pub static WORKERS: Array<WorkerState> = Array::with_max_entries(MAX_WORKERS, 0);

#[map]
pub static THRESHOLDS: Array<Thresholds> = Array::with_max_entries(MAX_WORKERS, 0);

#[map]
pub static FAULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_WORKERS, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(ring_buf::BYTE_SIZE, 0);

/// When a sample last woke userspace (`bpf_ktime_get_ns`).
#[map]
pub static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_mm: 0,
    task_pid: 0,
    task_tgid: 0,
    task_signal: 0,
    signal_live: 0,
    mm_rss_stat: 0,
    counter_size: 0,
    counter_count: 0,
    page_shift: 0,
    _pad: 0,
};

#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    granularity: 1 << 20,
    wakeup_interval_ns: 10_000_000,
    log: 0,
    supervisor: 0,
};

/// The kernel layout the loader wrote. A volatile read keeps the compiler
/// from folding the compiled-in zeros; the verifier sees the frozen values.
#[inline(always)]
pub fn layout() -> KernelLayout {
    unsafe { core::ptr::read_volatile(&LAYOUT) }
}

#[inline(always)]
pub fn settings() -> Settings {
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}
