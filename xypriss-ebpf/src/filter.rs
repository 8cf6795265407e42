//! The first checks, before any hash lookup. Every user page fault and,
//! from 6.2 on, nearly every `rss_stat` update in the system enters the
//! programs, and almost all are of processes xypriss does not watch: for
//! them, two array reads (which the verifier inlines) instead of hash
//! lookups in `TASKS` and `MM_OWNERS` (BENCHMARKS.md, "Overhead: time per
//! page fault").
//!
//! Both filters may say "maybe" wrongly, never "no" wrongly: a stale bit or
//! count costs only the hash lookup it would have cost anyway. Only the
//! programs write them, with BPF atomics, so no write is lost between CPUs
//! (userspace could only read-modify-write a whole word).

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or, atomic_xadd};

use xypriss_ebpf::MM_OWNED_BITS;

use crate::maps::{MM_OWNED, MM_OWNERS, WATCHED};

/// Process `tgid`'s word of `WATCHED`, and its bit in it.
#[inline(always)]
fn watched_bit(tgid: u32) -> (Option<*mut u64>, u64) {
    (WATCHED.get_ptr_mut(tgid / 64), 1 << (tgid % 64))
}

/// `false` when process `tgid` is not in `TASKS`.
#[inline(always)]
pub fn maybe_watched(tgid: u32) -> bool {
    match watched_bit(tgid) {
        (Some(word), bit) => (unsafe { *word } & bit) != 0,
        (None, _) => true,
    }
}

/// Marks process `tgid` as maybe watched, before it is put in `TASKS`.
#[inline(always)]
pub fn set_watched(tgid: u32) {
    if let (Some(word), bit) = watched_bit(tgid) {
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, bit) };
    }
}

/// Process `tgid` is gone (its last thread exits): its pid may be reused.
#[inline(always)]
pub fn clear_watched(tgid: u32) {
    if let (Some(word), bit) = watched_bit(tgid)
        && (unsafe { *word } & bit) != 0
    {
        unsafe { atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(word, !bit) };
    }
}

/// `mm`'s slot in `MM_OWNED`: the top bits of a multiplicative hash, since
/// slab addresses share their low bits.
#[inline(always)]
fn mm_slot(mm: u64) -> u32 {
    (mm.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MM_OWNED_BITS)) as u32
}

/// `false` when `mm` is not in `MM_OWNERS`.
#[inline(always)]
pub fn maybe_owned(mm: u64) -> bool {
    MM_OWNED.get(mm_slot(mm)).is_none_or(|&count| count != 0)
}

#[inline(always)]
fn count_owned(mm: u64, delta: i32) {
    if let Some(count) = MM_OWNED.get_ptr_mut(mm_slot(mm)) {
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, delta as u32) };
    }
}

/// `MM_OWNERS[mm] = tgid`, counted first so that no reader misses it.
#[inline(always)]
pub fn insert_owner(mm: u64, tgid: u32) {
    count_owned(mm, 1);
    if MM_OWNERS.insert(&mm, &tgid, 0).is_err() {
        count_owned(mm, -1);
    }
}

/// Removes `MM_OWNERS[mm]`, and its count if it was there.
#[inline(always)]
pub fn remove_owner(mm: u64) {
    if MM_OWNERS.remove(&mm).is_ok() {
        count_owned(mm, -1);
    }
}
