//! Reads the `EVENTS` ring buffer from the tokio runtime.
//!
//! The kernel wakes us at once for threshold crossings, exits and OOM victims,
//! and at most once per wake-up interval for samples; samples written without
//! a wake-up are picked up by a single flush a wake-up interval after the last
//! one, so an idle pool costs no wake-ups at all.
//!
//! A drain stops at the first record a program has reserved but not yet
//! submitted. If that record is a sample, its submit wakes no one, and a
//! crossing submitted behind it has woken us already: left to the flush, the
//! crossing would wait up to a wake-up interval (10 ms by default). So a
//! drain that stops short of the kernel's producer position (the ring's
//! poll compares the two) marks the ring as being written, and the reader
//! drains again at once, yielding in between, for [`SPIN`]: the writer is a
//! program a few instructions from its submit, on another CPU. Past that
//! (its vCPU was descheduled, or, on a preemptible kernel, our own thread
//! preempted it) it looks again every [`RETRY`] until the record is read.

use std::{io, os::fd::AsFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, sleep_until},
};

use super::Observation;
use crate::decode::decode;

/// How long to drain again at once while a record is being written.
const SPIN: Duration = Duration::from_micros(50);
/// Then how often, until it is done; tokio's timers count milliseconds.
const RETRY: Duration = Duration::from_millis(1);
/// A record held that long is said on stderr: alerts waited behind it.
const SAY_HELD: Duration = Duration::from_millis(1);

pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    flush_delay: Duration,
    /// When to look for records that were written without a wake-up, or
    /// for the end of one still being written. Kept here, not in a timer
    /// made per call, so that a call cancelled by the loop's other
    /// branches does not put it off.
    flush_at: Option<Instant>,
    /// Since when the drains have stopped at a record being written.
    writing_since: Option<Instant>,
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
            writing_since: None,
        })
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        match self.writing_since {
            Some(since) if since.elapsed() < SPIN => tokio::task::yield_now().await,
            _ => self.wait().await,
        }
        self.drain(out);
    }

    /// Until a wake-up, or the flush (or the next look at a record being written).
    async fn wait(&mut self) {
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
    }

    /// Appends every record in the ring to `out`, up to its end or to the
    /// first record still being written.
    pub fn drain(&mut self, out: &mut Vec<Observation>) {
        let ring = self.ring.get_mut();
        // Whether the ring's poll said, since the last record read, that more
        // was reserved: then a record that is still not readable is being written.
        let mut more_reserved = false;
        let writing = loop {
            if let Some(item) = ring.next() {
                match decode(&item) {
                    Ok(observation) => out.push(observation),
                    // A kernel/userspace mismatch: said, never fatal.
                    Err(err) => tracing::error!("{err}"),
                }
                more_reserved = false;
            } else if more_reserved {
                break true;
            } else if reserved_past_reader(ring) {
                more_reserved = true;
            } else {
                break false;
            }
        };
        self.writing_since = if writing {
            let since = self.writing_since.unwrap_or_else(Instant::now);
            if since.elapsed() >= SPIN {
                let retry_at = Instant::now() + RETRY;
                self.flush_at = Some(self.flush_at.map_or(retry_at, |at| at.min(retry_at)));
            }
            Some(since)
        } else {
            if let Some(held) = self.writing_since.map(|since| since.elapsed())
                && held >= SAY_HELD
            {
                tracing::warn!(
                    "ring buffer: a record stayed half-written for at least {:.1} ms, and \
                     every record behind it (alerts too) waited as long; its program runs \
                     with preemption off, so its CPU was taken from it (interrupts, or the \
                     hypervisor descheduling the vCPU)",
                    held.as_secs_f64() * 1e3
                );
            }
            None
        };
    }
}

/// Whether the kernel has reserved records past what `ring`'s reader has
/// read: the ring's poll, which compares its producer and consumer positions.
fn reserved_past_reader(ring: &RingBuf<MapData>) -> bool {
    let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
    // A failed poll says nothing is known to be left: the flush still comes.
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}
