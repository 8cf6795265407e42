//! xypriss's scheduling: its threads run `SCHED_FIFO` (`--realtime`, on
//! by default where allowed) and, on request, at a raised nice value
//! (`--nice N`); its workers get neither.
//!
//! Why: a memory supervisor must act when the host is busiest. Beside CPU
//! hogs at its own priority, its loop waits its turn for the CPU after each
//! wake-up, and so does the thread that writes the alert to stdout.
//! Measured on the 2-core development VM beside `stress-ng --cpu 2`
//! (`cargo xtask bench latency --stress-cpu 2`, BENCHMARKS.md, 2026-12-02):
//! the alert's p99 was 9.0 and 13.2 ms with normal scheduling, and 0.17 ms
//! with `SCHED_FIFO` 1, which preempts every normal thread as it wakes.
//! Nice -10 had not moved it in earlier trials.
//!
//! Why by default, and why priority 1: xypriss sleeps nearly all the time
//! and works in short, bounded turns, so preempting the rest costs the host
//! little; priority 1 is the lowest real-time one, below every kernel or
//! audio thread that asked for more. The kernel's real-time throttling
//! (`sched_rt_runtime_us`, 95% of each CPU by default) bounds what a
//! runaway xypriss could take. Without CAP_SYS_NICE (or an `RLIMIT_RTPRIO`
//! that allows it), the default keeps normal scheduling and says why; an
//! explicit `--realtime N` that cannot be had is a warning too, as `--nice`'s
//! is: xypriss still works, only slower under load.
//!
//! Why the alert's path one priority above the rest: two threads carry an
//! alert, the loop that decides it and the one that writes it to stdout
//! ([`urgent_this_thread`]). At one priority with the others, a status
//! client that never pauses kept the status server's thread running, and a
//! `SCHED_FIFO` thread is not preempted by one of its own priority: in
//! `cargo xtask soak` the alert's p99 went from 0.86 ms (the server's
//! thread at normal scheduling) to 1.61 ms and its max to 20 ms
//! (BENCHMARKS.md, 2026-12-02). One above, the loop and the writer take the
//! CPU from the server, and the server still takes it from every normal
//! thread, as the dashboard's followers need.
//!
//! On Linux a nice value and a scheduling policy belong to a thread, and a
//! new thread or child process takes its creator's. So every thread xypriss
//! has when it raises its priority is raised (those it starts later inherit
//! it); the loop raises itself once the threads it needs are started, and
//! those it starts later put themselves back to the rest's
//! ([`ordinary_this_thread`]). Each worker is put back, before it runs the
//! app, to normal scheduling and the nice value xypriss was started
//! with: the app runs as it would have without xypriss. So does the thread
//! that reads the workers' fault counts each tick: that bookkeeping is
//! never urgent.

use std::{
    fs, io,
    sync::atomic::{AtomicI32, AtomicU8, Ordering},
};

use nix::errno::Errno;

/// `--nice`'s default: the nice value xypriss was started with.
pub const DEFAULT: Nice = Nice::Keep;

/// What workers put their nice value back to; [`UNCHANGED`] when xypriss
/// did not change its own.
static WORKERS: AtomicI32 = AtomicI32::new(UNCHANGED);
const UNCHANGED: i32 = i32::MIN;

/// `--realtime`'s default: `SCHED_FIFO` at the lowest real-time priority.
pub const DEFAULT_REALTIME: Realtime = Realtime::Fifo(1);

/// The `SCHED_FIFO` priority xypriss's threads run at, 0 for normal
/// scheduling: workers put theirs back.
static REALTIME: AtomicU8 = AtomicU8::new(0);

/// The highest priority `--realtime` takes: the alert's path runs one above.
const HIGHEST: u8 = 98;

/// `--realtime`: the `SCHED_FIFO` priority xypriss's threads run at, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Realtime {
    /// `SCHED_FIFO` at this priority, 1 to 98; the alert's path one above.
    Fifo(u8),
    /// Normal scheduling, as xypriss was started with.
    Off,
}

impl std::str::FromStr for Realtime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::Off);
        }
        match text.parse::<u8>() {
            Ok(n) if (1..=HIGHEST).contains(&n) => Ok(Self::Fifo(n)),
            _ => Err(format!(
                "{text:?}: a SCHED_FIFO priority from 1 (the lowest) to {HIGHEST}, or `off`"
            )),
        }
    }
}

