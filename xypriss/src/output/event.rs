//! The events of the NDJSON stream, as the spec in `docs/events.md` defines
//! them. Field names are camelCase, as in XyPriss's vocabulary; event names
//! are snake_case. Change this file and the spec together, and bump
//! [`SCHEMA_VERSION`] when a change can break a consumer.

use serde::Serialize;

use crate::{
    detect::threshold::Level,
    observe::{Source, Trigger},
};

/// The version of the event schema, sent in `cluster_started`.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    ClusterStarted {
        schema_version: u32,
        version: &'static str,
        pid: u32,
        workers: u32,
        app: String,
        args: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Observer {
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        granularity_bytes: u64,
        /// The delay after which a change is seen at the latest, in milliseconds:
        /// the wake-up interval for eBPF, the poll interval for procfs.
        max_delay_ms: u64,
    },
    #[serde(rename_all = "camelCase")]
    WorkerSpawned {
        worker_id: u32,
        pid: u32,
        generation: u32,
    },
    #[serde(rename_all = "camelCase")]
    WorkerReady {
        worker_id: u32,
        pid: u32,
        generation: u32,
        startup_ms: u64,
    },
    #[serde(rename_all = "camelCase")]
    WorkerStopping {
        worker_id: u32,
        pid: u32,
        generation: u32,
        reason: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    WorkerExited {
        worker_id: u32,
        pid: u32,
        generation: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        oom_killed: bool,
        uptime_ms: u64,
        /// It was asked to stop (shutdown, scale-down, replacement): no restart.
        expected: bool,
    },
    #[serde(rename_all = "camelCase")]
    WorkerRestarted {
        worker_id: u32,
        generation: u32,
        restarts: u32,
        reason: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    WorkerErrored {
        worker_id: u32,
        failures: u32,
        message: String,
    },
    Scale {
        from: u32,
        to: u32,
        reason: String,
    },
    /// The sockets bound for `--listen`, as bound (a port 0 shows the real port).
    #[serde(rename_all = "camelCase")]
    Listening {
        addresses: Vec<String>,
    },
    /// Where the HTTP status server listens (a port 0 shows the real port),
    /// and the file holding the token its mutating endpoints take.
    #[serde(rename_all = "camelCase")]
    StatusServer {
        address: String,
        token_file: String,
    },
    /// Where workers' cgroups are, or why there are none.
    #[serde(rename_all = "camelCase")]
    Cgroup {
        enabled: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A pool cgroup left by an xypriss that is gone, killed and removed.
    #[serde(rename_all = "camelCase")]
    StaleCgroupRemoved {
        path: String,
        owner_pid: u32,
        killed: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    MemorySample(Box<MemorySample>),
    /// A threshold crossed going up (once per crossing; see `memory_recovered`).
    #[serde(rename_all = "camelCase")]
    MemoryAlert {
        #[serde(rename = "type")]
        kind: AlertType,
        scope: &'static str,
        /// With the worker scope only.
        #[serde(skip_serializing_if = "Option::is_none")]
        worker_id: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        message: String,
        action: &'static str,
        memory_usage: u64,
        /// `memoryUsage` as a percentage of the scope's whole: the worker's
        /// limit, `maxTotalMemory`, the host less `memoryReservation`;
        /// absent without a worker limit.
        #[serde(skip_serializing_if = "Option::is_none")]
        memory_usage_percent: Option<f64>,
        /// The threshold crossed; for a leak, the worker's limit (0 if none).
        threshold: u64,
        /// For `leak_detected`: the Theil–Sen slope of the worker's memory.
        #[serde(skip_serializing_if = "Option::is_none")]
        slope_bytes_per_sec: Option<f64>,
        /// For `leak_detected`: how sure the rise is not chance, 0 to 1.
        #[serde(skip_serializing_if = "Option::is_none")]
        confidence: Option<f64>,
        /// For `leak_detected`: seconds until the fitted line reaches the limit.
        #[serde(skip_serializing_if = "Option::is_none")]
        eta_to_limit_sec: Option<f64>,
    },
    /// Low-memory mode entered or left.
    #[serde(rename_all = "camelCase")]
    LowMemoryMode {
        enabled: bool,
        reason: String,
        /// Where the mode came from (`configuration`, `operator`,
        /// `pressure`): a configured mode keeps the configured figures.
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<&'static str>,
        /// The pool's ceiling while it is on, when the mode caps it.
        #[serde(skip_serializing_if = "Option::is_none")]
        pool_cap: Option<u32>,
        /// The worker thresholds in force while it is on (warning,
        /// critical, limit; bytes, 0 = unset).
        #[serde(skip_serializing_if = "Option::is_none")]
        worker_thresholds: Option<[u64; 3]>,
    },
    /// A worker's throttle (`resourceThrottling`) applied or lifted.
    #[serde(rename_all = "camelCase")]
    MemoryThrottling {
        /// `throttle` or `release`.
        action: &'static str,
        worker_id: u32,
        pid: u32,
        /// What the kernel was told, e.g. `memory.high`.
        mechanism: String,
        memory_usage: u64,
        threshold: u64,
    },
    /// Memory fell back below a raised alert's threshold less the margin.
    #[serde(rename_all = "camelCase")]
    MemoryRecovered {
        #[serde(rename = "type")]
        kind: Level,
        scope: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        worker_id: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        memory_usage: u64,
        /// As in `memory_alert`.
        #[serde(skip_serializing_if = "Option::is_none")]
        memory_usage_percent: Option<f64>,
        threshold: u64,
    },
    #[serde(rename_all = "camelCase")]
    ChildSpawned {
        worker_id: u32,
        pid: u32,
        parent_pid: u32,
    },
    #[serde(rename_all = "camelCase")]
    ChildExited {
        worker_id: u32,
        pid: u32,
    },
    #[serde(rename_all = "camelCase")]
    OomKill {
        worker_id: u32,
        pid: u32,
        rss_bytes: u64,
        anon_bytes: u64,
    },
    #[serde(rename_all = "camelCase")]
    EventsLost {
        stage: LossStage,
        count: u64,
        total: u64,
    },
    #[serde(rename_all = "camelCase")]
    ClusterStopped {
        reason: String,
        /// The events made before this one: with `events_lost`, what a
        /// reader can check it received all.
        events_emitted: u64,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySample {
    pub worker_id: u32,
    pub pid: u32,
    pub rss_bytes: u64,
    /// The breakdown and the fault count are left out with `compactMetrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shmem_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    /// Bytes per second the resident size grew over the last second (negative: shrank).
    pub allocation_rate: f64,
    /// User page faults per second over the last second.
    pub fault_rate: f64,
    pub threshold_level: u32,
    pub trigger: Trigger,
    pub source: Source,
    /// CLOCK_MONOTONIC nanoseconds when the kernel (or the poll) saw it.
    pub monotonic_ns: u64,
}

/// `memory_alert`'s `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    Warning,
    Critical,
    LimitExceeded,
    LeakDetected,
}

impl AlertType {
    /// Its name in the stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::LimitExceeded => "limit_exceeded",
            Self::LeakDetected => "leak_detected",
        }
    }
}

impl From<Level> for AlertType {
    fn from(level: Level) -> Self {
        match level {
            Level::Warning => Self::Warning,
            Level::Critical => Self::Critical,
            Level::LimitExceeded => Self::LimitExceeded,
        }
    }
}

/// Where events were lost.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossStage {
    /// The kernel's ring buffer was full.
    Kernel,
    /// stdout did not keep up and the bounded queue in front of it was full.
    Output,
    /// A follower of the stream (`xypriss events`, the status server's
    /// `/events`) fell behind: only it lost these lines, and only its stream
    /// says so (the status counts every follower's, `eventsLost.follower`).
    Follower,
}
