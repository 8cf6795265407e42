//! Starting a worker process, and signalling its process group.
//!
//! Each worker gets its own process group, so that a stop signal reaches
//! everything it started, and a parent-death signal, so that it dies with
//! xypriss even when xypriss is SIGKILLed. Its stdout and stderr are prefixed
//! and forwarded to xypriss's stderr: stdout is the NDJSON stream, and stays
//! pure.

use std::{
    io::{self, Write as _},
    process::Stdio,
};

use nix::{
    sys::{
        prctl,
        signal::{Signal, killpg},
    },
    unistd::{Pid, getppid},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    process::{Child, Command},
};

use crate::cli::RunConfig;

/// Spawns worker `id` of `config`'s pool.
pub fn spawn(config: &RunConfig, id: u32) -> io::Result<Child> {
    let supervisor = Pid::this();
    let mut cmd = Command::new(&config.app);
    cmd.args(&config.args)
        .env("XYPRISS_WORKER_ID", id.to_string())
        .env("XYPRISS_WORKER_COUNT", config.workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: between fork and exec the closure only makes two system calls.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            // Had xypriss died before the prctl, no signal would ever come.
            if getppid() != supervisor {
                return Err(io::Error::other(
                    "xypriss exited while the worker was starting",
                ));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, id, pid));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, id, pid));
    }
    Ok(child)
}

/// Copies a worker's output to stderr, one prefixed line at a time.
async fn forward(stream: impl AsyncRead + Unpin, id: u32, pid: u32) {
    let mut lines = BufReader::new(stream).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "[worker {id} pid {pid}] ");
        let _ = stderr.write_all(&line);
        let _ = stderr.write_all(b"\n");
    }
}

/// Sends `signal` to the process group a worker leads.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Err(err) = killpg(Pid::from_raw(pid as i32), signal)
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!("could not send {signal} to worker group {pid}: {err}");
    }
}