/// `--nice`: the nice value xypriss runs at, or the one it was started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nice {
    /// Raise it to this (-20 to 19; a higher priority already held is kept).
    Raise(i32),
    /// Leave it as it is.
    Keep,
}

impl std::str::FromStr for Nice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "keep" {
            return Ok(Self::Keep);
        }
        match text.parse::<i32>() {
            Ok(n) if (-20..=19).contains(&n) => Ok(Self::Raise(n)),
            _ => Err(format!(
                "{text:?}: a nice value from -20 (the highest priority) to 19, or `keep`"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("cannot read this process's nice value: {0}")]
    Read(Errno),
    #[error(
        "cannot raise xypriss's priority to nice {value}: that takes CAP_SYS_NICE, which xypriss does not have (containers often drop it)"
    )]
    NotAllowed { value: i32 },
    #[error("cannot set thread {tid}'s nice value to {value}: {source}")]
    Set { tid: i32, value: i32, source: Errno },
    #[error("cannot list this process's threads: {0}")]
    Threads(io::Error),
    #[error(
        "cannot run xypriss SCHED_FIFO at priority {priority}: that takes CAP_SYS_NICE or an RLIMIT_RTPRIO of {priority}, which xypriss does not have (containers often drop it)"
    )]
    RealtimeNotAllowed { priority: u8 },
    #[error("cannot run thread {tid} SCHED_FIFO at priority {priority}: {source}")]
    SetRealtime {
        tid: i32,
        priority: u8,
        source: Errno,
    },
}

/// The nice value xypriss should take, from the one it has: `None` when
/// it keeps its own.
fn target(nice: Nice, current: i32) -> Option<i32> {
    match nice {
        Nice::Raise(value) if value < current => Some(value),
        Nice::Raise(_) | Nice::Keep => None,
    }
}

/// Raises every thread of this process to `nice` (see the module's
/// header); returns the nice value it runs at now.
pub fn raise(nice: Nice) -> Result<i32, PriorityError> {
    let current = get(0).map_err(PriorityError::Read)?;
    let Some(value) = target(nice, current) else {
        return Ok(current);
    };
    each_thread(|tid| set(tid, value)).map_err(|refused| match refused {
        Refused::NotAllowed => PriorityError::NotAllowed { value },
        Refused::Failed { tid, source } => PriorityError::Set { tid, value, source },
        Refused::Threads(err) => PriorityError::Threads(err),
    })?;
    WORKERS.store(current, Ordering::Relaxed);
    Ok(value)
}

/// Runs every thread of this process `SCHED_FIFO` at `realtime`'s priority
/// (see the module's header); returns the priority it runs at, `None` for
/// normal scheduling.
pub fn enter_realtime(realtime: Realtime) -> Result<Option<u8>, PriorityError> {
    let Realtime::Fifo(priority) = realtime else {
        return Ok(None);
    };
    each_thread(|tid| set_fifo(tid, priority)).map_err(|refused| match refused {
        Refused::NotAllowed => PriorityError::RealtimeNotAllowed { priority },
        Refused::Failed { tid, source } => PriorityError::SetRealtime {
            tid,
            priority,
            source,
        },
        Refused::Threads(err) => PriorityError::Threads(err),
    })?;
    REALTIME.store(priority, Ordering::Relaxed);
    Ok(Some(priority))
}

/// Runs the calling thread one `SCHED_FIFO` priority above xypriss's others,
/// if they run `SCHED_FIFO`: for the two threads an alert passes through,
/// the loop and the stdout writer (see the module's header).
pub fn urgent_this_thread() -> io::Result<()> {
    match REALTIME.load(Ordering::Relaxed) {
        0 => Ok(()),
        priority => set_fifo(0, priority + 1).map_err(io::Error::from),
    }
}

/// Puts the calling thread back to xypriss's priority, from the loop's
/// higher one it took from its creator: for the threads the loop starts.
pub fn ordinary_this_thread() -> io::Result<()> {
    match REALTIME.load(Ordering::Relaxed) {
        0 => Ok(()),
        priority => set_fifo(0, priority).map_err(io::Error::from),
    }
}

/// Why [`each_thread`] stopped.
enum Refused {
    /// The first thread was refused: xypriss lacks the privilege.
    NotAllowed,
    Failed {
        tid: i32,
        source: Errno,
    },
    Threads(io::Error),
}

