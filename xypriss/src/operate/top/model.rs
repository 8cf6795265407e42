//! What `xypriss top` shows, apart from drawing it: each worker's resident
//! memory over the last minutes (kept here, from the status polls: the pool
//! keeps no history), the header and rows cut from the latest status, and the
//! alerts picked out of the event stream. Pure, and tested as such.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::{
    operate::{
        format::{duration, mib, on_off},
        table::Column,
    },
    report::Status,
};

/// Points of history per worker: two minutes at one poll every 500 ms.
pub const HISTORY: usize = 240;

/// Alerts kept, newest first.
pub const ALERTS: usize = 100;

/// The latest [`HISTORY`] values of a series, oldest first.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<u64>,
}

impl History {
    pub fn push(&mut self, value: u64) {
        if self.points.len() == HISTORY {
            self.points.pop_front();
        }
        self.points.push_back(value);
    }

    /// The latest `n` values, oldest first.
    pub fn latest(&self, n: usize) -> impl Iterator<Item = u64> + '_ {
        self.points
            .iter()
            .skip(self.points.len().saturating_sub(n))
            .copied()
    }
}

/// How a worker (or the pool) fares, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mood {
    Good,
    Warning,
    Bad,
}

impl Mood {
    fn of(health: &str) -> Self {
        match health {
            "healthy" => Self::Good,
            "warning" => Self::Warning,
            _ => Self::Bad,
        }
    }
}

/// The columns of [`Row::cells`].
pub const COLUMNS: [Column; 9] = [
    Column::Id,
    Column::Pid,
    Column::Status,
    Column::Health,
    Column::Rss,
    Column::FaultRate,
    Column::AllocationRate,
    Column::Restarts,
    Column::Leak,
];

/// One worker process.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub pid: u32,
    pub cells: [String; COLUMNS.len()],
    pub mood: Mood,
}

/// Everything `top` knows.
#[derive(Debug, Default)]
pub struct Model {
    status: Option<Status>,
    /// Why the latest poll failed, if it did.
    error: Option<String>,
    /// Resident memory by worker pid: a restarted worker starts a new line.
    histories: BTreeMap<u32, History>,
    alerts: VecDeque<String>,
}

impl Model {
    /// A new status: its figures join the histories.
    pub fn update(&mut self, status: Status) {
        for w in &status.workers {
            self.histories.entry(w.pid).or_default().push(w.rss_bytes);
        }
        self.histories
            .retain(|pid, _| status.workers.iter().any(|w| w.pid == *pid));
        self.status = Some(status);
        self.error = None;
    }

    /// The poll failed: the last status stays on screen, marked stale.
    pub fn failed(&mut self, why: String) {
        self.error = Some(why);
    }

    /// An NDJSON line of the pool's: kept if it is worth an operator's eye.
    pub fn event(&mut self, line: &str) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if let Some(alert) = alert(&event) {
            self.note(alert);
        }
    }

    /// Adds a line to the alerts.
    pub fn note(&mut self, text: String) {
        self.alerts.push_front(text);
        self.alerts.truncate(ALERTS);
    }

    /// The header's lines, and how the pool fares.
    pub fn header(&self) -> (Vec<String>, Mood) {
        let Some(s) = &self.status else {
            let why = self.error.as_deref().unwrap_or("waiting for the pool…");
            return (vec![why.to_owned()], Mood::Bad);
        };
        let usage = &s.memory.current_usage;
        let mut lines = vec![
            format!(
                "pool {}  pid {}  up {}  observer {}  low-memory {}",
                s.pool,
                s.pid,
                duration(s.uptime_sec),
                s.observer,
                on_off(s.low_memory_mode)
            ),
            format!(
                "workers {} (min {}, max {})  rss {} of {}{}{}",
                s.workers_desired,
                s.min_workers,
                s.max_workers,
                mib(usage.total_rss_bytes),
                mib(usage.max_total_memory_bytes),
                usage
                    .system_available_bytes
                    .map(|a| format!("  available {}", mib(a)))
                    .unwrap_or_default(),
                usage
                    .pressure_some_avg10
                    .map(|p| format!("  pressure {p:.2}%"))
                    .unwrap_or_default(),
            ),
        ];
        let mut mood = if s.health.healthy {
            lines.push("healthy".into());
            Mood::Good
        } else {
            lines.push(format!("unhealthy: {}", s.health.details.join("; ")));
            Mood::Bad
        };
        if let Some(why) = &self.error {
            lines.push(format!("not updated: {why}"));
            mood = Mood::Bad;
        }
        (lines, mood)
    }

    /// One row per worker process.
    pub fn rows(&self) -> Vec<Row> {
        let Some(s) = &self.status else {
            return Vec::new();
        };
        s.workers
            .iter()
            .map(|w| Row {
                pid: w.pid,
                cells: COLUMNS.map(|c| c.cell(w)),
                mood: Mood::of(&w.health),
            })
            .collect()
    }

    /// The resident-memory history of the worker process `pid`.
    pub fn history(&self, pid: u32) -> Option<&History> {
        self.histories.get(&pid)
    }

    /// The alerts, newest first.
    pub fn alerts(&self) -> impl Iterator<Item = &str> {
        self.alerts.iter().map(String::as_str)
    }
}

