//! stderr, written from a thread of its own through a bounded, lossy queue,
//! as stdout's NDJSON is ([`super::ndjson`]).
//!
//! Two things write there: xypriss's logs and its workers' output. A reader
//! that stalls (a paused pager, Ctrl-S in a terminal, a journald backlog)
//! would block a plain write, and with it the control loop that made the
//! line. Here a write never waits: the line joins a queue of at most
//! [`QUEUE_LINES`] lines and [`QUEUE_BYTES`] bytes (a worker's line may be
//! 64 KiB, so a count of lines alone would not bound the memory), and when
//! the queue is full it is dropped and counted.
//! Once the queue drains, the writer says how many were dropped, on stderr
//! itself, so that a reader learns of the gap where it is.

use std::{
    io::{self, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// What the writer thread is sent.
enum Message {
    Line(Vec<u8>),
    /// Answer once every line before this one is written.
    Flush(SyncSender<()>),
}

/// Lines that may wait for stderr.
pub const QUEUE_LINES: usize = 16_384;

/// Bytes that may wait for stderr.
pub const QUEUE_BYTES: usize = 8 << 20;

struct Queue {
    lines: SyncSender<Message>,
    /// Bytes queued and not yet written.
    bytes: AtomicUsize,
    room: usize,
    dropped: AtomicU64,
}

impl Queue {
    fn new(lines: usize, room: usize) -> (Self, Receiver<Message>) {
        let (tx, rx) = mpsc::sync_channel(lines);
        let queue = Self {
            lines: tx,
            bytes: AtomicUsize::new(0),
            room,
            dropped: AtomicU64::new(0),
        };
        (queue, rx)
    }

    /// Queues `bytes`, or counts them dropped when the queue is full; gives
    /// them back when nobody reads the queue.
    fn push(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        let len = bytes.len();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.room {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.lines.try_send(Message::Line(bytes)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(Message::Line(bytes))) => {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                Err(bytes)
            }
            Err(TrySendError::Disconnected(Message::Flush(_))) => Ok(()),
        }
    }

    /// The writer took `len` bytes off the queue.
    fn written(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// The queue, with its writer thread started on first use. If the system
/// refuses the thread, the queue has no reader and lines are written
/// directly.
fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
        let (queue, rx) = Queue::new(QUEUE_LINES, QUEUE_BYTES);
        let spawned = thread::Builder::new()
            .name("stderr".into())
            .spawn(move || drain(&rx));
        if let Err(err) = spawned {
            let _ = writeln!(io::stderr(), "[xypriss] no stderr writer thread: {err}");
        }
        queue
    })
}

/// Queues one line (its newline included) for stderr; never waits. A line
/// that finds the queue full is dropped and counted.
pub fn line(bytes: Vec<u8>) {
    if let Err(bytes) = queue().push(bytes) {
        let _ = io::stderr().write_all(&bytes);
    }
}

/// Waits at most `timeout` for the lines queued so far to be written (at
/// exit: the last logs before the process ends).
pub fn flush(timeout: Duration) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let deadline = Instant::now() + timeout;
    let (done, written) = mpsc::sync_channel(1);
    let mut message = Message::Flush(done);
    loop {
        match queue.lines.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

/// Lines dropped so far because stderr could not keep up.
pub fn dropped() -> u64 {
    QUEUE.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// The writer thread: every queued line to stderr, and after a gap, how
/// many lines it had.
fn drain(rx: &Receiver<Message>) {
    let mut said = 0;
    let mut stderr = io::stderr();
    while let Ok(message) = rx.recv() {
        let bytes = match message {
            Message::Line(bytes) => bytes,
            Message::Flush(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let dropped = dropped();
        if dropped > said {
            let _ = writeln!(
                stderr,
                "[xypriss] {} lines for stderr were dropped: it did not keep up",
                dropped - said
            );
            said = dropped;
        }
        let _ = stderr.write_all(&bytes);
        if let Some(queue) = QUEUE.get() {
            queue.written(bytes.len());
        }
    }
}

/// A [`Write`] that turns each write into one queued [`line`]: the logs'
/// writer (`tracing_subscriber`'s `with_writer(output::stderr::Logs)`), which
/// writes one whole record a call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logs;

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        line(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, rx) = Queue::new(2, 1 << 20);
        for n in 0..5 {
            assert_eq!(queue.push(vec![b'0' + n, b'\n']), Ok(()));
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        let kept: Vec<Vec<u8>> = rx
            .try_iter()
            .filter_map(|m| match m {
                Message::Line(bytes) => Some(bytes),
                Message::Flush(_) => None,
            })
            .collect();
        assert_eq!(kept, [b"0\n".to_vec(), b"1\n".to_vec()]);
        drop(rx);
        assert_eq!(queue.push(b"late\n".to_vec()), Err(b"late\n".to_vec()));
    }

    #[test]
    fn long_lines_are_bounded_by_bytes_not_only_by_count() {
        let (queue, rx) = Queue::new(1_000, 100 << 10);
        for _ in 0..4 {
            assert_eq!(queue.push(vec![b'x'; 64 << 10]), Ok(()));
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_iter().count(), 1);
        queue.written(64 << 10);
        assert_eq!(queue.push(vec![b'y'; 64 << 10]), Ok(()));
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
    }
}
