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
    writing: Writing,
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
            writing: Writing::default(),
        })
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        if self.writing.spinning(Instant::now()) {
            tokio::task::yield_now().await;
        } else {
            self.wait().await;
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
        match self.writing.drained(writing, Instant::now()) {
            Drained::LookBy(at) => {
                self.flush_at = Some(self.flush_at.map_or(at, |flush| flush.min(at)));
            }
            Drained::Done {
                held: Some(held), ..
            } if held >= SAY_HELD => tracing::warn!(
                "ring buffer: a record stayed half-written for at least {:.1} ms, and \
                 every record behind it (alerts too) waited as long; its program runs \
                 with preemption off, so its CPU was taken from it (interrupts, or the \
                 hypervisor descheduling the vCPU)",
                held.as_secs_f64() * 1e3
            ),
            Drained::Done { .. } => {}
        }
    }
}

/// Whether the drains stop at a record being written, and since when: the
/// reader's timing, kept apart from its I/O so that it is tested.
#[derive(Debug, Default)]
struct Writing {
    since: Option<Instant>,
}

/// What a drain leaves to do.
#[derive(Debug, PartialEq)]
enum Drained {
    /// It stopped at a record being written: look again by then at the
    /// latest, since its submit may wake no one.
    LookBy(Instant),
    /// It read to the end; `held` is how long a record had held it up.
    Done { held: Option<Duration> },
}

impl Writing {
    /// Whether to drain again at once rather than wait for a wake-up.
    fn spinning(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|since| now.duration_since(since) < SPIN)
    }

    /// After a drain at `now` that did (`writing`) or did not stop at a record being written.
    fn drained(&mut self, writing: bool, now: Instant) -> Drained {
        if writing {
            self.since.get_or_insert(now);
            Drained::LookBy(now + RETRY)
        } else {
            Drained::Done {
                held: self.since.take().map(|since| now.duration_since(since)),
            }
        }
    }
}

/// Whether the kernel has reserved records past what `ring`'s reader has
/// read: the ring's poll, which compares its producer and consumer positions.
fn reserved_past_reader(ring: &RingBuf<MapData>) -> bool {
    let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
    // A failed poll says nothing is known to be left: the flush still comes.
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_being_written_is_looked_at_again_within_the_retry_at_any_point_of_the_spin() {
        let start = Instant::now();
        let mut writing = Writing::default();
        for after in [
            Duration::ZERO,
            SPIN / 2,
            SPIN - Duration::from_nanos(1),
            SPIN,
            10 * RETRY,
        ] {
            let now = start + after;
            assert_eq!(
                writing.drained(true, now),
                Drained::LookBy(now + RETRY),
                "{after:?}"
            );
        }
    }

    #[test]
    fn the_reader_spins_only_for_the_spin_from_the_first_drain_that_stopped() {
        let start = Instant::now();
        let mut writing = Writing::default();
        assert!(!writing.spinning(start), "nothing is being written yet");
        writing.drained(true, start);
        writing.drained(true, start + SPIN / 2);
        assert!(writing.spinning(start + SPIN / 2));
        assert!(!writing.spinning(start + SPIN));
    }

    #[test]
    fn a_drain_to_the_end_says_how_long_the_record_held_the_ring() {
        let start = Instant::now();
        let mut writing = Writing::default();
        assert_eq!(writing.drained(false, start), Drained::Done { held: None });
        writing.drained(true, start);
        writing.drained(true, start + RETRY);
        assert_eq!(
            writing.drained(false, start + 3 * RETRY),
            Drained::Done {
                held: Some(3 * RETRY)
            }
        );
        assert!(!writing.spinning(start + 3 * RETRY));
        assert_eq!(
            writing.drained(false, start + 4 * RETRY),
            Drained::Done { held: None }
        );
    }
}
