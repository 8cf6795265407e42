//! `GET /events`: the pool's NDJSON lines as Server-Sent Events, one line a
//! message, for the dashboard and anyone else.
//!
//! The pool never waits for a client. Its lines reach followers through a
//! broadcast that drops, for a follower that falls behind, the oldest lines
//! rather than wait. But a follower only learns it fell behind when it next
//! reads, and an HTTP stream is read from only while its client's socket
//! takes what is written: a client that stops reading would leave its
//! receiver stuck in the broadcast's ring, its losses uncounted. So each
//! client has a pump of its own, which takes every line as it comes and puts
//! it in the client's bounded queue of [`CLIENT_LINES`]; a line that finds
//! the queue full is lost for that client only, counted, and said in its
//! stream (an `events_lost` line, stage `follower`) where the gap is. A
//! client closed for not reading (see [`super::limits::WRITE_STALL`]) loses
//! the lines left in its queue, which are counted too.
//!
//! Between the lines, the stream carries the pool's status as messages of
//! their own type (`event: status`), first at once and then every
//! [`STATUS_EVERY`]: a page starts from it, and the figures no event carries
//! (the host's memory and pressure, leak slopes, uptimes) stay fresh without
//! the page polling. Clients that take only unnamed messages (`onmessage`)
//! see the NDJSON lines alone. The snapshot is made only when the client
//! takes the stream, so a client that does not read costs the pool nothing.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::response::sse::{Event as Message, Sse};
use futures_util::{Stream, stream};
use tokio::{
    sync::{
        broadcast::{self, error::RecvError},
        mpsc::{self, error::TrySendError},
    },
    time::{Instant, Interval, interval_at},
};

use super::{Handle, Lost};

/// The lines one client may have waiting.
pub const CLIENT_LINES: usize = 4096;

/// How often the stream carries the pool's status. It also keeps an idle
/// stream alive: proxies keep it open, and a client that left shows (the
/// write fails, or stalls).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// One client's stream: its queue, and when its next status is due.
struct Feed {
    lines: mpsc::Receiver<Arc<str>>,
    status: Interval,
    handle: Handle,
}

impl Drop for Feed {
    /// The lines still queued never reach the client.
    fn drop(&mut self) {
        let left = self.lines.len() as u64;
        if left > 0 {
            self.handle.losses().add(left);
        }
    }
}

/// The event stream for one client, from now on.
pub fn stream(handle: Handle) -> Sse<impl Stream<Item = Result<Message, Infallible>>> {
    let (queue, lines) = mpsc::channel(CLIENT_LINES);
    tokio::spawn(pump(handle.follow(), queue, handle.losses()));
    let feed = Feed {
        lines,
        status: interval_at(Instant::now(), STATUS_EVERY),
        handle,
    };
    Sse::new(stream::unfold(feed, next))
}

/// The stream's next message: a line, or the status (a comment once the
/// pool stops answering); none once the pump ended.
async fn next(mut feed: Feed) -> Option<(Result<Message, Infallible>, Feed)> {
    let message = tokio::select! {
        biased;
        _ = feed.status.tick() => match feed.handle.status().await {
            Ok(status) => Message::default()
                .event("status")
                .json_data(&status)
                .unwrap_or_else(|_| Message::default().comment("status")),
            Err(err) => Message::default().comment(err.to_string()),
        },
        line = feed.lines.recv() => Message::default().data(line?.trim_end()),
    };
    Some((Ok(message), feed))
}

/// Moves lines from the broadcast to one client's queue until the client
/// leaves, never waiting for it.
async fn pump(
    mut events: broadcast::Receiver<Arc<str>>,
    queue: mpsc::Sender<Arc<str>>,
    mut lost: Lost,
) {
    // Lost lines not said yet: the notice goes in when there is room.
    let mut unsaid = 0;
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            () = queue.closed() => return,
        };
        let line = match received {
            Ok(line) => line,
            // Only when the pump itself could not run.
            Err(RecvError::Lagged(n)) => {
                lost.add(n);
                unsaid += n;
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if unsaid > 0 {
            match queue.try_send(lost.notice(unsaid)) {
                Ok(()) => unsaid = 0,
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Closed(_)) => return,
            }
        }
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                lost.add(1);
                unsaid += 1;
            }
            Err(TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use serde_json::Value;

    use super::*;
    use crate::api;

    #[tokio::test]
    async fn a_client_that_does_not_read_loses_lines_counted_and_said() {
        let (handle, _calls) = api::channel();
        let events = handle.event_sender();
        let (queue, mut lines) = mpsc::channel(4);
        let pump = tokio::spawn(pump(handle.follow(), queue, handle.losses()));
        // Six lines while the client reads none: the last two are lost.
        for i in 0..6 {
            events.send(format!("{{\"n\":{i}}}\n").into()).unwrap();
        }
        while !events.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(lines.recv().await.unwrap());
        }
        events.send("{\"n\":6}\n".into()).unwrap();
        let notice: Value = serde_json::from_str(&lines.recv().await.unwrap()).unwrap();
        let after = lines.recv().await.unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(&*got[3], "{\"n\":3}\n");
        assert_eq!(notice["event"], "events_lost");
        assert_eq!(notice["stage"], "follower");
        assert_eq!(notice["count"], 2);
        assert_eq!(notice["total"], 2);
        assert_eq!(&*after, "{\"n\":6}\n", "the notice sits where the gap is");
        drop(lines);
        events.send("{}\n".into()).unwrap();
        pump.await.unwrap();
        assert_eq!(
            handle.lost.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the pool counts every follower's losses"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_starts_with_the_status_and_lines_are_messages() {
        let (handle, mut calls) = api::channel();
        let events = handle.event_sender();
        let body = axum::response::IntoResponse::into_response(stream(handle.clone())).into_body();
        let mut frames = body.into_data_stream();
        let loop_ = tokio::spawn(async move {
            let call = calls.recv().await.unwrap();
            assert_eq!(call.request, api::Request::Status);
            let status = Box::new(api::status::sample());
            let _ = call.reply.send(Ok(api::Reply::Status(status)));
            // The loop is gone: the next status is a comment that says so.
        });
        let status = frames.next().await.unwrap().unwrap();
        let status = std::str::from_utf8(&status).unwrap();
        assert!(status.starts_with("event: status\ndata: {"), "{status}");
        assert!(status.contains("\"eventsLostFollower\":0"), "{status}");
        loop_.await.unwrap();
        tokio::time::advance(STATUS_EVERY).await;
        let stopping = frames.next().await.unwrap().unwrap();
        assert_eq!(&stopping[..], b": the pool is stopping\n\n");
        events
            .send("{\"event\":\"scale\",\"from\":1,\"to\":2}\n".into())
            .unwrap();
        let message = frames.next().await.unwrap().unwrap();
        assert_eq!(
            &message[..],
            b"data: {\"event\":\"scale\",\"from\":1,\"to\":2}\n\n"
        );
    }
}
