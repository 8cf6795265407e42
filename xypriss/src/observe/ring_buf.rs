//! Reads the `EVENTS` ring buffer from the tokio runtime.
//!
//! The kernel wakes us at once for threshold crossings, exits and OOM victims,
//! and at most once per wake-up interval for samples; samples written without
//! a wake-up are picked up by a single flush a wake-up interval after the last
//! one, so an idle pool costs no wake-ups at all.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, sleep_until},
};

use super::Observation;
use crate::decode::decode;

pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    flush_delay: Duration,
    /// When to look for records that were written without a wake-up.
    flush_at: Option<Instant>,
}

impl Reader {
    pub fn new(ring: RingBuf<MapData>, flush_delay: Duration) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd and keeps it open as long as it lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self {
            ring,
            flush_delay,
            flush_at: None,
        })
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        let flush_at = self.flush_at;
        tokio::select! {
            guard = self.ring.readable_mut() => {
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
                self.flush_at = Some(Instant::now() + self.flush_delay);
            }
            () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                self.flush_at = None;
            }
        }
        self.drain(out);
    }

    /// Appends every record in the ring to `out`.
    pub fn drain(&mut self, out: &mut Vec<Observation>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(observation) => out.push(observation),
                // A kernel/userspace mismatch: said, never fatal.
                Err(err) => tracing::error!("{err}"),
            }
        }
    }
}