/// Applies `change` to every thread of this process.
fn each_thread(change: impl Fn(i32) -> Result<(), Errno>) -> Result<(), Refused> {
    let tasks = fs::read_dir("/proc/self/task").map_err(Refused::Threads)?;
    let mut changed = false;
    for task in tasks {
        let task = task.map_err(Refused::Threads)?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match change(tid) {
            Ok(()) => changed = true,
            // A thread that ended meanwhile has nothing to change.
            Err(Errno::ESRCH) => {}
            Err(Errno::EACCES | Errno::EPERM) if !changed => return Err(Refused::NotAllowed),
            Err(source) => return Err(Refused::Failed { tid, source }),
        }
    }
    Ok(())
}

/// Puts the calling thread's scheduling back to normal and its nice value
/// back to the one xypriss was started with, if xypriss changed its own:
/// xypriss's bookkeeping thread. Async-signal-safe: atomic loads and system
/// calls.
pub fn reset_this_thread() -> io::Result<()> {
    reset(0)
}

/// The same for thread `tid` (0: the calling one): a new worker's, before
/// it runs the app (a process that has one thread, whose id is its pid).
pub fn reset(tid: u32) -> io::Result<()> {
    let tid = i32::try_from(tid).map_err(io::Error::other)?;
    if REALTIME.load(Ordering::Relaxed) != 0 {
        let normal = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call; `normal` outlives it.
        let done = unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &raw const normal) };
        Errno::result(done)?;
    }
    let value = WORKERS.load(Ordering::Relaxed);
    if value == UNCHANGED {
        return Ok(());
    }
    set(tid, value).map_err(io::Error::from)
}

/// Runs thread `tid` (0: the calling one) `SCHED_FIFO` at `priority`.
fn set_fifo(tid: i32, priority: u8) -> Result<(), Errno> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: a plain system call; `param` outlives it.
    let done = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &raw const param) };
    Errno::result(done).map(drop)
}

/// The nice value of thread `tid` (0: the calling one).
fn get(tid: i32) -> Result<i32, Errno> {
    // getpriority may return -1 as a value: only errno tells an error.
    Errno::clear();
    // SAFETY: a plain system call with integer arguments.
    let value = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    match Errno::last_raw() {
        0 => Ok(value),
        errno => Err(Errno::from_raw(errno)),
    }
}

/// Sets thread `tid`'s nice value (0: the calling thread).
fn set(tid: i32, value: i32) -> Result<(), Errno> {
    // SAFETY: a plain system call with integer arguments.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, value) };
    Errno::result(done).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_takes_a_value_from_minus_20_to_19_or_keep() {
        assert_eq!("-10".parse(), Ok(Nice::Raise(-10)));
        assert_eq!("-20".parse(), Ok(Nice::Raise(-20)));
        assert_eq!("19".parse(), Ok(Nice::Raise(19)));
        assert_eq!("keep".parse(), Ok(Nice::Keep));
        for bad in ["-21", "20", "high", ""] {
            let err = bad.parse::<Nice>().unwrap_err();
            assert!(err.contains("-20") && err.contains("keep"), "{err}");
        }
        assert_eq!(DEFAULT, Nice::Keep);
    }

    #[test]
    fn realtime_takes_a_priority_from_1_to_98_or_off() {
        assert_eq!("1".parse(), Ok(Realtime::Fifo(1)));
        assert_eq!("98".parse(), Ok(Realtime::Fifo(98)));
        assert_eq!("off".parse(), Ok(Realtime::Off));
        for bad in ["0", "99", "100", "-1", "fifo", ""] {
            let err = bad.parse::<Realtime>().unwrap_err();
            assert!(
                err.contains("1 (the lowest) to 98") && err.contains("off"),
                "{err}"
            );
        }
        assert_eq!(DEFAULT_REALTIME, Realtime::Fifo(1));
    }

    #[test]
    fn a_higher_priority_already_held_is_kept() {
        assert_eq!(target(Nice::Raise(-10), 0), Some(-10));
        assert_eq!(target(Nice::Raise(-10), 5), Some(-10));
        assert_eq!(target(Nice::Raise(-10), -10), None);
        assert_eq!(target(Nice::Raise(-10), -15), None);
        assert_eq!(target(Nice::Keep, 0), None);
        assert_eq!(target(Nice::Raise(0), 5), Some(0));
    }
}
