//! xypriss's scheduling priority, on request (`--nice N`): its threads
//! run at nice N, and its workers do not inherit it.
//!
//! Why: a memory supervisor must act when the host is busiest, and beside
//! CPU hogs at its own priority its loop waits its turn for the CPU after
//! each wake-up. xypriss sleeps nearly all the time and works in short,
//! bounded turns, so a higher priority costs the rest of the host little.
//! earlyoom offers the same (`-p`, nice -20), as an option.
//!
//! Why not by default (yet): on the shared 2-core development machine,
//! beside `stress-ng --cpu 2`, the loop thread's run-queue wait per time
//! slice (`/proc/<tid>/schedstat`, over 30 s) was 0.18 ms at nice 0 and
//! 0.15 ms at nice -10, and the end-to-end alert latency, which includes
//! the stream's reader (not raised), was no better at nice -10 in two
//! trials. A default that changes how a host schedules needs figures from
//! an idle machine first; until then `--nice` is there for those who want
//! it, and [`DEFAULT`] (`keep`) changes nothing.
//!
//! On Linux a nice value belongs to a thread, and a new thread or child
//! process takes its creator's. So every thread xypriss has when it raises
//! its priority is raised (those it starts later inherit it), and each
//! worker puts its own back, between fork and exec, to the value xypriss
//! was started with: the app runs as it would have without xypriss.

use std::{
    fs, io,
    sync::atomic::{AtomicI32, Ordering},
};

use nix::errno::Errno;

/// `--nice`'s default: the nice value xypriss was started with.
pub const DEFAULT: Nice = Nice::Keep;

/// What workers put their nice value back to; [`UNCHANGED`] when xypriss
/// did not change its own.
static WORKERS: AtomicI32 = AtomicI32::new(UNCHANGED);
const UNCHANGED: i32 = i32::MIN;

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
    let tasks = fs::read_dir("/proc/self/task").map_err(PriorityError::Threads)?;
    let mut raised = false;
    for task in tasks {
        let task = task.map_err(PriorityError::Threads)?;
        // A thread that ended meanwhile has nothing to raise.
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match set(tid, value) {
            Ok(()) => raised = true,
            Err(Errno::ESRCH) => {}
            Err(Errno::EACCES | Errno::EPERM) if !raised => {
                return Err(PriorityError::NotAllowed { value });
            }
            Err(source) => {
                return Err(PriorityError::Set { tid, value, source });
            }
        }
    }
    WORKERS.store(current, Ordering::Relaxed);
    Ok(value)
}

/// In a new worker, between fork and exec and before it gives up root:
/// puts its nice value back to the one xypriss was started with, if
/// xypriss changed its own. Async-signal-safe: an atomic load and a
/// system call.
pub fn reset_in_child() -> io::Result<()> {
    let value = WORKERS.load(Ordering::Relaxed);
    if value == UNCHANGED {
        return Ok(());
    }
    set(0, value).map_err(io::Error::from)
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
    fn a_higher_priority_already_held_is_kept() {
        assert_eq!(target(Nice::Raise(-10), 0), Some(-10));
        assert_eq!(target(Nice::Raise(-10), 5), Some(-10));
        assert_eq!(target(Nice::Raise(-10), -10), None);
        assert_eq!(target(Nice::Raise(-10), -15), None);
        assert_eq!(target(Nice::Keep, 0), None);
        assert_eq!(target(Nice::Raise(0), 5), Some(0));
    }
}
