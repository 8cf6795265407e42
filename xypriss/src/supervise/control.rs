//! The control channel: a two-way, line-based channel between xypriss and
//! each worker, that a worker can never use to hurt xypriss.
//!
//! Over 600 lines with its unit tests; the channel itself is the first 385.
//!
//! Each worker gets one end of a Unix stream socket pair as an inherited fd,
//! announced in `XYPRISS_CONTROL_FD`, with the protocol's version in
//! `XYPRISS_PROTOCOL_VERSION`. `docs/worker-protocol.md` is the contract.
//!
//! - xypriss → worker: one JSON object per line (`{"event":"gc_hint",…}`,
//!   `{"event":"memory_alert",…}`, the answer to a request). xypriss's end is
//!   non-blocking, so a worker that never reads only fills the socket's
//!   buffer, after which messages to it are dropped and counted (a line the
//!   socket took only part of is finished before the next one, so the worker
//!   never reads half a line); nothing waits, and no signal is ever sent
//!   (one is used only when the user names one).
//! - worker → xypriss: sd_notify's `KEY=VALUE` assignments, one per line
//!   (`READY=1`, `STATUS=…`), because Node.js and other runtimes cannot send
//!   the Unix datagrams `NOTIFY_SOCKET` needs; and JSON requests
//!   (`{"request":"memory_usage","id":1}`).
//!
//! A worker's lines are read by a small task of their own and reach the
//! control loop as typed [`Incoming`] messages through one bounded queue,
//! which the loop takes a budget of at a time ([`TURN_BUDGET`]). Reading is
//! bounded everywhere: a line is at most [`LINE_MAX`] bytes (a longer one is
//! skipped to its end), a channel is read at most [`LINES_PER_SEC`] lines a
//! second (past that, the reader stops reading until the next second, and the
//! worker's writes wait in its own socket buffer), and the queue is fair
//! between workers (its waiting senders are served in order). A bad line is
//! counted and skipped, never an error.

use std::{
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};

/// The protocol's version, given to workers in `XYPRISS_PROTOCOL_VERSION`.
/// Bumped when a change can break a worker that speaks an older one.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line a worker may send, newline excluded, as systemd's
/// NOTIFY_BUFFER_MAX; longer ones are skipped and counted.
pub const LINE_MAX: usize = 4096;

/// The most lines read from one worker's channel in a second.
pub const LINES_PER_SEC: u32 = 1000;

/// The most messages the control loop takes in one turn.
pub const TURN_BUDGET: usize = 64;

/// Messages read and not yet taken by the loop, all workers together.
const QUEUE: usize = 256;

/// A message from a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// An sd_notify assignment: `READY=1`, `STATUS=…`, `STOPPING=1`, ….
    Notify { key: String, value: String },
    /// `{"request":"memory_usage","id":N}`: xypriss's view of this worker.
    MemoryUsage { id: u64 },
}

/// Why a line from a worker was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    #[error("a line longer than {LINE_MAX} bytes")]
    TooLong,
    #[error("a line that is not UTF-8")]
    NotUtf8,
    #[error("neither KEY=VALUE nor a JSON object")]
    Form,
    #[error("a JSON request that does not parse: {0}")]
    Json(String),
    #[error("an unknown request {0:?}")]
    UnknownRequest(String),
}

/// A request as a worker writes it.
/// Fields it does not know are ignored, so that a newer worker library can
/// add some.
#[derive(serde::Deserialize)]
struct Request {
    request: String,
    #[serde(default)]
    id: u64,
}

/// Parses one line (its newline removed); `None` for an empty one.
pub fn parse_line(line: &[u8]) -> Option<Result<Incoming, BadLine>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(Err(BadLine::NotUtf8));
    };
    if text.trim_start().starts_with('{') {
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(err) => return Some(Err(BadLine::Json(err.to_string()))),
        };
        return Some(match request.request.as_str() {
            "memory_usage" => Ok(Incoming::MemoryUsage { id: request.id }),
            _ => Err(BadLine::UnknownRequest(request.request)),
        });
    }
    Some(match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains(char::is_whitespace) => {
            Ok(Incoming::Notify {
                key: key.to_owned(),
                value: value.to_owned(),
            })
        }
        _ => Err(BadLine::Form),
    })
}

