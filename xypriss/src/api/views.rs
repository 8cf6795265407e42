//! The HTTP API's JSON bodies, each cut from one [`Status`] so that the
//! figures in one answer agree with each other. `/cluster/memory` keeps the
//! shape of XyPriss's own dashboard endpoint (`{"memory": {...},
//! "timestamp": ...}`), so that what was written against it reads ours.

use std::collections::BTreeMap;

use serde::Serialize;

use super::status::{Health, Memory, Status, Usage, Worker};

/// `GET /cluster/memory`.
#[derive(Debug, Serialize)]
pub struct MemoryView<'a> {
    memory: MemoryBody<'a>,
    timestamp: &'a str,
}

#[derive(Debug, Serialize)]
struct MemoryBody<'a> {
    #[serde(flatten)]
    memory: &'a Memory,
    workers: &'a [Worker],
}

impl<'a> MemoryView<'a> {
    pub fn new(status: &'a Status) -> Self {
        Self {
            memory: MemoryBody {
                memory: &status.memory,
                workers: &status.workers,
            },
            timestamp: &status.timestamp,
        }
    }
}

/// `GET /cluster/health`.
#[derive(Debug, Serialize)]
pub struct HealthView<'a> {
    #[serde(flatten)]
    health: &'a Health,
    timestamp: &'a str,
}

impl<'a> HealthView<'a> {
    pub fn new(status: &'a Status) -> Self {
        Self {
            health: &status.health,
            timestamp: &status.timestamp,
        }
    }
}

/// `GET /workers`: every worker process, both of a worker being replaced.
#[derive(Debug, Serialize)]
pub struct WorkersView<'a> {
    workers: &'a [Worker],
    timestamp: &'a str,
}

impl<'a> WorkersView<'a> {
    pub fn new(status: &'a Status) -> Self {
        Self {
            workers: &status.workers,
            timestamp: &status.timestamp,
        }
    }
}

/// `GET /cluster/metrics`: the pool's totals, as `getClusterMetrics()`.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalsView<'a> {
    pool: &'a str,
    uptime_sec: u64,
    /// Worker processes not stopping (two for a worker being replaced).
    workers: u32,
    workers_ready: u32,
    workers_desired: u32,
    min_workers: u32,
    max_workers: u32,
    memory_usage: &'a Usage,
    /// Summed over every process, as `memoryUsage.totalRssBytes` is.
    anon_bytes: u64,
    swap_bytes: u64,
    allocation_rate: f64,
    fault_rate: f64,
    page_faults: u64,
    /// Summed over the workers' newest processes.
    restarts: u64,
    low_memory_mode: bool,
    /// `memory_alert` events by `type` then `scope`.
    alerts: &'a BTreeMap<String, BTreeMap<String, u64>>,
    events_lost: EventsLost,
    scale_events: ScaleEvents,
    timestamp: &'a str,
}

#[derive(Debug, PartialEq, Serialize)]
struct EventsLost {
    kernel: u64,
    output: u64,
    follower: u64,
}

#[derive(Debug, PartialEq, Serialize)]
struct ScaleEvents {
    up: u64,
    down: u64,
}

