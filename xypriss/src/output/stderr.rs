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
//! A worker's lines may hold at most a share of the queue ([`SHARE_LINES`],
//! [`SHARE_BYTES`]): a worker that floods (`cat /dev/zero` writes 64 KiB
//! pieces as fast as they are read) then loses its own lines, not the other
//! workers' or xypriss's, which would otherwise find the queue full of its
//! pieces.
//! Once the queue drains, the writer says how many were dropped, on stderr
//! itself, so that a reader learns of the gap where it is.

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// What the writer thread is sent.
enum Message {
    /// A line, and the worker's pid when it is a worker's.
    Line(Vec<u8>, Option<u32>),
    /// Answer once every line before this one is written.
    Flush(SyncSender<()>),
}

/// Lines that may wait for stderr.
pub const QUEUE_LINES: usize = 16_384;

/// Bytes that may wait for stderr.
pub const QUEUE_BYTES: usize = 8 << 20;

/// Lines of one worker that may wait for stderr.
pub const SHARE_LINES: usize = QUEUE_LINES / 4;

/// Bytes of one worker that may wait for stderr: 64 pieces of a cut line.
/// Half the queue: a reader that lags a moment behind one worker's flood
/// costs that worker no more lines than the whole queue did before shares.
pub const SHARE_BYTES: usize = QUEUE_BYTES / 2;

/// What may wait: lines and bytes.
#[derive(Clone, Copy, Debug)]
struct Room {
    lines: usize,
    bytes: usize,
}

struct Queue {
    lines: SyncSender<Message>,
    /// Bytes queued and not yet written.
    bytes: AtomicUsize,
    room: usize,
    /// What each worker may hold, and holds: lines and bytes, by pid.
    share: Room,
    held: Mutex<HashMap<u32, (usize, usize)>>,
    dropped: AtomicU64,
}

impl Queue {
    fn new(room: Room, share: Room) -> (Self, Receiver<Message>) {
        let (tx, rx) = mpsc::sync_channel(room.lines);
        let queue = Self {
            lines: tx,
            bytes: AtomicUsize::new(0),
            room: room.bytes,
            share,
            held: Mutex::default(),
            dropped: AtomicU64::new(0),
        };
        (queue, rx)
    }

    /// Queues `bytes` (worker `from`'s, if any), or counts them dropped when
    /// the queue or that worker's share of it is full; gives them back when
    /// nobody reads the queue.
    fn push(&self, bytes: Vec<u8>, from: Option<u32>) -> Result<(), Vec<u8>> {
        let len = bytes.len();
        if let Some(pid) = from
            && !self.take_share(pid, len)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.room {
            self.written(len, from);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.lines.try_send(Message::Line(bytes, from)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.written(len, from);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(Message::Line(bytes, _))) => {
                self.written(len, from);
                Err(bytes)
            }
            Err(TrySendError::Disconnected(Message::Flush(_))) => Ok(()),
        }
    }

    /// Counts a line of `len` bytes against worker `pid`'s share, if it
    /// has room.
    fn take_share(&self, pid: u32, len: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (lines, bytes) = held.entry(pid).or_default();
        if *lines + 1 > self.share.lines || *bytes + len > self.share.bytes {
            if *lines == 0 {
                held.remove(&pid);
            }
            return false;
        }
        *lines += 1;
        *bytes += len;
        true
    }

    /// A line of `len` bytes (worker `from`'s, if any) left the queue.
    fn written(&self, len: usize, from: Option<u32>) {
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        if let Some(pid) = from {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((lines, bytes)) = held.get_mut(&pid) {
                *lines -= 1;
                *bytes -= len;
                if *lines == 0 {
                    held.remove(&pid);
                }
            }
        }
    }
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// The queue, with its writer thread started on first use. If the system
/// refuses the thread, the queue has no reader and lines are written
/// directly.
fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
        let (queue, rx) = Queue::new(
            Room {
                lines: QUEUE_LINES,
                bytes: QUEUE_BYTES,
            },
            Room {
                lines: SHARE_LINES,
                bytes: SHARE_BYTES,
            },
        );
        let spawned = thread::Builder::new()
            .name("stderr".into())
            .spawn(move || drain(&rx));
        if let Err(err) = spawned {
            let _ = writeln!(io::stderr(), "[xypriss] no stderr writer thread: {err}");
        }
        queue
    })
}

