//! The pool: the loop that ties the stages together, and the only place
//! their decisions become actions.
//!
//! observe (kernel or /proc) → decode → per-worker series → detect → policy
//! → here → outputs, with the supervision of the worker processes
//! alongside. One task on one thread owns all the state ([`Pool`]), and
//! waits on everything that can happen: observations, SIGCHLD, restart and
//! readiness timers, the periodic tick, signals, operators' requests, and
//! stdout closing.
//!
//! - [`run`]: setup ([`setup`]), the select loop, teardown;
//! - [`state`]: the I/O-free decisions and the enums they are made in;
//! - [`workers`]: stop, ready, exit, restarts and replacements;
//! - [`launch`]: starting a worker process without holding the loop, and
//!   [`pending`], the starts under way;
//! - [`observed`]: what the observer says, and the periodic tick;
//! - [`memory`]: thresholds, leaks, low-memory mode, throttling;
//! - [`scale`]: the pool's size; [`status`]: operators' requests.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    detect::{
        leak::{LeakDetector, Verdict},
        threshold::Alerts,
    },
    observe::{Counters, Observer, host::Host},
    output::ndjson::Output,
    predict::Startup,
    report::Status,
    series::Series,
    settings::RunConfig,
    supervise::{
        cgroup::{PoolCgroup, WorkerCgroup},
        control::{Control, Inbox},
        lifecycle::State,
        listen::Listeners,
        notify::NotifySocket,
    },
};

mod launch;
mod memory;
mod observed;
mod pending;
mod replace;
mod run;
mod scale;
mod setup;
mod state;
mod status;
mod workers;

use replace::Replaced;
pub use run::run;
use state::{StopReason, Worker};

/// An alert is lifted when memory falls this far below its threshold.
pub(super) const ALERT_MARGIN: f64 = 0.05;

/// The span over which the workers' CPU use is averaged before load scales
/// the pool.
pub(super) const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// How old a status may be when an operator asks for it.
pub(super) const STATUS_MAX_AGE: Duration = Duration::from_millis(100);

/// How much coarser sampling is in low-memory mode.
pub(super) const COARSE_FACTOR: u64 = 4;

/// How often `--ready socket` looks at starting workers.
pub(super) const SOCKET_READY_POLL: Duration = Duration::from_millis(50);

/// The most notify datagrams read in one turn of the loop.
pub(super) const NOTIFY_BATCH: usize = 64;

/// How long the last events may take to reach a stalled stdout at exit.
pub(super) const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// One process of a worker. During a rolling restart a worker has two.
pub(super) struct Instance {
    id: u32,
    generation: u32,
    pid: u32,
    /// Its slot in the kernel's per-worker maps.
    slot: u32,
    state: State,
    started: Instant,
    stop: Option<StopReason>,
    oom_killed: bool,
    counters: Counters,
    level: u32,
    series: Series,
    children: BTreeSet<u32>,
    cgroup: Option<WorkerCgroup>,
    /// Killed for not saying READY=1 in time (`--ready notify`).
    not_ready: bool,
    alerts: Alerts,
    /// Leak detection (`memoryLeakDetection`), and whether it said "leaking".
    leak: Option<LeakDetector>,
    leaking: bool,
    /// The leak detector's latest verdict.
    verdict: Option<Verdict>,
    /// How it is throttled (`resourceThrottling`), while it is.
    throttle: Option<String>,
    /// CPU time used by it and its children (clock ticks) when last read.
    cpu: Option<(u64, Instant)>,
    /// Its CPU use over the last tick, percent of one core.
    cpu_pct: Option<f64>,
    /// xypriss's end of the worker's control channel (`XYPRISS_CONTROL_FD`).
    control: Control,
    /// Its replacement for its memory, once started.
    replaced: Option<Replaced>,
    /// When it was asked to stop: SIGKILL follows `--kill-timeout` later.
    stop_sent: Option<Instant>,
    /// When it became ready.
    ready_at: Option<Instant>,
    /// What it last said in `STATUS=…`, on either channel.
    status_text: Option<String>,
}

/// Low-memory mode, while it is on.
pub(super) struct LowMemory {
    reason: String,
    /// Where it came from: what it does and how it ends follow
    /// ([`crate::policy::LowMemoryOrigin`]).
    origin: crate::policy::LowMemoryOrigin,
    /// The pool's ceiling meanwhile, when the mode restricts.
    cap: Option<u32>,
    /// The pool's size when it began restricting, restored when it ends.
    size_before: u32,
}

pub(crate) struct Pool {
    /// Every read of the host besides the workers' memory.
    host: Box<dyn Host>,
    config: RunConfig,
    started: Instant,
    observer: Observer,
    output: Output,
    workers: BTreeMap<u32, Worker>,
    /// Live processes by slot.
    instances: BTreeMap<u32, Instance>,
    /// The wanted pool size.
    size: u32,
    /// Worker ids still to replace in the rolling restart under way.
    rolling: Vec<u32>,
    lost_reported: u64,
    /// The cluster scope's alerts.
    pool_alerts: Alerts,
    /// The system scope's alerts.
    system_alerts: Alerts,
    low_memory: Option<LowMemory>,
    /// The ready workers' mean CPU use at each tick, over the load window.
    load: VecDeque<(Instant, f64)>,
    /// When load last scaled the pool.
    last_load_scale: Option<Instant>,
    /// Periodic ticks so far.
    ticks: u64,
    /// The last status made, when, and at which [`Output::changes`].
    status_cache: Option<(Instant, u64, Status)>,
    /// When critical memory last scaled the pool down.
    last_memory_scale_down: Option<Instant>,
    /// The pool's cgroup, when a memory controller is usable.
    cgroups: Option<Arc<PoolCgroup>>,
    /// Worker cgroups being emptied and removed, off the control loop.
    cleanups: Vec<tokio::task::JoinHandle<()>>,
    /// The sockets every worker gets (`--listen`); shared with the
    /// threads that create worker processes.
    listeners: Arc<Listeners>,
    /// The thread that creates worker processes off the loop ([`launch`]).
    launcher: launch::Launcher,
    /// The slots and worker ids of those, until their pid is known.
    launches: pending::Launches,
    /// Where workers say READY=1.
    notify: NotifySocket,
    /// What workers say on their control channels.
    inbox: Inbox,
    /// The `--listen` sockets' inodes, for `--ready socket`.
    listen_inodes: BTreeSet<u64>,
    /// The workers' start-up time, learned from their start-ups.
    startup: Startup,
}