impl<'a> TotalsView<'a> {
    pub fn new(status: &'a Status) -> Self {
        let count = |pred: fn(&Worker) -> bool| {
            u32::try_from(status.workers.iter().filter(|w| pred(w)).count()).unwrap_or(u32::MAX)
        };
        let processes = status.workers.iter();
        Self {
            pool: &status.pool,
            uptime_sec: status.uptime_sec,
            workers: count(|w| w.status != "stopping"),
            workers_ready: count(|w| w.status == "ready"),
            workers_desired: status.workers_desired,
            min_workers: status.min_workers,
            max_workers: status.max_workers,
            memory_usage: &status.memory.current_usage,
            anon_bytes: processes.clone().map(|w| w.anon_bytes).sum(),
            swap_bytes: processes.clone().map(|w| w.swap_bytes).sum(),
            allocation_rate: processes.clone().map(|w| w.allocation_rate).sum(),
            fault_rate: processes.clone().map(|w| w.fault_rate).sum(),
            page_faults: processes.map(|w| w.page_faults).sum(),
            restarts: status.newest_workers().map(|w| u64::from(w.restarts)).sum(),
            low_memory_mode: status.low_memory_mode,
            alerts: &status.counters.alerts,
            events_lost: EventsLost {
                kernel: status.counters.events_lost_kernel,
                output: status.counters.events_lost_output,
                follower: status.counters.events_lost_follower,
            },
            scale_events: ScaleEvents {
                up: status.counters.scale_ups,
                down: status.counters.scale_downs,
            },
            timestamp: &status.timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::status::sample;

    fn json_of(view: &impl Serialize) -> Value {
        serde_json::to_value(view).unwrap()
    }

    #[test]
    fn memory_keeps_the_reference_shape() {
        let status = sample();
        let view = json_of(&MemoryView::new(&status));
        assert_eq!(view["timestamp"], "2026-01-02T03:04:05.678Z");
        let memory = &view["memory"];
        for key in [
            "recommendations",
            "suggestedWorkerCount",
            "optimalWorkerCount",
            "canEnableLowMemoryMode",
            "currentUsage",
            "healthy",
            "workers",
        ] {
            assert!(memory.get(key).is_some(), "memory.{key} in {memory}");
        }
        assert_eq!(memory["optimalWorkerCount"], 3);
        assert_eq!(memory["currentUsage"]["totalRssBytes"], 600 << 20);
        let leaking = &memory["workers"][2];
        for key in [
            "id",
            "pid",
            "status",
            "health",
            "rssBytes",
            "anonBytes",
            "swapBytes",
            "faultRate",
            "restarts",
            "uptimeSec",
        ] {
            assert!(leaking.get(key).is_some(), "workers[].{key} in {leaking}");
        }
        assert_eq!(leaking["health"], "leaking");
        assert_eq!(leaking["leak"]["leaking"], true);
        assert_eq!(leaking["leak"]["confidence"], 0.99);
    }

    #[test]
    fn health_is_the_verdict_and_its_details() {
        let status = sample();
        assert_eq!(
            json_of(&HealthView::new(&status)),
            json!({
                "healthy": false,
                "details": ["worker 1 (pid 101) is leaking"],
                "timestamp": "2026-01-02T03:04:05.678Z",
            })
        );
    }

    #[test]
    fn workers_lists_both_processes_of_a_replacement() {
        let status = sample();
        let view = json_of(&WorkersView::new(&status));
        let ids: Vec<(u64, u64)> = view["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["id"].as_u64().unwrap(), w["generation"].as_u64().unwrap()))
            .collect();
        assert_eq!(ids, [(0, 1), (0, 2), (1, 1)]);
    }

    #[test]
    fn totals_sum_processes_and_count_restarts_once_per_worker() {
        let status = sample();
        let view = json_of(&TotalsView::new(&status));
        assert_eq!(view["workers"], 2, "the stopping process is not counted");
        assert_eq!(view["workersReady"], 1);
        assert_eq!(view["workersDesired"], 2);
        assert_eq!(view["anonBytes"], (100 + 200 + 300) << 19);
        assert_eq!(view["allocationRate"], 1024.0 + 1024.0 - 2048.5);
        assert_eq!(view["pageFaults"], 1000 * (100 + 101 + 102));
        assert_eq!(view["restarts"], 1, "worker 0's generation 2, once");
        assert_eq!(view["lowMemoryMode"], true);
        assert_eq!(view["alerts"]["warning"]["cluster"], 1);
        assert_eq!(
            view["eventsLost"],
            json!({"kernel": 7, "output": 0, "follower": 3})
        );
        assert_eq!(view["scaleEvents"], json!({"up": 2, "down": 1}));
        assert_eq!(view["memoryUsage"]["maxTotalMemoryBytes"], 2u64 << 30);
        // getClusterMetrics().memoryUsage: a percentage, beside the bytes.
        assert_eq!(view["memoryUsage"]["percent"], 29.3);
        assert_eq!(view["memoryUsage"]["totalRssBytes"], 600u64 << 20);
    }
}
