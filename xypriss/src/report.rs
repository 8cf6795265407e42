//! The pool's status as the control loop reports it: one snapshot from which
//! every view is cut (`/cluster/memory`, `/cluster/health`, `/workers`,
//! `/metrics`, `xypriss status`, `xypriss top`). Field names are camelCase,
//! as in XyPriss's vocabulary; the views keep the reference document's shape.
//!
//! A leaf: it imports nothing of xypriss, so that the loop ([`crate::pool`])
//! that makes it, the outputs ([`crate::output`]) that count and export it,
//! the API ([`crate::api`]) that serves it and the commands
//! ([`crate::operate`]) that show it share it without importing each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything about the pool at `timestamp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The pool's name (`--name`).
    pub pool: String,
    pub version: String,
    /// xypriss's pid.
    pub pid: u32,
    pub uptime_sec: u64,
    /// Where memory is observed from: `ebpf` or `procfs`.
    pub observer: String,
    pub low_memory_mode: bool,
    /// Why low-memory mode is on, when it is.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub low_memory_reason: Option<String>,
    /// The wanted pool size, and its bounds.
    pub workers_desired: u32,
    pub min_workers: u32,
    pub max_workers: u32,
    pub memory: Memory,
    pub health: Health,
    pub workers: Vec<Worker>,
    pub counters: Counters,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// `getMemoryRecommendations()`, `getOptimalWorkerCountForMemory()` and the
/// pool's usage: the reference's `/cluster/memory` body, less its workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub recommendations: Vec<String>,
    pub suggested_worker_count: u32,
    pub optimal_worker_count: u32,
    pub can_enable_low_memory_mode: bool,
    pub current_usage: Usage,
    pub healthy: bool,
    /// The worker thresholds in force (warning, critical, limit; bytes,
    /// 0 = unset): tighter while a restricting low-memory mode is on.
    #[serde(default)]
    pub worker_thresholds: [u64; 3],
}

/// Memory in use, in bytes, against its limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The pool's workers' resident memory, summed.
    pub total_rss_bytes: u64,
    /// `totalRssBytes` as a percentage of `maxTotalMemoryBytes`, to a
    /// tenth: XyPriss's `getClusterMetrics().memoryUsage`.
    #[serde(default)]
    pub percent: f64,
    /// `maxTotalMemory`.
    pub max_total_memory_bytes: u64,
    /// `maxMemoryPerWorker`.
    pub max_memory_per_worker_bytes: u64,
    /// What the host (or xypriss's cgroup) has available.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub system_available_bytes: Option<u64>,
    /// The host's memory pressure (PSI `some avg10`, percent).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pressure_some_avg10: Option<f64>,
    /// `memoryWarningThreshold` and `memoryCriticalThreshold`, in percent:
    /// of `maxMemoryPerWorker` for a worker, of `maxTotalMemory` for the pool.
    #[serde(default)]
    pub memory_warning_threshold: f64,
    #[serde(default)]
    pub memory_critical_threshold: f64,
}

/// `getClusterHealth()`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub healthy: bool,
    /// One line per thing that is not well; empty when healthy.
    pub details: Vec<String>,
}

/// One worker's process (two during its replacement: both are listed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
    /// `starting`, `ready` or `stopping`.
    pub status: String,
    /// `healthy`, `warning`, `critical` (its memory alert level), or
    /// `leaking`.
    pub health: String,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    /// File-backed and shared resident memory: with `anonBytes`, `rssBytes`.
    #[serde(default)]
    pub file_bytes: u64,
    #[serde(default)]
    pub shmem_bytes: u64,
    pub swap_bytes: u64,
    /// Bytes per second, over the last second.
    pub allocation_rate: f64,
    /// Page faults per second, over the last second.
    pub fault_rate: f64,
    pub page_faults: u64,
    /// Processes this worker had before this one: crash restarts and
    /// replacements alike.
    pub restarts: u32,
    pub uptime_sec: u64,
    pub throttled: bool,
    pub leak: Leak,
    /// The worker's own one-line state (`STATUS=…`), when it said one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_text: Option<String>,
    /// Messages to the worker dropped on its control channel (it does not read).
    #[serde(default)]
    pub control_dropped: u64,
    /// Lines from the worker skipped on its control channel as bad.
    #[serde(default)]
    pub control_invalid: u64,
}

/// The leak detector's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leak {
    /// `false` also when leak detection is off (`enabled` says).
    pub leaking: bool,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slope_bytes_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confidence: Option<f64>,
}