/// Splits a byte stream into lines of at most [`LINE_MAX`] bytes, keeping
/// no more than that between reads.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// Inside a line already too long: skipped up to its newline.
    skipping: bool,
}

impl Lines {
    /// Feeds `bytes`; pushes each complete line's message (or why it was
    /// skipped) onto `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Result<Incoming, BadLine>>) {
        while !bytes.is_empty() {
            let (chunk, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (&bytes[..end], true),
                None => (bytes, false),
            };
            bytes = &bytes[(chunk.len() + usize::from(complete)).min(bytes.len())..];
            if !self.skipping && self.partial.len() + chunk.len() > LINE_MAX {
                self.partial.clear();
                self.skipping = true;
                out.push(Err(BadLine::TooLong));
            }
            if !self.skipping {
                self.partial.extend_from_slice(chunk);
            }
            if complete {
                if !self.skipping {
                    out.extend(parse_line(&self.partial));
                }
                self.partial.clear();
                self.skipping = false;
            }
        }
    }
}

/// At most `per_sec` lines in any one-second window.
struct RateLimit {
    per_sec: u32,
    window: Instant,
    used: u32,
}

impl RateLimit {
    fn new(per_sec: u32, now: Instant) -> Self {
        Self {
            per_sec,
            window: now,
            used: 0,
        }
    }

    /// Counts `lines` read at `now`; returns how long to stop reading
    /// (zero when the budget has room).
    fn spend(&mut self, lines: u32, now: Instant) -> Duration {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(lines);
        if self.used < self.per_sec {
            return Duration::ZERO;
        }
        (self.window + Duration::from_secs(1)).saturating_duration_since(now)
    }
}

/// Which channel a message came on; [`Control::id`] names its channel.
pub type ChannelId = u64;

/// Where the workers' messages arrive, all channels together.
pub struct Inbox {
    sender: mpsc::Sender<(ChannelId, Incoming)>,
    receiver: mpsc::Receiver<(ChannelId, Incoming)>,
    next: ChannelId,
}

impl Default for Inbox {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        Self {
            sender,
            receiver,
            next: 0,
        }
    }
}

impl Inbox {
    /// A new channel: xypriss's end, and the end for the worker. Its lines
    /// arrive here; must be called within a tokio runtime.
    pub fn pair(&mut self) -> io::Result<(Control, WorkerEnd)> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let reading = tokio::net::UnixStream::from_std(ours.try_clone()?)?;
        let id = self.next;
        self.next += 1;
        let invalid = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read(reading, id, self.sender.clone(), Arc::clone(&invalid)));
        Ok((
            Control {
                stream: ours,
                rest: Vec::new(),
                id,
                dropped: 0,
                invalid,
                reader,
            },
            WorkerEnd(theirs.into()),
        ))
    }

    /// Waits for messages, then moves up to [`TURN_BUDGET`] of them into `into`.
    pub async fn recv(&mut self, into: &mut Vec<(ChannelId, Incoming)>) {
        // The inbox holds a sender itself: the queue never closes.
        self.receiver.recv_many(into, TURN_BUDGET).await;
    }
}

