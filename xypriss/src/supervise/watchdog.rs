//! The watchdog: no orphans, even when xypriss is SIGKILLed.
//!
//! Workers die with xypriss (their parent-death signal), but what they
//! started in sessions of their own would live on. So xypriss starts a small
//! process of its own binary, `xypriss __watchdog`, in a process group of its
//! own (a terminal's Ctrl-C does not reach it), holding the only other end of
//! its stdin. When xypriss ends, however it ends, the kernel closes that pipe;
//! the watchdog then kills and removes every pool cgroup whose xypriss is gone
//! ([`Hierarchy::remove_stale`]), and exits. After a clean stop it finds
//! nothing to do.

use std::{
    io::{self, Read as _},
    os::unix::process::CommandExt as _,
    process::{ChildStdin, Command, Stdio},
};

use super::{cgroup::Hierarchy, pid_namespace::own_pid_namespace};

/// Starts the watchdog; keep the returned pipe open as long as xypriss runs.
pub fn start() -> io::Result<ChildStdin> {
    let mut child = Command::new("/proc/self/exe")
        .arg("__watchdog")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the watchdog has no stdin"))
}

/// The watchdog itself: waits for end of file on stdin, then cleans up:
/// every stale pool, or, in a pid namespace of its own (where the host's
/// pools cannot be judged), its own xypriss's.
pub fn run() -> anyhow::Result<()> {
    let xypriss = nix::unistd::getppid().as_raw() as u32;
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin().lock();
    while stdin.read(&mut sink)? > 0 {}
    let hierarchy = Hierarchy::find()?;
    let removed = if own_pid_namespace().is_some() {
        hierarchy.remove_pools_of(xypriss)?
    } else {
        hierarchy.remove_stale()?
    };
    for stale in removed {
        match stale.error {
            None => tracing::info!(
                "removed {} of xypriss {}, killing {} left-over processes",
                stale.path.display(),
                stale.pid,
                stale.killed
            ),
            Some(err) => tracing::warn!("{}: {err}", stale.path.display()),
        }
    }
    Ok(())
}