/// Running totals since xypriss started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// `memory_alert` events by `type` then `scope`.
    pub alerts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Records the kernel could not hand over (ring buffer full).
    pub events_lost_kernel: u64,
    /// Lines stdout's reader did not take in time.
    pub events_lost_output: u64,
    /// Lines followers of the event stream (`xypriss events`, `/events`)
    /// did not take in time, all together; each follower's stream says its own.
    #[serde(default)]
    pub events_lost_follower: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    /// Events made so far, those lost on the way to stdout included.
    pub events_emitted: u64,
}

impl Status {
    /// One process per worker id: the newest generation, which is the one
    /// that stays when a replacement is under way.
    pub fn newest_workers(&self) -> impl Iterator<Item = &Worker> {
        let mut newest: BTreeMap<u32, &Worker> = BTreeMap::new();
        for worker in &self.workers {
            newest
                .entry(worker.id)
                .and_modify(|w| {
                    if worker.generation > w.generation {
                        *w = worker;
                    }
                })
                .or_insert(worker);
        }
        newest.into_values()
    }
}

/// A pool to cut views from in unit tests: worker 0 being replaced
/// (generation 1 stopping, generation 2 starting) and worker 1 leaking.
#[cfg(test)]
pub(crate) fn sample() -> Status {
    let worker = |id, pid, generation, status: &str, rss_bytes| Worker {
        id,
        pid,
        generation,
        status: status.into(),
        health: "healthy".into(),
        rss_bytes,
        anon_bytes: rss_bytes / 2,
        file_bytes: rss_bytes / 2,
        shmem_bytes: 0,
        swap_bytes: 0,
        allocation_rate: 1024.0,
        fault_rate: 12.5,
        page_faults: 1000 * u64::from(pid),
        restarts: generation - 1,
        uptime_sec: 60,
        throttled: false,
        leak: Leak {
            leaking: false,
            enabled: true,
            slope_bytes_per_sec: None,
            confidence: None,
        },
        status_text: None,
        control_dropped: 0,
        control_invalid: 0,
    };
    let mut leaking = worker(1, 101, 1, "ready", 300 << 20);
    leaking.health = "leaking".into();
    leaking.throttled = true;
    leaking.allocation_rate = -2048.5;
    leaking.leak = Leak {
        leaking: true,
        enabled: true,
        slope_bytes_per_sec: Some(1_048_576.0),
        confidence: Some(0.99),
    };
    Status {
        pool: "default".into(),
        version: "0.1.0".into(),
        pid: 42,
        uptime_sec: 120,
        observer: "ebpf".into(),
        low_memory_mode: true,
        low_memory_reason: Some("asked by an operator".into()),
        workers_desired: 2,
        min_workers: 1,
        max_workers: 4,
        memory: Memory {
            recommendations: vec!["Worker 1 may be leaking memory".into()],
            suggested_worker_count: 2,
            optimal_worker_count: 3,
            can_enable_low_memory_mode: false,
            current_usage: Usage {
                total_rss_bytes: 600 << 20,
                percent: 29.3,
                max_total_memory_bytes: 2 << 30,
                max_memory_per_worker_bytes: 512 << 20,
                system_available_bytes: Some(8 << 30),
                pressure_some_avg10: None,
                memory_warning_threshold: 80.0,
                memory_critical_threshold: 95.0,
            },
            healthy: false,
            worker_thresholds: [400 << 20, 480 << 20, 512 << 20],
        },
        health: Health {
            healthy: false,
            details: vec!["worker 1 (pid 101) is leaking".into()],
        },
        workers: vec![
            worker(0, 100, 1, "stopping", 100 << 20),
            worker(0, 102, 2, "starting", 200 << 20),
            leaking,
        ],
        counters: Counters {
            alerts: BTreeMap::from([(
                "warning".into(),
                BTreeMap::from([("worker".into(), 3), ("cluster".into(), 1)]),
            )]),
            events_lost_kernel: 7,
            events_lost_output: 0,
            events_lost_follower: 3,
            scale_ups: 2,
            scale_downs: 1,
            events_emitted: 40,
        },
        timestamp: "2026-01-02T03:04:05.678Z".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_worker_counts_once_by_its_newest_generation() {
        let status = sample();
        let newest: Vec<(u32, u32)> = status
            .newest_workers()
            .map(|w| (w.id, w.generation))
            .collect();
        assert_eq!(newest, [(0, 2), (1, 1)]);
    }
}
