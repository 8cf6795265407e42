//! The control channel: a line-based channel from xypriss to a worker that
//! can never hurt it.
//!
//! Each worker gets one end of a Unix stream socket pair as an inherited fd,
//! announced in `XYPRISS_CONTROL_FD`. xypriss writes one JSON object per line
//! on it (`{"event":"gc_hint",…}`, `{"event":"low_memory_mode",…}`). A worker
//! may read it or ignore it: xypriss's end is non-blocking, so a worker that
//! never reads only fills the socket's buffer, after which messages to it are
//! dropped and counted; nothing waits, and no signal is ever sent. A signal is
//! used only when the user names one.

use std::{
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

/// xypriss's end of one worker's channel.
pub struct Control {
    stream: UnixStream,
    /// Messages dropped because the worker did not read its end.
    pub dropped: u64,
}

/// The worker's end, until it is handed over.
pub struct WorkerEnd(OwnedFd);

/// A new channel: xypriss's end, and the end for the worker.
pub fn pair() -> io::Result<(Control, WorkerEnd)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    ours.shutdown(std::net::Shutdown::Read)?;
    Ok((
        Control {
            stream: ours,
            dropped: 0,
        },
        WorkerEnd(theirs.into()),
    ))
}

impl WorkerEnd {
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Control {
    /// Sends one message line; never blocks. Returns whether it was sent.
    pub fn send(&mut self, message: &serde_json::Value) -> bool {
        let mut line = message.to_string();
        line.push('\n');
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => true,
            // A partial line would corrupt the stream for a reader: it is
            // not expected on a fresh, mostly empty buffer; count it as lost.
            Ok(_) | Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};

    #[test]
    fn a_reading_worker_gets_each_message_as_a_line() {
        let (mut control, end) = pair().unwrap();
        let reader = UnixStream::from(end.0);
        assert!(control.send(&serde_json::json!({"event": "gc_hint", "reason": "test"})));
        assert!(control.send(&serde_json::json!({"event": "low_memory_mode", "enabled": true})));
        let mut lines = BufReader::new(reader).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "gc_hint");
        let second: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(second["enabled"], true);
    }

    #[test]
    fn a_worker_that_never_reads_costs_drops_not_waits() {
        let (mut control, _end) = pair().unwrap();
        let message = serde_json::json!({"event": "gc_hint", "padding": "x".repeat(1000)});
        let started = std::time::Instant::now();
        let sent = (0..10_000).filter(|_| control.send(&message)).count();
        assert!(sent > 0 && sent < 10_000, "sent {sent}");
        assert_eq!(control.dropped, 10_000 - sent as u64);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_worker_that_closed_its_end_costs_drops() {
        let (mut control, end) = pair().unwrap();
        drop(end);
        assert!(!control.send(&serde_json::json!({"event": "gc_hint"})));
        assert_eq!(control.dropped, 1);
    }
}