/// Reads one channel until the worker's end closes (or the channel is dropped).
async fn read(
    stream: tokio::net::UnixStream,
    id: ChannelId,
    sender: mpsc::Sender<(ChannelId, Incoming)>,
    invalid: Arc<AtomicU64>,
) {
    let mut buf = [0u8; LINE_MAX];
    let mut lines = Lines::default();
    let mut out = Vec::new();
    let mut limit = RateLimit::new(LINES_PER_SEC, Instant::now());
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let n = match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        lines.feed(&buf[..n], &mut out);
        let count = out.len() as u32;
        for message in out.drain(..) {
            match message {
                Ok(message) => {
                    if sender.send((id, message)).await.is_err() {
                        return;
                    }
                }
                Err(bad) => {
                    invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("control channel {id}: skipped {bad}");
                }
            }
        }
        let pause = limit.spend(count, Instant::now());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// xypriss's end of one worker's channel. Dropping it stops its reader.
pub struct Control {
    stream: UnixStream,
    /// The end of a line the socket took only part of.
    rest: Vec<u8>,
    id: ChannelId,
    /// Messages dropped because the worker did not read its end.
    pub dropped: u64,
    /// Lines from the worker skipped as bad.
    invalid: Arc<AtomicU64>,
    reader: JoinHandle<()>,
}

/// The worker's end, until it is handed over.
pub struct WorkerEnd(OwnedFd);

impl WorkerEnd {
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Control {
    /// Which channel this is, as [`Inbox::recv`] names it.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Lines from the worker skipped as bad, so far.
    pub fn invalid(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    /// Answers the worker's `memory_usage` request `id` with `usage`, the
    /// worker's view as the status API shows it.
    pub fn answer_memory_usage(&mut self, id: u64, usage: &impl Serialize) -> bool {
        #[derive(Serialize)]
        struct Answer<'a, T> {
            event: &'static str,
            id: u64,
            usage: &'a T,
        }
        self.send(&Answer {
            event: "memory_usage",
            id,
            usage,
        })
    }

    /// Sends one message line; never blocks. Returns whether it was sent
    /// (or, when the socket took only part of it, will be: its rest goes
    /// before the next message, so that the worker never reads half a line).
    pub fn send(&mut self, message: &impl Serialize) -> bool {
        let Ok(mut line) = serde_json::to_vec(message) else {
            self.dropped += 1;
            return false;
        };
        line.push(b'\n');
        if !self.flush_rest() {
            self.dropped += 1;
            return false;
        }
        match self.stream.write(&line) {
            Ok(n) if n > 0 => {
                self.rest = line.split_off(n);
                true
            }
            Ok(_) | Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }

    /// Writes what is left of a line the socket took only part of; false
    /// while some of it is still left.
    fn flush_rest(&mut self) -> bool {
        while !self.rest.is_empty() {
            match self.stream.write(&self.rest) {
                Ok(n) if n > 0 => {
                    self.rest.drain(..n);
                }
                Ok(_) | Err(_) => return false,
            }
        }
        true
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};

    fn notify(key: &str, value: &str) -> Incoming {
        Incoming::Notify {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn parses_assignments_requests_and_names_what_is_wrong() {
        assert_eq!(parse_line(b"READY=1"), Some(Ok(notify("READY", "1"))));
        assert_eq!(
            parse_line(b"STATUS=serving on :8080 = fine\r"),
            Some(Ok(notify("STATUS", "serving on :8080 = fine")))
        );
        assert_eq!(
            parse_line(br#"{"request":"memory_usage","id":7}"#),
            Some(Ok(Incoming::MemoryUsage { id: 7 }))
        );
        assert_eq!(
            parse_line(br#"  {"request":"memory_usage","later":true}"#),
            Some(Ok(Incoming::MemoryUsage { id: 0 }))
        );
        assert_eq!(parse_line(b""), None);
        assert_eq!(parse_line(b" \r"), None);
        assert_eq!(parse_line(b"READY"), Some(Err(BadLine::Form)));
        assert_eq!(parse_line(b"=1"), Some(Err(BadLine::Form)));
        assert_eq!(parse_line(b"RE ADY=1"), Some(Err(BadLine::Form)));
        assert_eq!(parse_line(b"STATUS=caf\xe9"), Some(Err(BadLine::NotUtf8)));
        assert_eq!(
            parse_line(br#"{"request":"reboot"}"#),
            Some(Err(BadLine::UnknownRequest("reboot".into())))
        );
        for bad in [
            &br#"{"request":"memory_usage","id":-1}"#[..],
            br#"{"id":1}"#,
            b"{not json",
        ] {
            assert!(
                matches!(parse_line(bad), Some(Err(BadLine::Json(_)))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lines_are_split_across_reads_and_long_ones_skipped_whole() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.feed(b"REA", &mut out);
        assert!(out.is_empty());
        lines.feed(b"DY=1\nSTATUS=a\n\nSTA", &mut out);
        lines.feed(b"TUS=b\n", &mut out);
        assert_eq!(
            out,
            [
                Ok(notify("READY", "1")),
                Ok(notify("STATUS", "a")),
                Ok(notify("STATUS", "b"))
            ]
        );
        out.clear();
        // A line of exactly LINE_MAX bytes is taken; one byte more is not,
        // however it arrives, and the rest of it is not taken for a line.
        let max = format!("STATUS={}", "x".repeat(LINE_MAX - 7));
        lines.feed(format!("{max}\n").as_bytes(), &mut out);
        assert!(
            matches!(&out[..], [Ok(Incoming::Notify { value, .. })] if value.len() == LINE_MAX - 7)
        );
        out.clear();
        let long = format!("STATUS={}", "y".repeat(LINE_MAX));
        for piece in long.as_bytes().chunks(1000) {
            lines.feed(piece, &mut out);
        }
        lines.feed(b"\nREADY=1\n", &mut out);
        assert_eq!(out, [Err(BadLine::TooLong), Ok(notify("READY", "1"))]);
        assert!(lines.partial.capacity() <= 2 * LINE_MAX);
    }

    #[test]
    fn the_rate_limit_pauses_reading_until_the_next_second() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, start);
        assert_eq!(limit.spend(9, start), Duration::ZERO);
        let later = start + Duration::from_millis(400);
        assert_eq!(limit.spend(1, later), Duration::from_millis(600));
        let next = start + Duration::from_secs(1);
        assert_eq!(limit.spend(3, next), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_reading_worker_gets_each_message_as_a_line() {
        let (mut control, end) = Inbox::default().pair().unwrap();
        let reader = UnixStream::from(end.0);
        assert!(control.send(&serde_json::json!({"event": "gc_hint", "reason": "test"})));
        assert!(control.send(&serde_json::json!({"event": "low_memory_mode", "enabled": true})));
        assert!(control.answer_memory_usage(3, &serde_json::json!({"id": 0, "rssBytes": 5})));
        let mut lines = BufReader::new(reader).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "gc_hint");
        let second: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(second["enabled"], true);
        let third: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(
            third,
            serde_json::json!({"event": "memory_usage", "id": 3, "usage": {"id": 0, "rssBytes": 5}})
        );
    }

    #[tokio::test]
    async fn a_worker_that_never_reads_costs_drops_not_waits() {
        let (mut control, _end) = Inbox::default().pair().unwrap();
        let message = serde_json::json!({"event": "gc_hint", "padding": "x".repeat(1000)});
        // A send that waited for the reader would never return: the bound
        // only tells a blocked send from a slow machine.
        let sending = tokio::task::spawn_blocking(move || {
            let sent = (0..10_000).filter(|_| control.send(&message)).count();
            (sent, control.dropped)
        });
        let (sent, dropped) = tokio::time::timeout(Duration::from_secs(60), sending)
            .await
            .expect("sending to a worker that never reads returns")
            .unwrap();
        assert!(sent > 0 && sent < 10_000, "sent {sent}");
        assert_eq!(dropped, 10_000 - sent as u64);
    }

    #[tokio::test]
    async fn a_worker_that_reads_late_still_reads_whole_lines() {
        let (mut control, end) = Inbox::default().pair().unwrap();
        let mut reader = UnixStream::from(end.0);
        reader.set_nonblocking(true).unwrap();
        // Lines longer than the kernel puts in one buffer, so that a full
        // socket takes only part of one.
        let message =
            |n: usize| serde_json::json!({"event": "gc_hint", "n": n, "pad": "y".repeat(150_000)});
        let mut sent = 0;
        while control.send(&message(sent)) {
            sent += 1;
        }
        assert!(!control.rest.is_empty(), "the socket took part of a line");
        let mut read = Vec::new();
        let mut buf = [0u8; 65536];
        let mut drain = |read: &mut Vec<u8>| {
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
        };
        drain(&mut read);
        // The next message completes the line cut short, then goes.
        assert!(control.send(&serde_json::json!({"event": "gc_hint", "n": sent})));
        sent += 1;
        drain(&mut read);
        let lines: Vec<serde_json::Value> = read
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a whole JSON line"))
            .collect();
        assert_eq!(lines.len(), sent);
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(line["n"], n);
        }
    }

    #[tokio::test]
    async fn a_worker_that_closed_its_end_costs_drops() {
        let (mut control, end) = Inbox::default().pair().unwrap();
        drop(end);
        assert!(!control.send(&serde_json::json!({"event": "gc_hint"})));
        assert_eq!(control.dropped, 1);
    }

    #[tokio::test]
    async fn what_workers_write_arrives_typed_by_channel_and_bad_lines_are_counted() {
        let mut inbox = Inbox::default();
        let (first, first_end) = inbox.pair().unwrap();
        let (second, second_end) = inbox.pair().unwrap();
        assert_ne!(first.id(), second.id());
        let mut first_end = UnixStream::from(first_end.0);
        let mut second_end = UnixStream::from(second_end.0);
        first_end
            .write_all(b"garbage\nREADY=1\n{\"request\":\"nope\"}\n")
            .unwrap();
        second_end
            .write_all(b"{\"request\":\"memory_usage\",\"id\":3}\n")
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < deadline {
            tokio::time::timeout(Duration::from_secs(10), inbox.recv(&mut got))
                .await
                .expect("messages arrive");
        }
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(
            got,
            [
                (first.id(), notify("READY", "1")),
                (second.id(), Incoming::MemoryUsage { id: 3 })
            ]
        );
        assert_eq!(first.invalid(), 2);
        assert_eq!(second.invalid(), 0);
    }

    #[tokio::test]
    async fn a_flooding_worker_does_not_keep_another_waiting() {
        let mut inbox = Inbox::default();
        let (flooding, flooding_end) = inbox.pair().unwrap();
        let (quiet, quiet_end) = inbox.pair().unwrap();
        let mut flooding_end = UnixStream::from(flooding_end.0);
        flooding_end.set_nonblocking(true).unwrap();
        // Far more than one second's budget, as fast as the socket takes it.
        let burst = "STATUS=busy\n".repeat(10 * LINES_PER_SEC as usize);
        let written = flooding_end.write(burst.as_bytes()).unwrap_or(0);
        assert!(written > 0);
        UnixStream::from(quiet_end.0)
            .write_all(b"READY=1\n")
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.iter().any(|(id, _)| *id == quiet.id()) && Instant::now() < deadline {
            let mut turn = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), inbox.recv(&mut turn))
                .await
                .expect("messages arrive");
            assert!(turn.len() <= TURN_BUDGET);
            got.extend(turn);
        }
        let from_flood = got.iter().filter(|(id, _)| *id == flooding.id()).count();
        assert!(
            got.iter()
                .any(|(id, m)| *id == quiet.id() && *m == notify("READY", "1")),
            "the quiet worker's READY=1 arrives"
        );
        // Lines are read in LINE_MAX chunks: the limit is checked after each.
        assert!(
            from_flood <= LINES_PER_SEC as usize + LINE_MAX / "STATUS=busy\n".len() + QUEUE,
            "{from_flood} lines of the flood"
        );
    }
}
