//! `/proc/<pid>/oom_score_adj`: xypriss shields itself from the kernel's OOM
//! killer, and its workers do not inherit the shield.
//!
//! A memory supervisor is needed most when memory runs out: when the kernel
//! has to kill something, a worker must go, never the process that restarts
//! it and says what happened. So xypriss, as root, lowers its own adjustment
//! to [`SUPERVISOR`] when it starts (a lower one, as a unit's
//! `OOMScoreAdjust=` may set, is kept). Lowering it takes CAP_SYS_RESOURCE,
//! which root in a container often lacks: xypriss then warns and carries on,
//! and the kernel goes by memory alone. The watchdog it starts next inherits
//! it, which is what we want: it cleans up after a killed xypriss.
//!
//! Workers would inherit it too, and a protected worker is the one the kernel
//! should kill. So xypriss puts each worker's back to 0 (the kernel's
//! default) before it runs the app: a write by a
//! process with CAP_SYS_RESOURCE also sets the floor below which an
//! unprivileged process may not lower itself, so a worker running as another
//! user cannot take xypriss's protection back.

use std::{
    fs, io,
    sync::atomic::{AtomicBool, Ordering},
};

/// xypriss's own adjustment: far below any worker's, short of the -1000
/// that would make it unkillable even when it is the one running away.
pub const SUPERVISOR: i32 = -900;

const SELF: &str = "/proc/self/oom_score_adj";

/// Whether this process runs shielded (it lowered its own adjustment, or
/// was started with a negative one): only then do workers put theirs back.
static PROTECTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum OomScoreAdjError {
    #[error("cannot read {SELF}: {source}")]
    Read { source: io::Error },
    #[error("{SELF} holds {text:?}, not a number")]
    Parse { text: String },
    #[error(
        "cannot lower {SELF} to {value}: that takes CAP_SYS_RESOURCE, which xypriss does not have (containers often drop it)"
    )]
    NotAllowed { value: i32 },
    #[error("cannot set {SELF} to {value}: {source}")]
    Write { value: i32, source: io::Error },
}

/// The adjustment xypriss should set, from the one it has: `None` when it is
/// at [`SUPERVISOR`] or lower already.
fn lowered(current: i32) -> Option<i32> {
    (current > SUPERVISOR).then_some(SUPERVISOR)
}

/// Lowers this process's adjustment to [`SUPERVISOR`] when root; returns
/// the value it has now. Without root it changes nothing; without
/// CAP_SYS_RESOURCE it cannot, and says so.
pub fn protect_self() -> Result<i32, OomScoreAdjError> {
    let text = fs::read_to_string(SELF).map_err(|source| OomScoreAdjError::Read { source })?;
    let current = text
        .trim()
        .parse::<i32>()
        .map_err(|_| OomScoreAdjError::Parse { text: text.clone() })?;
    let Some(value) = lowered(current).filter(|_| nix::unistd::geteuid().is_root()) else {
        // Shielded already (a unit's OOMScoreAdjust=): workers must not inherit it either.
        if current < 0 {
            PROTECTED.store(true, Ordering::Relaxed);
        }
        return Ok(current);
    };
    fs::write(SELF, value.to_string()).map_err(|source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            OomScoreAdjError::NotAllowed { value }
        } else {
            OomScoreAdjError::Write { value, source }
        }
    })?;
    PROTECTED.store(true, Ordering::Relaxed);
    Ok(value)
}

/// A new worker, `pid`, before it runs the app and gives up root: its
/// adjustment back to 0 if xypriss runs shielded (it took xypriss's).
pub fn reset(pid: u32) -> io::Result<()> {
    if !PROTECTED.load(Ordering::Relaxed) {
        return Ok(());
    }
    fs::write(format!("/proc/{pid}/oom_score_adj"), "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xypriss_lowers_its_adjustment_and_keeps_a_lower_one() {
        assert_eq!(lowered(0), Some(SUPERVISOR));
        assert_eq!(lowered(500), Some(SUPERVISOR));
        assert_eq!(lowered(-899), Some(SUPERVISOR));
        assert_eq!(lowered(SUPERVISOR), None);
        assert_eq!(lowered(-1000), None);
    }
}