/// The alert line for `event`, if it is one: thresholds, leaks, OOM kills,
/// crashes, scaling, low-memory mode and lost events. Times are UTC.
fn alert(event: &Value) -> Option<String> {
    let text = |field: &str| event[field].as_str().unwrap_or("?").to_owned();
    let number = |field: &str| event[field].as_u64().unwrap_or(0);
    let worker = || format!("worker {} (pid {})", number("workerId"), number("pid"));
    let what = match event["event"].as_str()? {
        "memory_alert" => format!(
            "{} {}: {} [{}]",
            text("type"),
            text("scope"),
            text("message"),
            text("action")
        ),
        "memory_recovered" => format!(
            "recovered from {} ({}): {}",
            text("type"),
            text("scope"),
            mib(number("memoryUsage"))
        ),
        "oom_kill" => format!(
            "OOM kill of pid {} in worker {} at {}",
            number("pid"),
            number("workerId"),
            mib(number("rssBytes"))
        ),
        "worker_exited" if event["expected"] == false => {
            let how = match event["signal"].as_str() {
                Some(signal) => format!("killed by {signal}"),
                None => format!("exited with {}", number("code")),
            };
            format!("{} {how}", worker())
        }
        "worker_restarted" => format!(
            "worker {} restarted ({}), {} restarts",
            number("workerId"),
            text("reason"),
            number("restarts")
        ),
        "worker_errored" => format!("worker {} errored: {}", number("workerId"), text("message")),
        "scale" => format!(
            "scaled from {} to {} ({})",
            number("from"),
            number("to"),
            text("reason")
        ),
        "low_memory_mode" => format!(
            "low-memory mode {} ({})",
            on_off(event["enabled"] == true),
            text("reason")
        ),
        "events_lost" => format!("{} events lost ({})", number("count"), text("stage")),
        _ => return None,
    };
    let time = event["timestamp"]
        .as_u64()
        .map(time_of_day)
        .unwrap_or_default();
    Some(format!("{time}  {what}"))
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds, in any year: an event
/// comes from a pool, and a pool's clock may say anything.
fn time_of_day(ms: u64) -> String {
    let secs = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operate::table::tests::{sample, worker};

    #[test]
    fn an_event_from_past_year_9999_is_shown_not_a_panic() {
        for (ms, shown) in [
            (3_723_000, "01:02:03"),
            // 10000-01-01T00:00:01Z.
            (253_402_300_801_000, "00:00:01"),
            (u64::MAX, "14:25:51"),
        ] {
            let line =
                format!(r#"{{"event":"scale","from":1,"to":2,"reason":"api","timestamp":{ms}}}"#);
            let mut model = Model::default();
            model.event(&line);
            let feed = model.alerts().collect::<Vec<_>>();
            assert!(feed.iter().any(|l| l.starts_with(shown)), "{ms}: {feed:?}");
        }
    }

    #[test]
    fn history_keeps_the_latest_points() {
        let mut history = History::default();
        for v in 0..(HISTORY as u64 + 10) {
            history.push(v);
        }
        let latest: Vec<u64> = history.latest(3).collect();
        assert_eq!(
            latest,
            [HISTORY as u64 + 7, HISTORY as u64 + 8, HISTORY as u64 + 9]
        );
        assert_eq!(history.latest(1000).count(), HISTORY);
        assert_eq!(history.latest(1000).next(), Some(10));
    }

    #[test]
    fn histories_follow_the_worker_processes() {
        let mut model = Model::default();
        model.update(sample());
        model.update(sample());
        assert_eq!(model.history(4000).unwrap().latest(10).count(), 2);
        let mut replaced = sample();
        replaced.workers = vec![worker(0, 120), {
            let mut w = worker(1, 5);
            w.pid = 5000;
            w
        }];
        model.update(replaced);
        assert_eq!(
            model.history(4000).unwrap().latest(10).collect::<Vec<_>>(),
            [100 << 20, 100 << 20, 120 << 20]
        );
        assert!(model.history(4001).is_none(), "the gone process is dropped");
        assert_eq!(model.history(5000).unwrap().latest(10).count(), 1);
    }

    #[test]
    fn rows_and_header_come_from_the_status() {
        let mut model = Model::default();
        let (header, mood) = model.header();
        assert_eq!(
            (header[0].as_str(), mood),
            ("waiting for the pool…", Mood::Bad)
        );
        model.update(sample());
        let rows = model.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].cells[..5],
            ["0", "4000", "ready", "healthy", "100.0 MiB"]
        );
        assert_eq!(rows[0].mood, Mood::Good);
        assert_eq!(rows[1].mood, Mood::Bad);
        assert_eq!(rows[1].cells[6], "+1.5 MiB/s");
        let (header, mood) = model.header();
        assert!(
            header[0].starts_with("pool web  pid 42  up 1h00m"),
            "{header:?}"
        );
        assert!(
            header[1].contains("rss 400.0 MiB of 2048.0 MiB"),
            "{header:?}"
        );
        assert_eq!(header[2], "unhealthy: worker 1 (pid 4001) is leaking");
        assert_eq!(mood, Mood::Bad);
        model.failed("no pool named web is running".into());
        assert_eq!(
            model.header().0.last().unwrap(),
            "not updated: no pool named web is running"
        );
        assert_eq!(model.rows().len(), 2, "the last status stays");
    }

    #[test]
    fn alerts_are_picked_from_the_events_newest_first() {
        let mut model = Model::default();
        for line in [
            r#"{"event":"memory_sample","workerId":0,"rssBytes":1,"timestamp":0}"#,
            r#"{"event":"memory_alert","type":"warning","scope":"worker","workerId":0,"pid":9,"message":"worker 0 over 80%","action":"none","timestamp":3723000}"#,
            r#"{"event":"worker_exited","workerId":1,"pid":10,"expected":true,"code":0,"timestamp":0}"#,
            r#"{"event":"worker_exited","workerId":1,"pid":11,"expected":false,"signal":"SIGKILL","timestamp":0}"#,
            "not json",
            r#"{"event":"scale","from":2,"to":3,"reason":"api","timestamp":0}"#,
        ] {
            model.event(line);
        }
        let alerts: Vec<&str> = model.alerts().collect();
        assert_eq!(
            alerts,
            [
                "00:00:00  scaled from 2 to 3 (api)",
                "00:00:00  worker 1 (pid 11) killed by SIGKILL",
                "01:02:03  warning worker: worker 0 over 80% [none]",
            ]
        );
        for _ in 0..ALERTS + 5 {
            model.event(r#"{"event":"events_lost","stage":"follower","count":1,"timestamp":0}"#);
        }
        assert_eq!(model.alerts().count(), ALERTS);
    }
}
