//! Reaping: xypriss is a child subreaper, so the orphaned descendants of its
//! workers (daemons that double-forked) become its children, and it reaps
//! every child with one `waitpid(-1)` loop when SIGCHLD arrives.

use nix::{
    errno::Errno,
    sys::{
        prctl,
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
};

/// Makes orphaned descendants children of this process rather than of init.
pub fn become_subreaper() -> nix::Result<()> {
    prctl::set_child_subreaper(true)
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

/// Reaps every child that has ended, without waiting.
pub fn reap() -> Vec<(u32, Exit)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                reaped.push((pid.as_raw() as u32, Exit::Code(code)))
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                reaped.push((pid.as_raw() as u32, Exit::Signal(signal)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => {
                tracing::error!("waitpid: {err}");
                return reaped;
            }
        }
    }
}
