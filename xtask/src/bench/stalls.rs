//! The machine's stalls while a benchmark runs: one thread per CPU, pinned,
//! at `SCHED_FIFO` 3 (one above xypriss's loop, by default), sleeps to each next
//! millisecond and notes how late it woke when that was [`NOTED`] or more.
//! Such a thread does no work, so whatever keeps it from its CPU (the
//! kernel's non-preemptible work, interrupts, the host taking the vCPU)
//! would hold xypriss up as long. A slow alert is then read against the
//! stalls that overlap it (see [`overlapping`]). The watchers cost each CPU
//! a wake-up a millisecond. `bench jitter` measures the same floor with
//! cyclictest, whose histogram has no times: a slow alert needs to know
//! whether a stall fell inside its own wait, so this one keeps each stall's
//! time.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::{
    sched::{CpuSet, sched_setaffinity},
    time::{ClockId, ClockNanosleepFlags, clock_nanosleep},
    unistd::Pid,
};

use super::monotonic_ns;

/// A wake-up this late or later is noted.
const NOTED: Duration = Duration::from_millis(1);
const PERIOD_NS: u64 = 1_000_000;

/// A watcher kept off its CPU from `from_ns` (when it should have woken,
/// `CLOCK_MONOTONIC`, as the kernel's BPF timestamps) for `late_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) cpu: usize,
    pub(crate) from_ns: u64,
    pub(crate) late_ns: u64,
}

/// The watchers, stopped by [`Watchers::stop`] or on drop.
pub(crate) struct Watchers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stalls: Arc<Mutex<Vec<Stall>>>,
    /// Whether they got `SCHED_FIFO` 3 (else they ran with normal scheduling).
    pub(crate) realtime: bool,
}

impl Watchers {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let cpus = thread::available_parallelism().map_or(1, usize::from);
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = (0..cpus)
            .map(|cpu| {
                let (stop, stalls, tx) = (Arc::clone(&stop), Arc::clone(&stalls), tx.clone());
                thread::spawn(move || {
                    let _ = tx.send(pin_realtime(cpu));
                    drop(tx);
                    watch(cpu, &stop, &stalls);
                })
            })
            .collect();
        drop(tx);
        let realtime = rx.iter().filter(|&realtime| realtime).count() == cpus;
        Self {
            stop,
            threads,
            stalls,
            realtime,
        }
    }

    /// Stops them: every stall noted.
    pub(crate) fn stop(mut self) -> Vec<Stall> {
        self.halt();
        std::mem::take(&mut *self.stalls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Pins the calling thread to `cpu` at `SCHED_FIFO` 3; whether both took.
fn pin_realtime(cpu: usize) -> bool {
    let mut set = CpuSet::new();
    let pinned = set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok();
    let param = libc::sched_param { sched_priority: 3 };
    // SAFETY: a plain system call on the calling thread; `param` outlives it.
    let realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } == 0;
    pinned && realtime
}

fn watch(cpu: usize, stop: &AtomicBool, stalls: &Mutex<Vec<Stall>>) {
    let mut next = monotonic_ns() + PERIOD_NS;
    while !stop.load(Ordering::Relaxed) {
        let at = Duration::from_nanos(next);
        let at = nix::sys::time::TimeSpec::from(at);
        let _ = clock_nanosleep(
            ClockId::CLOCK_MONOTONIC,
            ClockNanosleepFlags::TIMER_ABSTIME,
            &at,
        );
        let now = monotonic_ns();
        let late_ns = now.saturating_sub(next);
        if late_ns >= NOTED.as_nanos() as u64 {
            stalls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Stall {
                    cpu,
                    from_ns: next,
                    late_ns,
                });
        }
        // The next whole period after now: a stall is noted once.
        next += PERIOD_NS * (late_ns / PERIOD_NS + 1);
    }
}

/// The stalls that overlap `from_ns..to_ns`, longest first.
pub(crate) fn overlapping(stalls: &[Stall], from_ns: u64, to_ns: u64) -> Vec<Stall> {
    let mut found: Vec<Stall> = stalls
        .iter()
        .filter(|s| s.from_ns < to_ns && s.from_ns + s.late_ns > from_ns)
        .copied()
        .collect();
    found.sort_by_key(|stall| std::cmp::Reverse(stall.late_ns));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stalls_that_overlap_an_alerts_wait_longest_first() {
        let stall = |cpu, from_ms: u64, late_ms: u64| Stall {
            cpu,
            from_ns: from_ms * 1_000_000,
            late_ns: late_ms * 1_000_000,
        };
        let stalls = [
            stall(0, 100, 2),  // over before the crossing
            stall(1, 105, 30), // begins before, ends inside
            stall(0, 120, 5),  // inside
            stall(1, 140, 3),  // after the read
        ];
        let found = overlapping(&stalls, 110 * 1_000_000, 133 * 1_000_000);
        assert_eq!(found, [stall(1, 105, 30), stall(0, 120, 5)]);
        assert!(overlapping(&stalls, 50 * 1_000_000, 90 * 1_000_000).is_empty());
    }
}
