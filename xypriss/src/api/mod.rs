//! What operators may ask of a running pool, and what it answers.
//!
//! The HTTP status server and the control socket take requests from outside;
//! the control loop, which owns every piece of the pool's state, answers
//! them. They meet here. A request travels to the loop over a channel with a
//! one-shot reply, so that no interface ever reads the pool's state behind
//! the loop's back, and every answer is as fresh as the loop itself. Events
//! reach followers (`xypriss events`, `xypriss top`, the dashboard's
//! `/events`) through a broadcast of the same NDJSON lines that go to stdout;
//! the lines a follower loses are said in its stream and counted for all in
//! the status (`eventsLost.follower`).
//!
//! The request and reply types are the wire format of the control socket
//! (one JSON object a line) and the bodies of the HTTP API, documented in
//! `docs/api.md`.

pub mod client;
mod dashboard;
pub mod http;
mod limits;
pub mod socket;
mod sse;
pub mod token;
pub mod views;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The status the API serves lives in [`crate::report`], which the
/// outputs share; it is known here by its old name too.
pub use crate::report::{self as status, Status};

use crate::output::{
    event::{Event, LossStage},
    ndjson::to_line,
};

/// How many requests may wait for the control loop.
const QUEUE: usize = 64;

/// How many NDJSON lines a follower may fall behind before it loses some.
const FOLLOW_LINES: usize = 16_384;

/// One operation on the pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Everything about the pool now.
    Status,
    /// Sets the pool's size, within `minWorkers` and `maxWorkers`.
    Scale { workers: u32 },
    /// `enableLowMemoryMode()` / `disableLowMemoryMode()`.
    LowMemory { enabled: bool },
    /// Replaces one worker, or every worker one at a time (`worker` absent),
    /// each replacement ready before its predecessor stops.
    Restart {
        #[serde(default)]
        worker: Option<u32>,
    },
    /// Replaces every worker, one at a time, like SIGHUP.
    Reload,
}

impl Request {
    /// Whether it changes the pool (and so needs the token over HTTP).
    pub fn mutates(&self) -> bool {
        !matches!(self, Self::Status)
    }
}

/// What the pool did.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    #[serde(rename_all = "camelCase")]
    Scaled {
        from: u32,
        to: u32,
    },
    #[serde(rename_all = "camelCase")]
    LowMemory {
        enabled: bool,
        changed: bool,
    },
    #[serde(rename_all = "camelCase")]
    Restarting {
        workers: Vec<u32>,
    },
}

/// Why the pool refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no worker {id}")]
    UnknownWorker { id: u32 },
    #[error("cannot scale to {requested} workers: the pool takes {min} to {max}")]
    OutOfRange { requested: u32, min: u32, max: u32 },
    #[error("the pool is stopping")]
    Stopping,
}

impl ApiError {
    /// The HTTP status that goes with it.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownWorker { .. } => 404,
            Self::OutOfRange { .. } => 422,
            Self::Stopping => 503,
        }
    }

    /// A short, stable name for machines.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownWorker { .. } => "unknown_worker",
            Self::OutOfRange { .. } => "out_of_range",
            Self::Stopping => "stopping",
        }
    }
}

/// A request on its way to the control loop, with where its answer goes.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Reply, ApiError>>,
}

/// What the interfaces hold: a way to ask the loop, and the event stream.
#[derive(Clone, Debug)]
pub struct Handle {
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Arc<str>>,
    /// Lines every follower lost, together.
    lost: Arc<AtomicU64>,
}

/// The control loop's end: the calls to answer.
pub type Calls = mpsc::Receiver<Call>;

/// A handle for the interfaces and the loop's end of it.
pub fn channel() -> (Handle, Calls) {
    let (calls, rx) = mpsc::channel(QUEUE);
    let (events, _) = broadcast::channel(FOLLOW_LINES);
    let lost = Arc::default();
    (
        Handle {
            calls,
            events,
            lost,
        },
        rx,
    )
}

