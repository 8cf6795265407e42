//! xypriss's BPF programs: thin tracepoint handlers that filter on the watched
//! tasks, aggregate per worker in the kernel, and send userspace one record per
//! meaningful change (never one per page fault).
//!
//! Each program lives in a file named after its tracepoint; the maps and the
//! helpers they share are in `maps.rs` and `record.rs`, and the first checks
//! that keep unwatched processes cheap in `filter.rs`.
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "the BPF target has no atomic read-modify-write except through intrinsics"
)]
#![feature(core_intrinsics)]

mod filter;
mod maps;
mod programs;
mod record;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_probe_read_kernel` and the ring-buffer helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