/// Starts the writer thread now rather than with the first line, so that
/// it takes the scheduling of the thread that calls this.
pub fn start() {
    queue();
}

/// Queues one line of xypriss's (its newline included) for stderr; never
/// waits. A line that finds the queue full is dropped and counted.
pub fn line(bytes: Vec<u8>) {
    if let Err(bytes) = queue().push(bytes, None) {
        let _ = io::stderr().write_all(&bytes);
    }
}

/// Queues one line of worker `pid`'s output, as [`line`] does, within the
/// worker's share of the queue.
pub fn worker_line(pid: u32, bytes: Vec<u8>) {
    if let Err(bytes) = queue().push(bytes, Some(pid)) {
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
        let (bytes, from) = match message {
            Message::Line(bytes, from) => (bytes, from),
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
            queue.written(bytes.len(), from);
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

    /// No share smaller than the queue.
    const WHOLE: Room = Room {
        lines: usize::MAX,
        bytes: usize::MAX,
    };

    fn room(lines: usize, bytes: usize) -> Room {
        Room { lines, bytes }
    }

    fn kept(rx: &Receiver<Message>) -> Vec<Vec<u8>> {
        rx.try_iter()
            .filter_map(|m| match m {
                Message::Line(bytes, _) => Some(bytes),
                Message::Flush(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, rx) = Queue::new(room(2, 1 << 20), WHOLE);
        for n in 0..5 {
            assert_eq!(queue.push(vec![b'0' + n, b'\n'], None), Ok(()));
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(kept(&rx), [b"0\n".to_vec(), b"1\n".to_vec()]);
        drop(rx);
        assert_eq!(
            queue.push(b"late\n".to_vec(), None),
            Err(b"late\n".to_vec())
        );
    }

    #[test]
    fn long_lines_are_bounded_by_bytes_not_only_by_count() {
        let (queue, rx) = Queue::new(room(1_000, 100 << 10), WHOLE);
        for _ in 0..4 {
            assert_eq!(queue.push(vec![b'x'; 64 << 10], None), Ok(()));
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_iter().count(), 1);
        queue.written(64 << 10, None);
        assert_eq!(queue.push(vec![b'y'; 64 << 10], None), Ok(()));
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_flooding_worker_loses_its_own_lines_not_the_others() {
        // The queue's defaults and shares, scaled down 16 times.
        let (queue, rx) = Queue::new(room(1_024, 512 << 10), room(256, 256 << 10));
        // Worker 7 writes without a newline: 16 KiB pieces, more than fit.
        for _ in 0..64 {
            queue.push(vec![0; 16 << 10], Some(7)).unwrap();
        }
        // Worker 8 writes short lines as fast as it can.
        for _ in 0..2_000 {
            queue.push(b"spam\n".to_vec(), Some(8)).unwrap();
        }
        queue.push(b"tick 0\n".to_vec(), Some(9)).unwrap();
        queue.push(b"a log\n".to_vec(), None).unwrap();
        let kept = kept(&rx);
        assert_eq!(kept.iter().filter(|l| l.len() == 16 << 10).count(), 16);
        assert_eq!(kept.iter().filter(|l| *l == b"spam\n").count(), 256);
        assert_eq!(
            kept[kept.len() - 2..],
            [b"tick 0\n".to_vec(), b"a log\n".to_vec()]
        );
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 48 + 1_744);
        // Written, its share is the worker's again.
        queue.written(16 << 10, Some(7));
        queue.push(vec![1; 16 << 10], Some(7)).unwrap();
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 48 + 1_744);
    }
}