impl Handle {
    /// Asks the control loop; [`ApiError::Stopping`] once it has ended.
    /// The status comes with the lines followers lost, which the
    /// interfaces count and the loop does not know.
    pub async fn call(&self, request: Request) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call { request, reply })
            .await
            .map_err(|_| ApiError::Stopping)?;
        let mut reply = answer.await.map_err(|_| ApiError::Stopping)??;
        if let Reply::Status(status) = &mut reply {
            status.counters.events_lost_follower = self.lost.load(Ordering::Relaxed);
        }
        Ok(reply)
    }

    /// The pool's status now.
    pub async fn status(&self) -> Result<Box<Status>, ApiError> {
        match self.call(Request::Status).await? {
            Reply::Status(status) => Ok(status),
            other => unreachable!("the loop answers status with a status, not {other:?}"),
        }
    }

    /// Follows the event stream from now on: NDJSON lines, each ending in a
    /// newline. A follower that falls [`FOLLOW_LINES`] behind loses lines,
    /// and is told how many.
    pub fn follow(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Where the output sends every line for followers.
    pub fn event_sender(&self) -> broadcast::Sender<Arc<str>> {
        self.events.clone()
    }

    /// A new follower's tally of the lines it lost.
    pub fn losses(&self) -> Lost {
        Lost {
            total: 0,
            pool: Arc::clone(&self.lost),
        }
    }
}

/// The lines one follower lost: said in its own stream, and added to the
/// pool's count of every follower's losses.
#[derive(Debug)]
pub struct Lost {
    total: u64,
    pool: Arc<AtomicU64>,
}

impl Lost {
    /// Counts `count` more lost lines.
    pub fn add(&mut self, count: u64) {
        self.total += count;
        self.pool.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts `count` more, and says so in an `events_lost` line.
    pub fn line(&mut self, count: u64) -> Arc<str> {
        self.add(count);
        self.notice(count)
    }

    /// The `events_lost` line for `count` lines already counted.
    pub fn notice(&self, count: u64) -> Arc<str> {
        to_line(&Event::EventsLost {
            stage: LossStage::Follower,
            count,
            total: self.total,
        })
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_control_socket_writes_them() {
        let parse = |s: &str| serde_json::from_str::<Request>(s);
        assert_eq!(parse(r#"{"op":"status"}"#).unwrap(), Request::Status);
        assert_eq!(
            parse(r#"{"op":"scale","workers":3}"#).unwrap(),
            Request::Scale { workers: 3 }
        );
        assert_eq!(
            parse(r#"{"op":"restart"}"#).unwrap(),
            Request::Restart { worker: None }
        );
        assert_eq!(
            parse(r#"{"op":"restart","worker":2}"#).unwrap(),
            Request::Restart { worker: Some(2) }
        );
        assert!(parse(r#"{"op":"scale","workers":-1}"#).is_err());
        assert!(parse(r#"{"op":"scale"}"#).is_err());
        assert!(parse(r#"{"op":"scale","workers":1,"extra":1}"#).is_err());
        assert!(parse(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn only_status_is_read_only() {
        assert!(!Request::Status.mutates());
        assert!(Request::Reload.mutates());
        assert!(Request::LowMemory { enabled: true }.mutates());
    }

    #[tokio::test]
    async fn a_call_after_the_loop_ended_says_stopping() {
        let (handle, calls) = channel();
        drop(calls);
        assert_eq!(
            handle.call(Request::Reload).await.unwrap_err(),
            ApiError::Stopping
        );
    }

    #[tokio::test]
    async fn the_loop_answers_through_the_handle() {
        let (handle, mut calls) = channel();
        let loop_ = tokio::spawn(async move {
            let call = calls.recv().await.unwrap();
            assert_eq!(call.request, Request::Scale { workers: 9 });
            let _ = call.reply.send(Err(ApiError::OutOfRange {
                requested: 9,
                min: 1,
                max: 4,
            }));
        });
        let err = handle
            .call(Request::Scale { workers: 9 })
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), 422);
        assert_eq!(
            err.to_string(),
            "cannot scale to 9 workers: the pool takes 1 to 4"
        );
        loop_.await.unwrap();
    }
}
