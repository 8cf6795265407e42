//! The NDJSON writer: one JSON object per line on stdout, flushed as lines
//! come, from a thread of its own.
//!
//! The control loop never waits for stdout. Lines go through a bounded queue;
//! when a stalled consumer lets it fill, lines are counted as lost and an
//! `events_lost` line says how many, once the queue drains. A closed stdout
//! (EPIPE) is reported through [`Output::closed`], so xypriss stops gracefully;
//! an idle writer would only learn of it at its next line, which a quiet pool
//! may never send, so while it waits it asks `poll` every [`PROBE`].
//!
//! The same lines go to followers of the control socket (`xypriss events`)
//! through a broadcast, which drops lines for a follower that falls behind
//! rather than wait for it; and the output keeps the running totals of what
//! it said (alerts, scalings), for the status API and `/metrics`.

use std::{
    cell::{Cell, RefCell},
    io::{self, Write as _},
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::event::{Event, LossStage};
use crate::report::Counters;

/// Lines that may wait for stdout.
pub const QUEUE_LINES: usize = 65_536;
/// How often an idle writer checks that stdout still has a reader.
const PROBE: Duration = Duration::from_millis(500);
/// …with `minimalFootprint`: at most a few MiB of waiting lines.
pub const QUEUE_LINES_MINIMAL: usize = 4_096;

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a Event,
    /// Unix time in milliseconds.
    timestamp: u64,
}

/// How events are written on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line: the stream's spec.
    Json,
    /// A human line per event (see [`super::pretty`]), coloured or not.
    Pretty { colour: bool },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serializes `event` as one line, with its timestamp.
pub fn to_line(event: &Event) -> String {
    json_line(event, now_ms())
}

fn json_line(event: &Event, timestamp: u64) -> String {
    let mut line = serde_json::to_string(&Line { event, timestamp })
        .expect("events are plain data and always serialize");
    line.push('\n');
    line
}

pub struct Output {
    queue: SyncSender<String>,
    lost: Arc<AtomicU64>,
    closed: watch::Receiver<bool>,
    done: Receiver<()>,
    followers: Option<broadcast::Sender<Arc<str>>>,
    tally: RefCell<Counters>,
    /// Events other than `memory_sample` so far: the pool's state changed.
    changes: Cell<u64>,
    format: Format,
}

impl Output {
    /// Starts the writer thread on stdout, with room for `queue_lines`
    /// lines waiting; the thread runs `on_thread` first.
    pub fn stdout(queue_lines: usize, format: Format, on_thread: fn()) -> io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel(queue_lines);
        let lost = Arc::new(AtomicU64::new(0));
        let (closed_tx, closed) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let writer_lost = Arc::clone(&lost);
        thread::Builder::new()
            .name("ndjson".into())
            .spawn(move || {
                on_thread();
                if let Err(err) = write_lines(&lines, &writer_lost, format) {
                    if err.kind() != io::ErrorKind::BrokenPipe {
                        tracing::error!("stdout: {err}");
                    }
                    let _ = closed_tx.send(true);
                }
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            queue,
            lost,
            closed,
            done,
            followers: None,
            tally: RefCell::default(),
            changes: Cell::new(0),
            format,
        })
    }

    /// Sends every line to `followers` too, from now on.
    pub fn follow_with(&mut self, followers: broadcast::Sender<Arc<str>>) {
        self.followers = Some(followers);
    }

    /// What was said so far, counted.
    pub fn counters(&self) -> Counters {
        let mut counters = self.tally.borrow().clone();
        counters.events_lost_output = self.lost.load(Ordering::Relaxed);
        counters
    }

    /// How many events other than `memory_sample` were said: when it has not
    /// moved, neither has the pool's state, only its memory figures.
    pub fn changes(&self) -> u64 {
        self.changes.get()
    }

    /// Queues `event`; never blocks.
    pub fn emit(&self, event: &Event) {
        count(&mut self.tally.borrow_mut(), event);
        if !matches!(event, Event::MemorySample(_)) {
            self.changes.set(self.changes.get() + 1);
        }
        let timestamp = now_ms();
        let json = json_line(event, timestamp);
        if let Some(followers) = &self.followers
            && followers.receiver_count() > 0
        {
            // Nobody listening is not an error.
            let _ = followers.send(Arc::from(json.as_str()));
        }
        let line = match self.format {
            Format::Json => json,
            Format::Pretty { colour } => super::pretty::line(event, timestamp, colour),
        };
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Resolves when stdout has been closed by its reader.
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|closed| *closed).await;
    }

    /// Writes what is queued, waiting at most `timeout` for a stalled stdout.
    pub fn finish(self, timeout: Duration) {
        drop(self.queue);
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("stdout did not take the last events within {timeout:?}");
            }
        }
    }
}

/// Adds `event` to the running totals.
fn count(counters: &mut Counters, event: &Event) {
    counters.events_emitted += 1;
    match event {
        Event::MemoryAlert { kind, scope, .. } => {
            *counters
                .alerts
                .entry(kind.as_str().to_owned())
                .or_default()
                .entry((*scope).to_owned())
                .or_default() += 1;
        }
        Event::Scale { from, to, .. } if to > from => counters.scale_ups += 1,
        Event::Scale { .. } => counters.scale_downs += 1,
        Event::EventsLost {
            stage: LossStage::Kernel,
            total,
            ..
        } => counters.events_lost_kernel = *total,
        _ => {}
    }
}

fn write_lines(lines: &Receiver<String>, lost: &AtomicU64, format: Format) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    let mut reported = 0;
    loop {
        let line = match lines.recv_timeout(PROBE) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                check_reader(&stdout)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        stdout.write_all(line.as_bytes())?;
        // Write what else is queued before one flush.
        while let Ok(line) = lines.try_recv() {
            stdout.write_all(line.as_bytes())?;
        }
        let total = lost.load(Ordering::Relaxed);
        if total > reported {
            let event = Event::EventsLost {
                stage: LossStage::Output,
                count: total - reported,
                total,
            };
            let line = match format {
                Format::Json => to_line(&event),
                Format::Pretty { colour } => super::pretty::line(&event, now_ms(), colour),
            };
            stdout.write_all(line.as_bytes())?;
            reported = total;
        }
        stdout.flush()?;
    }
}

/// Fails with `BrokenPipe` when `stdout` has lost its reader: `poll` says
/// so at once (POLLERR on a pipe whose read end is closed, POLLHUP on a
/// socket or terminal that hung up), where a write would only at the next line.
fn check_reader(stdout: &impl AsFd) -> io::Result<()> {
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO)?;
    let gone = fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP));
    if gone {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_event_and_timestamp() {
        let line = to_line(&Event::WorkerSpawned {
            worker_id: 2,
            pid: 77,
            generation: 1,
        });
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "worker_spawned");
        assert_eq!(value["workerId"], 2);
        assert_eq!(value["pid"], 77);
        assert!(value["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
