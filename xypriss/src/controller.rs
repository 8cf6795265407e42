//! The control loop: it wires the stages together.
//!
//! observe (kernel or /proc) → decode → per-worker series → outputs, with the
//! supervision of the worker processes alongside. One task on one thread owns
//! all the state, and waits on everything that can happen: observations,
//! SIGCHLD, restart and readiness timers, the periodic tick, signals, and
//! stdout closing.
//!
//! Signals: SIGINT/SIGTERM stop the pool gracefully (a second SIGINT forces
//! it); SIGHUP replaces every worker, one at a time, the new one ready before
//! the old one is asked to stop; SIGTTIN adds a worker and SIGTTOU removes
//! one, as Einhorn and unicorn do.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ffi::OsString,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep_until},
};

use crate::{
    api::{
        self, ApiError, Call, Reply, Request, Status, http::StatusServer, socket::ControlSocket,
        status,
    },
    cli::{ObserverChoice, ReadyMode, RunConfig},
    detect::{
        leak::{LeakDetector, Params as LeakParams, Verdict},
        threshold::{Alerts, Change, Level},
    },
    observe::{Counters, Observation, Observer, Source, Trigger, procfs::monotonic_ns},
    output::{
        event::{AlertType, Event, LossStage, MemorySample, SCHEMA_VERSION},
        ndjson::{Output, QUEUE_LINES, QUEUE_LINES_MINIMAL},
    },
    policy::{self, Action},
    recommend, runtime_dir,
    series::Series,
    supervise::{
        backoff::{Decision, Failures},
        cgroup::{Hierarchy, PoolCgroup, Version, WorkerCgroup},
        control::{self, Control},
        lifecycle::{Input, State, step},
        listen::Listeners,
        notify::{Notification, NotifySocket},
        oom_score_adj,
        reap::{self, Exit},
        socket_ready,
        spawn::{Spec, signal_group, spawn},
        watchdog, workers,
    },
};

/// An alert is lifted when memory falls this far below its threshold.
const ALERT_MARGIN: f64 = 0.05;

/// The span over which the workers' CPU use is averaged before load scales
/// the pool.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// How old a status may be when an operator asks for it.
const STATUS_MAX_AGE: Duration = Duration::from_millis(100);

/// How much coarser sampling is in low-memory mode.
const COARSE_FACTOR: u64 = 4;

/// How often `--ready socket` looks at starting workers.
const SOCKET_READY_POLL: Duration = Duration::from_millis(50);

/// How long the last events may take to reach a stalled stdout at exit.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Why a worker was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Shutdown,
    ScaleDown,
    /// Replaced by a newer generation (rolling restart).
    Replaced,
}

impl StopReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::ScaleDown => "scale_down",
            Self::Replaced => "replaced",
        }
    }
}

/// One process of a worker. During a rolling restart a worker has two.
struct Instance {
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
}

/// A worker id's history across its processes.
#[derive(Default)]
struct Worker {
    generation: u32,
    restarts: u32,
    failures: Failures,
    /// When a crashed worker is due to start again, and why it crashed.
    restart_at: Option<(Instant, &'static str)>,
    errored: bool,
    /// Removed by a scale-down: nothing restarts it.
    retired: bool,
}

/// Low-memory mode, while it is on.
struct LowMemory {
    reason: String,
    /// Turned on by an operator (or the configuration): only an operator
    /// turns it off. Otherwise it ends when the pressure that started it does.
    manual: bool,
    /// The pool's ceiling meanwhile.
    cap: u32,
    /// The pool's size when it began, restored when it ends.
    size_before: u32,
}

/// Why the loop is stopping.
enum Stop {
    Signal(&'static str),
    StdoutClosed,
    Errored,
}

struct Controller {
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
    cgroups: Option<PoolCgroup>,
    /// Worker cgroups being emptied and removed, off the control loop.
    cleanups: Vec<tokio::task::JoinHandle<()>>,
    /// The sockets every worker gets (`--listen`).
    listeners: Listeners,
    /// Where workers say READY=1.
    notify: NotifySocket,
    /// The `--listen` sockets' inodes, for `--ready socket`.
    listen_inodes: BTreeSet<u64>,
}

/// Runs the pool until a signal, a closed stdout, or every worker errored.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    match oom_score_adj::protect_self() {
        Ok(adj) => tracing::debug!("oom_score_adj {adj}"),
        Err(err) => tracing::warn!("the OOM killer may choose xypriss before a worker: {err}"),
    }
    if let Err(err) = reap::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({err}): orphaned descendants of workers go to init"
        );
    }
    let mut output = Output::stdout(
        if config.optimizes(|o| o.minimal_footprint) {
            QUEUE_LINES_MINIMAL
        } else {
            QUEUE_LINES
        },
        config.format,
    )?;
    let (api, mut calls) = api::channel();
    output.follow_with(api.event_sender());
    let runtime_dir = runtime_dir::create()?;
    // Before anything else: a pool of the same name makes this one refuse to start.
    let control = ControlSocket::start(&runtime_dir, &config.name, api.clone())?;
    let (observer, degraded) = Observer::start(&config)?;
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigttin = signal(SignalKind::from_raw(Signal::SIGTTIN as i32))?;
    let mut sigttou = signal(SignalKind::from_raw(Signal::SIGTTOU as i32))?;

    output.emit(&Event::ClusterStarted {
        schema_version: SCHEMA_VERSION,
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        workers: config.workers,
        app: config.app.display().to_string(),
        args: config
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    });
    let max_delay = match observer.source() {
        Source::Ebpf => config.wakeup_interval,
        Source::Procfs => config.poll_interval,
    };
    if let Some(reason) = &degraded
        && config.observer == ObserverChoice::Prefer
    {
        tracing::warn!("eBPF unavailable, polling /proc instead: {reason}");
    }
    output.emit(&Event::Observer {
        source: observer.source(),
        reason: degraded,
        granularity_bytes: config.granularity,
        max_delay_ms: max_delay.as_millis() as u64,
    });

    let listeners = Listeners::bind(&config.listen)?;
    let notify = NotifySocket::bind(runtime_dir.join(format!(
        "{}.{}.notify",
        config.name,
        std::process::id()
    )))
    .map_err(|e| anyhow::anyhow!("cannot create the notify socket: {e}"))?;
    if !listeners.is_empty() {
        output.emit(&Event::Listening {
            addresses: listeners
                .local_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    let status_server = match config.status_addr {
        Some(address) => {
            let token = runtime_dir.join(format!("{}.token", config.name));
            let server = StatusServer::start(address, &token, api.clone()).await?;
            output.emit(&Event::StatusServer {
                address: server.address().to_string(),
                token_file: server.token_file().display().to_string(),
            });
            Some(server)
        }
        None => None,
    };
    let cgroups = pool_cgroup(&config.name, &output);
    // Held open until xypriss ends: then the watchdog cleans what is left.
    let _watchdog = match &cgroups {
        Some(_) => match watchdog::start() {
            Ok(pipe) => Some(pipe),
            Err(err) => {
                tracing::warn!(
                    "no watchdog ({err}): a SIGKILLed xypriss leaves its workers' daemons until the next start"
                );
                None
            }
        },
        None => None,
    };
    let mut ctl = Controller {
        listen_inodes: listeners.inodes(),
        listeners,
        notify,
        cgroups,
        cleanups: Vec::new(),
        started: Instant::now(),
        size: config.workers,
        config,
        observer,
        output,
        workers: BTreeMap::new(),
        instances: BTreeMap::new(),
        rolling: Vec::new(),
        lost_reported: 0,
        pool_alerts: Alerts::default(),
        system_alerts: Alerts::default(),
        last_memory_scale_down: None,
        low_memory: None,
        load: VecDeque::new(),
        last_load_scale: None,
        ticks: 0,
        status_cache: None,
    };
    if ctl.config.optimizes(|o| o.lazy_worker_init) {
        // Start small; load grows the pool to --workers on demand.
        ctl.size = ctl.config.min_workers.min(ctl.size);
    }
    let management = &ctl.config.memory.memory_management;
    if management.enabled
        && (management.low_memory_mode
            || ctl.config.memory.performance_optimization.low_memory_mode)
    {
        ctl.set_low_memory(true, "lowMemoryMode is set in the configuration", true);
    }
    for id in 0..ctl.size {
        ctl.workers.insert(id, Worker::default());
        ctl.start(id)?;
    }

    let mut tick = interval(ctl.config.sample_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut check = interval(ctl.config.memory.memory_management.memory_check_interval);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    let stop = loop {
        let timer = ctl.next_timer();
        // In this order when several are ready: stopping first, then what
        // the kernel says (alerts must not wait behind operators' requests),
        // then the pool's own business, operators last.
        tokio::select! {
            biased;
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            () = ctl.output.closed() => break Stop::StdoutClosed,
            () = ctl.observer.next_batch(&mut batch) => ctl.observed(&mut batch),
            _ = sigchld.recv() => ctl.reaped(&mut batch),
            message = ctl.notify.recv() => ctl.notified(message),
            () = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => ctl.timers(),
            _ = tick.tick() => ctl.tick(),
            _ = check.tick() => ctl.check_system(),
            _ = sighup.recv() => ctl.rolling_restart(),
            _ = sigttin.recv() => ctl.scale_up(1, "SIGTTIN"),
            _ = sigttou.recv() => ctl.scale_down(1, None, "SIGTTOU"),
            Some(call) = calls.recv() => ctl.answer(call),
        }
        if ctl.instances.is_empty() && ctl.workers.values().all(|w| w.errored || w.retired) {
            break Stop::Errored;
        }
    };

    let reason = match stop {
        Stop::Signal(name) => format!("received {name}"),
        Stop::StdoutClosed => "stdout was closed".into(),
        Stop::Errored => "every worker errored".into(),
    };
    // Whoever asks from now on hears that the pool is stopping.
    drop(calls);
    ctl.shutdown(&mut sigchld, &mut sigint, &mut batch).await;
    ctl.tick();
    for cleanup in ctl.cleanups.drain(..) {
        cleanup.await?;
    }
    if let Some(pool) = ctl.cgroups.take()
        && let Err(err) = tokio::task::spawn_blocking(move || pool.remove()).await?
    {
        tracing::warn!("removing the pool's cgroup: {err}");
    }
    // The server goes with the pool, and its token file with it.
    drop(status_server);
    let events_emitted = ctl.output.counters().events_emitted;
    ctl.output.emit(&Event::ClusterStopped {
        reason,
        events_emitted,
    });
    control.close().await;
    ctl.output.finish(FINAL_FLUSH);
    if matches!(stop, Stop::Errored) {
        anyhow::bail!("every worker errored");
    }
    Ok(())
}

/// Cleans what a SIGKILLed xypriss left, and makes this pool's cgroup; says
/// which, or why there is none, and carries on either way.
fn pool_cgroup(name: &str, output: &Output) -> Option<PoolCgroup> {
    let disabled = |reason: String| {
        tracing::warn!("workers run without cgroups: {reason}");
        output.emit(&Event::Cgroup {
            enabled: false,
            version: None,
            path: None,
            reason: Some(reason),
        });
        None
    };
    let hierarchy = match Hierarchy::find() {
        Ok(h) => h,
        Err(err) => return disabled(err.to_string()),
    };
    match hierarchy.remove_stale() {
        Ok(stale) => {
            for s in stale {
                output.emit(&Event::StaleCgroupRemoved {
                    path: s.path.display().to_string(),
                    owner_pid: s.pid,
                    killed: s.killed,
                    error: s.error.map(|e| e.to_string()),
                });
            }
        }
        Err(err) => tracing::warn!("looking for stale cgroups: {err}"),
    }
    match hierarchy.pool(name) {
        Ok(pool) => {
            output.emit(&Event::Cgroup {
                enabled: true,
                version: Some(match pool.version() {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                }),
                path: Some(pool.path().display().to_string()),
                reason: None,
            });
            Some(pool)
        }
        Err(err) => disabled(err.to_string()),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Controller {
    /// The lowest kernel slot no live process holds.
    fn free_slot(&self) -> u32 {
        (0..).find(|s| !self.instances.contains_key(s)).unwrap_or(0)
    }

    /// Starts a new process for worker `id` (its first, a restart, or a replacement).
    fn start(&mut self, id: u32) -> anyhow::Result<()> {
        let slot = self.free_slot();
        let worker = self.workers.entry(id).or_default();
        worker.generation += 1;
        let generation = worker.generation;
        let mut env: Vec<(OsString, OsString)> = vec![
            ("XYPRISS_WORKER_ID".into(), id.to_string().into()),
            ("XYPRISS_WORKER_COUNT".into(), self.size.to_string().into()),
            ("XYPRISS_GENERATION".into(), generation.to_string().into()),
            ("NOTIFY_SOCKET".into(), self.notify.path().into()),
        ];
        for (name, on) in [
            (
                "XYPRISS_MEMORY_POOLING",
                self.config.optimizes(|o| o.memory_pooling),
            ),
            (
                "XYPRISS_WORKER_POOLING",
                self.config.optimizes(|o| o.worker_pooling),
            ),
            (
                "XYPRISS_EFFICIENT_DATA_STRUCTURES",
                self.config.optimizes(|o| o.efficient_data_structures),
            ),
        ] {
            env.push((name.into(), if on { "1" } else { "0" }.into()));
        }
        env.push((
            "XYPRISS_LOW_MEMORY_MODE".into(),
            if self.low_memory.is_some() { "1" } else { "0" }.into(),
        ));
        env.extend(self.config.env.iter().cloned());
        let cgroup = match &self.cgroups {
            Some(pool) => Some(pool.worker(id, generation)?),
            None => None,
        };
        let enforcement = &self.config.memory.enforcement;
        if let Some(cgroup) = &cgroup
            && enforcement.enabled
            && enforcement.enforce_hard_limits
            && self.config.thresholds[2] != 0
        {
            // The kernel's backstop, in case the worker outruns its graceful restart.
            cgroup.set_max(Some(policy::backstop(self.config.thresholds[2])))?;
        }
        let (control, worker_end) = control::pair()?;
        // After the --listen fds, which take 3, 4, ….
        let control_fd = 3 + self.listeners.local_addrs().len() as i32;
        env.push(("XYPRISS_CONTROL_FD".into(), control_fd.to_string().into()));
        self.observer.prepare(slot, self.worker_thresholds())?;
        let spawned = spawn(Spec {
            app: &self.config.app,
            args: &self.config.args,
            id,
            generation,
            identity: &self.config.identity,
            env,
            cgroup: cgroup.as_ref(),
            registration: self.observer.registration(slot),
            listeners: Some(&self.listeners),
            control: Some((worker_end.raw(), control_fd)),
        });
        drop(worker_end);
        let pid = match spawned {
            Ok(pid) => pid,
            Err(err) => {
                if let Some(cgroup) = cgroup {
                    let _ = cgroup.remove();
                }
                anyhow::bail!("could not start {}: {err}", self.config.app.display());
            }
        };
        let (state, _) = step(State::Stopped, Input::Spawned).expect("the table starts workers");
        self.output.emit(&Event::WorkerSpawned {
            worker_id: id,
            pid,
            generation,
        });
        let mut instance = Instance {
            id,
            generation,
            pid,
            slot,
            state,
            started: Instant::now(),
            stop: None,
            oom_killed: false,
            counters: Counters::default(),
            level: 0,
            series: Series::default(),
            children: BTreeSet::new(),
            cgroup,
            not_ready: false,
            alerts: Alerts::default(),
            leak: self
                .config
                .memory
                .memory_management
                .memory_leak_detection
                .then(|| LeakDetector::new(LeakParams::default())),
            leaking: false,
            verdict: None,
            throttle: None,
            cpu: None,
            cpu_pct: None,
            control,
        };
        match self.observer.watch(slot, pid) {
            Ok(seed) => {
                instance.counters = seed;
                let event = sample(
                    &mut instance,
                    &self.observer,
                    monotonic_ns(),
                    Trigger::Initial,
                    self.config.optimizes(|o| o.compact_metrics),
                );
                self.output.emit(&event);
            }
            // It exited already: its exit is on its way.
            Err(err) => tracing::debug!("worker {id} (pid {pid}) could not be watched: {err}"),
        }
        self.instances.insert(slot, instance);
        Ok(())
    }

    /// Moves instance `slot` through the lifecycle table; false if the table refuses.
    fn transition(&mut self, slot: u32, input: Input) -> bool {
        let Some(instance) = self.instances.get_mut(&slot) else {
            return false;
        };
        match step(instance.state, input) {
            Ok((to, _)) => {
                instance.state = to;
                true
            }
            Err(refused) => {
                tracing::debug!("worker {}: {refused}", instance.id);
                false
            }
        }
    }

    /// The processes still waiting to be ready (and not already killed for it).
    fn awaiting_ready(&self) -> impl Iterator<Item = (u32, &Instance)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.state == State::Starting && !i.not_ready)
            .map(|(&slot, i)| (slot, i))
    }

    /// The earliest of the restart and readiness deadlines.
    fn next_timer(&self) -> Option<Instant> {
        let restarts = self
            .workers
            .values()
            .filter_map(|w| w.restart_at.map(|(at, _)| at));
        let deadlines = self
            .awaiting_ready()
            .map(|(_, i)| i.started + self.config.ready_timeout);
        let poll = (self.config.ready == ReadyMode::Socket
            && self.awaiting_ready().next().is_some())
        .then(|| Instant::now() + SOCKET_READY_POLL);
        restarts.chain(deadlines).chain(poll).min()
    }

    /// Fires the restart and readiness deadlines that are due.
    fn timers(&mut self) {
        let now = Instant::now();
        if self.config.ready == ReadyMode::Socket {
            let serving: Vec<u32> = self
                .awaiting_ready()
                .filter(|(_, i)| socket_ready::waiting_on(i.pid, &self.listen_inodes))
                .map(|(slot, _)| slot)
                .collect();
            for slot in serving {
                self.ready(slot);
            }
        }
        let due: Vec<u32> = self
            .awaiting_ready()
            .filter(|(_, i)| i.started + self.config.ready_timeout <= now)
            .map(|(slot, _)| slot)
            .collect();
        for slot in due {
            match self.config.ready {
                ReadyMode::Delay => self.ready(slot),
                ReadyMode::Notify | ReadyMode::Socket => {
                    let i = self.instances.get_mut(&slot).expect("listed above");
                    tracing::warn!(
                        "worker {} (pid {}) was not ready within --ready-timeout {:?}: killed",
                        i.id,
                        i.pid,
                        self.config.ready_timeout
                    );
                    i.not_ready = true;
                    signal_group(i.pid, Signal::SIGKILL);
                }
            }
        }
        let restarts: Vec<(u32, &'static str)> = self
            .workers
            .iter()
            .filter_map(|(&id, w)| {
                w.restart_at
                    .filter(|(at, _)| *at <= now)
                    .map(|(_, why)| (id, why))
            })
            .collect();
        for (id, why) in restarts {
            step(State::Stopped, Input::Restart).expect("the table restarts stopped workers");
            let worker = self.workers.get_mut(&id).expect("listed above");
            worker.restart_at = None;
            worker.restarts += 1;
            let restarts = worker.restarts;
            self.output.emit(&Event::WorkerRestarted {
                worker_id: id,
                generation: worker.generation + 1,
                restarts,
                reason: why,
            });
            if let Err(err) = self.start(id) {
                tracing::error!("worker {id}: {err:#}");
                self.failed(id, Duration::ZERO, "spawn_failed");
            }
        }
    }

    /// Worker `id` failed after `uptime` when nobody asked it to stop:
    /// schedule its restart, or give up on it.
    fn failed(&mut self, id: u32, uptime: Duration, why: &'static str) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        match worker.failures.crashed(&self.config.restart, uptime) {
            Decision::Restart { after } => {
                worker.restart_at = Some((Instant::now() + after, why));
            }
            Decision::GiveUp { failures } => {
                worker.errored = true;
                step(State::Stopped, Input::GiveUp).expect("the table gives up on stopped workers");
                self.output.emit(&Event::WorkerErrored {
                    worker_id: id,
                    failures,
                    message: format!(
                        "worker {id} failed {failures} times in a row, each within {:?} of starting: not restarted",
                        self.config.restart.reset_after
                    ),
                });
            }
        }
    }

    /// Instance `slot` is ready: say so, and go on with a rolling restart.
    fn ready(&mut self, slot: u32) {
        if !self.transition(slot, Input::Ready) {
            return;
        }
        let i = &self.instances[&slot];
        let (id, generation, pid) = (i.id, i.generation, i.pid);
        self.output.emit(&Event::WorkerReady {
            worker_id: id,
            pid,
            generation,
            startup_ms: i.started.elapsed().as_millis() as u64,
        });
        // The replacement is serving: its predecessors may go.
        let older: Vec<u32> = self
            .instances
            .iter()
            .filter(|(_, o)| o.id == id && o.generation < generation)
            .map(|(&s, _)| s)
            .collect();
        for old in older {
            self.stop_instance(old, StopReason::Replaced);
        }
        if !self.rolling.is_empty() && !self.replacing() {
            self.next_replacement();
        }
    }

    /// Whether a worker has two processes (a replacement not yet done).
    fn replacing(&self) -> bool {
        !self.doubled(|_| true).is_empty()
    }

    /// The worker ids with more than one process in the states `counted`.
    fn doubled(&self, counted: impl Fn(State) -> bool) -> Vec<u32> {
        let mut seen = BTreeSet::new();
        self.instances
            .values()
            .filter(|i| counted(i.state))
            .filter(|i| !seen.insert(i.id))
            .map(|i| i.id)
            .collect()
    }

    /// SIGHUP: replace every worker, one at a time.
    fn rolling_restart(&mut self) {
        self.rolling = self
            .workers
            .iter()
            .filter(|(_, w)| !w.errored && !w.retired)
            .map(|(&id, _)| id)
            .rev()
            .collect();
        tracing::info!("rolling restart of {} workers", self.rolling.len());
        if !self.replacing() {
            self.next_replacement();
        }
    }

    fn next_replacement(&mut self) {
        while let Some(id) = self.rolling.pop() {
            if self
                .workers
                .get(&id)
                .is_some_and(|w| !w.errored && !w.retired)
            {
                if let Err(err) = self.start(id) {
                    tracing::error!("rolling restart of worker {id}: {err:#}");
                    continue;
                }
                return;
            }
        }
    }

    /// Asks instance `slot` to stop.
    fn stop_instance(&mut self, slot: u32, reason: StopReason) {
        if !self.transition(slot, Input::Stop) {
            return;
        }
        let i = self.instances.get_mut(&slot).expect("transitioned");
        i.stop = Some(reason);
        self.output.emit(&Event::WorkerStopping {
            worker_id: i.id,
            pid: i.pid,
            generation: i.generation,
            reason: reason.as_str(),
        });
        signal_group(i.pid, self.config.stop_signal);
    }

    /// Sets the wanted pool size to `to` and says so; `None` when it is the
    /// size already (a bound was hit: `bound` says which).
    fn resize(&mut self, to: u32, bound: &str, reason: &str) -> Option<u32> {
        let from = self.size;
        if to == from {
            tracing::warn!("scaling refused: the pool is at {bound}");
            return None;
        }
        self.size = to;
        self.output.emit(&Event::Scale {
            from,
            to,
            reason: reason.into(),
        });
        Some(from)
    }

    /// Adds `n` workers, up to `--max-workers`.
    fn scale_up(&mut self, n: u32, reason: &str) {
        let cap = self.pool_cap();
        let mut to = self.size.saturating_add(n).min(cap);
        let mut bound = if self.low_memory.is_some() {
            format!("its low-memory mode ceiling of {cap}")
        } else {
            format!("--max-workers {cap}")
        };
        let management = &self.config.memory.memory_management;
        if management.enabled && management.auto_scale_on_memory {
            // Memory caps the pool: what fits at the workers' observed size.
            let fits = recommend::optimal_worker_count(&self.memory_observed());
            if fits < to {
                to = fits.max(self.size);
                bound = format!("the {fits} workers that fit its memory budget");
            }
        }
        let Some(from) = self.resize(to, &bound, reason) else {
            return;
        };
        for _ in from..to {
            let id = (0..)
                .find(|id| self.workers.get(id).is_none_or(|w| w.retired))
                .unwrap_or(0);
            self.workers.insert(id, Worker::default());
            if let Err(err) = self.start(id) {
                tracing::error!("worker {id}: {err:#}");
                self.failed(id, Duration::ZERO, "spawn_failed");
            }
        }
    }

    /// What the memory recommendations are computed from, now.
    fn memory_observed(&self) -> recommend::Observed {
        let memory = &self.config.memory;
        recommend::Observed {
            worker_rss: self
                .instances
                .values()
                .filter(|i| i.state != State::Stopping)
                .map(|i| i.counters.rss())
                .collect(),
            available: workers::available_memory(),
            max_total_memory: memory.memory_management.max_total_memory,
            memory_reservation: memory.memory_management.memory_reservation,
            max_memory_per_worker: memory.max_memory_per_worker,
            min_workers: self.config.min_workers,
            max_workers: self.config.max_workers,
            low_memory_mode: memory.memory_management.low_memory_mode,
        }
    }

    /// Removes `n` workers, down to `--min-workers`: the one named, or else
    /// the one using the most memory, stopped gracefully.
    fn scale_down(&mut self, n: u32, named: Option<u32>, reason: &str) {
        let to = self.size.saturating_sub(n).max(self.config.min_workers);
        let bound = format!("--min-workers {}", self.config.min_workers);
        let Some(from) = self.resize(to, &bound, reason) else {
            return;
        };
        for _ in to..from {
            let pick = named
                .filter(|id| self.workers.get(id).is_some_and(|w| !w.retired))
                .or_else(|| {
                    self.instances
                        .values()
                        .filter(|i| i.state != State::Stopping)
                        .max_by_key(|i| i.counters.rss())
                        .map(|i| i.id)
                });
            let Some(id) = pick else { return };
            if let Some(w) = self.workers.get_mut(&id) {
                w.retired = true;
                w.restart_at = None;
            }
            let slots: Vec<u32> = self
                .instances
                .iter()
                .filter(|(_, i)| i.id == id)
                .map(|(&s, _)| s)
                .collect();
            for slot in slots {
                self.stop_instance(slot, StopReason::ScaleDown);
            }
        }
    }

    fn observed(&mut self, batch: &mut Vec<Observation>) {
        for observation in batch.drain(..) {
            self.observe(observation);
        }
    }

    fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::Memory {
                slot,
                at_ns,
                counters,
                trigger,
                level,
                ..
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                i.counters = counters;
                i.level = level;
                self.report(slot, at_ns, trigger);
                self.check_thresholds(slot);
            }
            Observation::Fork { slot, pid, parent } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                // Threads are cloned tasks too; only processes are children.
                if is_process(pid) && i.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: i.id,
                        pid,
                        parent_pid: parent,
                    });
                }
            }
            Observation::Exit {
                slot,
                pid,
                at_ns,
                counters,
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                if pid == i.pid {
                    return; // worker_exited comes from its exit status.
                }
                // A child too short-lived to be seen at its fork is reported now.
                if i.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: i.id,
                        pid,
                        parent_pid: i.pid,
                    });
                }
                i.children.remove(&pid);
                self.output.emit(&Event::ChildExited {
                    worker_id: i.id,
                    pid,
                });
                if counters != i.counters {
                    i.counters = counters;
                    self.report(slot, at_ns, Trigger::Granularity);
                    self.check_thresholds(slot);
                }
            }
            Observation::OomVictim {
                slot,
                pid,
                counters,
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                if pid == i.pid {
                    i.oom_killed = true;
                }
                self.output.emit(&Event::OomKill {
                    worker_id: i.id,
                    pid,
                    rss_bytes: counters.rss(),
                    anon_bytes: counters.anon,
                });
            }
        }
    }

    /// Says instance `slot`'s memory at `at_ns` in a `memory_sample`. In
    /// low-memory mode sampling is coarser: a move of less than
    /// [`COARSE_FACTOR`] × the granularity since the last sample is only
    /// recorded in the series (threshold crossings are always said).
    fn report(&mut self, slot: u32, at_ns: u64, trigger: Trigger) {
        let coarse_step = self.config.granularity.saturating_mul(COARSE_FACTOR);
        let coarse = self.low_memory.is_some() && trigger == Trigger::Granularity;
        let compact = self.config.optimizes(|o| o.compact_metrics);
        let Some(i) = self.instances.get_mut(&slot) else {
            return;
        };
        let rss = i.counters.rss();
        if coarse
            && i.series
                .last_emitted_rss()
                .is_some_and(|last| last.abs_diff(rss) < coarse_step)
        {
            i.series.push(at_ns, rss, self.observer.faults(i.slot));
            return;
        }
        let event = sample(i, &self.observer, at_ns, trigger, compact);
        self.output.emit(&event);
    }

    /// A datagram on NOTIFY_SOCKET: READY=1 from a worker, or one of its descendants.
    fn notified(&mut self, message: std::io::Result<Notification>) {
        let message = match message {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!("notify socket: {err}");
                return;
            }
        };
        let Some(sender) = message.pid else {
            return;
        };
        let Some(slot) = self.instance_of(sender) else {
            tracing::debug!("READY from pid {sender}, which is no worker's");
            return;
        };
        if message.ready() {
            self.ready(slot);
        }
    }

    /// The instance whose process is `pid` or one of its ancestors.
    fn instance_of(&self, mut pid: u32) -> Option<u32> {
        for _ in 0..32 {
            if let Some((&slot, _)) = self.instances.iter().find(|(_, i)| i.pid == pid) {
                return Some(slot);
            }
            pid = procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .ok()
                .and_then(|s| u32::try_from(s.ppid).ok())
                .filter(|&ppid| ppid > 1)?;
        }
        None
    }

    /// Raises or lifts instance `slot`'s alerts for its latest memory, and
    /// carries out what the policy decides.
    fn check_thresholds(&mut self, slot: u32) {
        let thresholds = self.worker_thresholds();
        let Some(i) = self.instances.get_mut(&slot) else {
            return;
        };
        // Every report counts for the leak detector's troughs; its verdict
        // waits for the tick, off this path.
        if let Some(detector) = i.leak.as_mut() {
            detector.push(monotonic_ns(), i.counters.rss());
        }
        let usage = i.counters.rss();
        let memory = &self.config.memory;
        let mut restart = false;
        let mut throttling = Vec::new();
        for change in i.alerts.update(usage, thresholds, ALERT_MARGIN) {
            let event = match change {
                Change::Raised { level, threshold } => {
                    let (action, said) =
                        policy::on_crossing(level, &memory.memory_management, &memory.enforcement);
                    let done = match action {
                        Action::None => "none",
                        Action::GcHint => {
                            let hint = serde_json::json!({
                                "event": "gc_hint",
                                "reason": "critical",
                                "memoryUsage": usage,
                                "threshold": threshold,
                            });
                            if i.control.send(&hint) {
                                "gc_hint"
                            } else {
                                "gc_hint_dropped"
                            }
                        }
                        Action::Restart => {
                            restart = true;
                            // Slowed while its replacement starts, so that it
                            // cannot run far past its limit meanwhile.
                            if i.throttle.is_none() {
                                throttle(i, usage, threshold, &mut throttling);
                            }
                            action.as_str()
                        }
                    };
                    let throttled = level == Level::Critical
                        && policy::throttles(&memory.enforcement)
                        && throttle(i, usage, threshold, &mut throttling);
                    let done = match (done, throttled) {
                        ("none", true) => "throttle",
                        ("gc_hint", true) => "gc_hint+throttle",
                        (done, _) => done,
                    };
                    if !said {
                        continue;
                    }
                    threshold_event(
                        "worker",
                        Some((i.id, i.pid)),
                        &format!("worker {}", i.id),
                        None,
                        usage,
                        change,
                        done,
                    )
                }
                Change::Recovered { level, threshold } => {
                    if level == Level::Critical {
                        release(i, usage, threshold, &mut throttling);
                    }
                    threshold_event(
                        "worker",
                        Some((i.id, i.pid)),
                        "",
                        None,
                        usage,
                        change,
                        "none",
                    )
                }
            };
            self.output.emit(&event);
        }
        for event in throttling {
            self.output.emit(&event);
        }
        if restart {
            let id = i.id;
            self.replace(id);
        }
        self.check_pool();
    }

    /// The system scope, at `memoryCheckInterval`: the host's memory in use
    /// against what it has less `memoryReservation`.
    fn check_system(&mut self) {
        let management = &self.config.memory.memory_management;
        if !management.enabled {
            return;
        }
        let Ok(meminfo) = <procfs::Meminfo as procfs::Current>::current() else {
            return;
        };
        let Some(available) = meminfo.mem_available else {
            return;
        };
        let used = meminfo.mem_total.saturating_sub(available);
        let capacity = meminfo
            .mem_total
            .saturating_sub(management.memory_reservation)
            .max(1);
        let pct = |p: f64| (capacity as f64 * p / 100.0) as u64;
        let thresholds = [
            pct(management.memory_warning_threshold),
            pct(management.memory_critical_threshold),
            capacity,
        ];
        let changes = self.system_alerts.update(used, thresholds, ALERT_MARGIN);
        let action = self.memory_scaling(&changes);
        for event in scope_events(
            "system",
            used,
            changes,
            "the host",
            "memory less memoryReservation",
            action,
        ) {
            self.output.emit(&event);
        }
        self.scale_down_for_memory(action);
        let swap_used_pct = (meminfo.swap_total > 0).then(|| {
            meminfo.swap_total.saturating_sub(meminfo.swap_free) as f64 * 100.0
                / meminfo.swap_total as f64
        });
        let pressure = policy::HostPressure {
            system_level: self.system_alerts.highest(),
            psi_some_avg10: psi_memory_some_avg10(),
            swap_used_pct,
        };
        self.degrade(&pressure, action);
    }

    /// Low-memory mode on host pressure, off when it eases (unless an
    /// operator turned it on); and `gracefulDegradation`: while system memory
    /// stays critical, one worker less per cooldown, down to `minWorkers`.
    fn degrade(&mut self, pressure: &policy::HostPressure, scaled: &str) {
        let swap_limit = self.config.memory.memory_management.swap_usage_limit;
        let reason = policy::low_memory_reason(pressure, swap_limit, self.low_memory.is_some());
        match (&self.low_memory, reason) {
            (None, Some(reason)) => {
                self.set_low_memory(true, &reason, false);
            }
            (Some(on), None) if !on.manual => {
                self.set_low_memory(false, "memory pressure eased", false);
            }
            _ => {}
        }
        let enforcement = &self.config.memory.enforcement;
        let critical = pressure.system_level.is_some_and(|l| l >= Level::Critical);
        let cooled = self.last_memory_scale_down.is_none_or(|t| {
            t.elapsed() >= policy::scale_down_cooldown(&self.config.memory.auto_scaling)
        });
        if enforcement.enabled
            && enforcement.graceful_degradation
            && critical
            && scaled != "scale_down"
            && cooled
            && self.size > self.config.min_workers
        {
            self.last_memory_scale_down = Some(Instant::now());
            self.scale_down(1, None, "graceful_degradation");
        }
    }

    /// The cluster scope: the pool's total against `maxTotalMemory`.
    fn check_pool(&mut self) {
        let management = &self.config.memory.memory_management;
        if !management.enabled {
            return;
        }
        let total = management.max_total_memory;
        let pct = |p: f64| (total as f64 * p / 100.0) as u64;
        let thresholds = [
            pct(management.memory_warning_threshold),
            pct(management.memory_critical_threshold),
            total,
        ];
        let usage: u64 = self.instances.values().map(|i| i.counters.rss()).sum();
        let changes = self.pool_alerts.update(usage, thresholds, ALERT_MARGIN);
        let action = self.memory_scaling(&changes);
        for event in scope_events(
            "cluster",
            usage,
            changes,
            "the pool",
            "maxTotalMemory",
            action,
        ) {
            self.output.emit(&event);
        }
        self.scale_down_for_memory(action);
    }

    /// Whether this scope's new alerts scale the pool down (the policy's
    /// `autoScaleOnMemory`, with its cooldown): the alerts' `action`.
    fn memory_scaling(&self, changes: &[Change]) -> &'static str {
        let memory = &self.config.memory;
        let since = self.last_memory_scale_down.map(|t| t.elapsed());
        let scale = changes.iter().any(|c| {
            matches!(c, Change::Raised { level, .. }
                if policy::scale_down_on(*level, &memory.memory_management, &memory.auto_scaling, since))
        });
        if scale && self.size > self.config.min_workers {
            "scale_down"
        } else {
            "none"
        }
    }

    fn scale_down_for_memory(&mut self, action: &str) {
        if action == "scale_down" {
            self.last_memory_scale_down = Some(Instant::now());
            self.scale_down(1, None, "memory_critical");
        }
    }

    /// Feeds instance `slot`'s memory at `at_ns` to its leak detector; a new
    /// "leaking" verdict raises `leak_detected`, and acts as the policy says.
    fn check_leak(&mut self, slot: u32, at_ns: u64) {
        let limit = self.config.thresholds[2];
        let Some(i) = self.instances.get_mut(&slot) else {
            return;
        };
        let Some(detector) = i.leak.as_mut() else {
            return;
        };
        detector.push(at_ns, i.counters.rss());
        let verdict = detector.verdict((limit != 0).then_some(limit));
        let rising = verdict.leaking && !i.leaking;
        i.leaking = verdict.leaking;
        i.verdict = Some(verdict);
        if !rising {
            return;
        }
        let action = policy::on_leak(&self.config.memory.enforcement);
        let usage = i.counters.rss();
        let id = i.id;
        self.output.emit(&Event::MemoryAlert {
            kind: AlertType::LeakDetected,
            scope: "worker",
            worker_id: Some(id),
            pid: Some(i.pid),
            message: format!(
                "worker {id} grows steadily by {} KiB/s (confidence {:.3})",
                (verdict.slope_bytes_per_sec / 1024.0).round(),
                verdict.confidence
            ),
            action: action.as_str(),
            memory_usage: usage,
            threshold: limit,
            slope_bytes_per_sec: Some(verdict.slope_bytes_per_sec.round()),
            confidence: Some(verdict.confidence),
            eta_to_limit_sec: verdict.eta_to_limit_sec.map(f64::round),
        });
        if action == Action::Restart {
            self.replace(id);
        }
    }

    /// Starts a new generation of worker `id`, unless one is already on its
    /// way; the old one is stopped when the new one is ready.
    fn replace(&mut self, id: u32) {
        let processes = self
            .instances
            .values()
            .filter(|i| i.id == id && i.state != State::Stopping)
            .count();
        if processes > 1 {
            return;
        }
        if let Err(err) = self.start(id) {
            tracing::error!("replacing worker {id}: {err:#}");
        }
    }

    /// The most workers the pool may have now: `maxWorkers`, or less in
    /// low-memory mode.
    fn pool_cap(&self) -> u32 {
        self.low_memory
            .as_ref()
            .map_or(self.config.max_workers, |l| l.cap)
    }

    /// The worker thresholds in force: tighter in low-memory mode.
    fn worker_thresholds(&self) -> [u64; 3] {
        if self.low_memory.is_some() {
            policy::tightened(self.config.thresholds)
        } else {
            self.config.thresholds
        }
    }

    /// Turns low-memory mode on or off, for `reason`; `manual` when an
    /// operator (or the configuration) asks. Says so, tells the workers, and
    /// applies its effects: the pool's ceiling, tighter worker thresholds.
    fn set_low_memory(&mut self, enabled: bool, reason: &str, manual: bool) -> Reply {
        if enabled == self.low_memory.is_some() {
            if let Some(l) = self.low_memory.as_mut() {
                l.manual |= manual;
            }
            return Reply::LowMemory {
                enabled,
                changed: false,
            };
        }
        let size_before = self.low_memory.as_ref().map(|l| l.size_before);
        self.low_memory = enabled.then(|| LowMemory {
            reason: reason.into(),
            manual,
            cap: self.config.min_workers.max(self.size.div_ceil(2)),
            size_before: self.size,
        });
        let cap = self.low_memory.as_ref().map(|l| l.cap);
        self.output.emit(&Event::LowMemoryMode {
            enabled,
            reason: reason.into(),
            pool_cap: cap,
        });
        let message = serde_json::json!({
            "event": "low_memory_mode",
            "enabled": enabled,
            "reason": reason,
        });
        let thresholds = self.worker_thresholds();
        for i in self.instances.values_mut() {
            i.control.send(&message);
            if let Err(err) = self.observer.retune(i.slot, thresholds) {
                tracing::warn!("worker {}: new thresholds not set: {err}", i.id);
            }
        }
        match (cap, size_before) {
            (Some(cap), _) if self.size > cap => {
                self.scale_down(self.size - cap, None, "low_memory_mode");
            }
            (None, Some(before)) if self.size < before => {
                self.scale_up(before - self.size, "low_memory_mode_ended");
            }
            _ => {}
        }
        Reply::LowMemory {
            enabled,
            changed: true,
        }
    }

    /// Answers an operator's request (HTTP or the control socket).
    fn answer(&mut self, call: Call) {
        let result = match call.request {
            Request::Status => Ok(Reply::Status(Box::new(self.cached_status()))),
            Request::Scale { workers } => self.scale_to(workers),
            Request::LowMemory { enabled } => {
                Ok(self.set_low_memory(enabled, "asked by an operator", true))
            }
            Request::Restart { worker: Some(id) } => {
                if self.live(id) {
                    self.replace(id);
                    Ok(Reply::Restarting { workers: vec![id] })
                } else {
                    Err(ApiError::UnknownWorker { id })
                }
            }
            Request::Restart { worker: None } | Request::Reload => {
                self.rolling_restart();
                let mut workers = self.rolling.clone();
                // Those whose new process is not ready yet.
                workers.extend(self.doubled(|state| state != State::Stopping));
                workers.sort_unstable();
                workers.dedup();
                Ok(Reply::Restarting { workers })
            }
        };
        // The asker may have gone; nothing to do then.
        let _ = call.reply.send(result);
    }

    /// Whether worker `id` runs (not retired, not errored).
    fn live(&self, id: u32) -> bool {
        self.workers
            .get(&id)
            .is_some_and(|w| !w.retired && !w.errored)
    }

    /// `POST /cluster/scale`, `xypriss scale N`.
    fn scale_to(&mut self, workers: u32) -> Result<Reply, ApiError> {
        let (min, max) = (self.config.min_workers, self.pool_cap());
        if !(min..=max).contains(&workers) {
            return Err(ApiError::OutOfRange {
                requested: workers,
                min,
                max,
            });
        }
        let from = self.size;
        if workers > from {
            self.scale_up(workers - from, "api");
        } else if workers < from {
            self.scale_down(from - workers, None, "api");
        }
        Ok(Reply::Scaled {
            from,
            to: self.size,
        })
    }

    /// The pool's status, made anew when anything but memory figures
    /// changed, and otherwise at most every [`STATUS_MAX_AGE`]: a client
    /// polling as fast as it can costs the loop no more than that.
    fn cached_status(&mut self) -> Status {
        let changes = self.output.changes();
        if let Some((made, at, status)) = &self.status_cache
            && *at == changes
            && made.elapsed() < STATUS_MAX_AGE
        {
            return status.clone();
        }
        let status = self.status();
        self.status_cache = Some((Instant::now(), changes, status.clone()));
        status
    }

    /// Everything about the pool now.
    fn status(&self) -> Status {
        let observed = self.memory_observed();
        let recommendations = recommend::recommendations(&observed);
        let management = &self.config.memory.memory_management;
        let total_rss: u64 = self.instances.values().map(|i| i.counters.rss()).sum();
        let workers: Vec<status::Worker> = self
            .instances
            .values()
            .map(|i| self.worker_status(i))
            .collect();
        let mut details = Vec::new();
        for w in &workers {
            if w.health != "healthy" {
                details.push(format!("worker {} (pid {}) is {}", w.id, w.pid, w.health));
            }
        }
        let errored: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.errored)
            .map(|(&id, _)| id)
            .collect();
        if !errored.is_empty() {
            details.push(format!("workers {errored:?} errored and are not restarted"));
        }
        let ready = workers.iter().filter(|w| w.status == "ready").count() as u32;
        if ready < self.size {
            details.push(format!("{ready} of {} workers are ready", self.size));
        }
        for (scope, alerts) in [
            ("cluster", &self.pool_alerts),
            ("system", &self.system_alerts),
        ] {
            if let Some(level) = alerts.highest().filter(|&l| l >= Level::Critical) {
                details.push(format!("{scope} memory is over its {}", level_name(level)));
            }
        }
        let healthy = details.is_empty();
        let pressure = psi_memory_some_avg10();
        Status {
            pool: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_sec: self.started.elapsed().as_secs(),
            observer: match self.observer.source() {
                Source::Ebpf => "ebpf",
                Source::Procfs => "procfs",
            }
            .into(),
            low_memory_mode: self.low_memory.is_some(),
            low_memory_reason: self.low_memory.as_ref().map(|l| l.reason.clone()),
            workers_desired: self.size,
            min_workers: self.config.min_workers,
            max_workers: self.config.max_workers,
            memory: status::Memory {
                recommendations: recommendations.recommendations,
                suggested_worker_count: recommendations.suggested_worker_count,
                optimal_worker_count: recommend::optimal_worker_count(&observed),
                can_enable_low_memory_mode: recommendations.can_enable_low_memory_mode,
                current_usage: status::Usage {
                    total_rss_bytes: total_rss,
                    max_total_memory_bytes: management.max_total_memory,
                    max_memory_per_worker_bytes: self.config.memory.max_memory_per_worker,
                    system_available_bytes: observed.available,
                    pressure_some_avg10: pressure,
                },
                healthy,
            },
            health: status::Health { healthy, details },
            workers,
            counters: {
                let mut counters = self.output.counters();
                counters.events_lost_kernel = self.observer.lost();
                counters
            },
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }

    fn worker_status(&self, i: &Instance) -> status::Worker {
        let rates = i.series.rates();
        let health = if i.leaking {
            "leaking"
        } else {
            match i.alerts.highest() {
                None => "healthy",
                Some(Level::Warning) => "warning",
                Some(Level::Critical) => "critical",
                Some(Level::LimitExceeded) => "limit_exceeded",
            }
        };
        status::Worker {
            id: i.id,
            pid: i.pid,
            generation: i.generation,
            status: match i.state {
                State::Starting => "starting",
                State::Ready => "ready",
                State::Stopping => "stopping",
                _ => "stopped",
            }
            .into(),
            health: health.into(),
            rss_bytes: i.counters.rss(),
            anon_bytes: i.counters.anon,
            swap_bytes: i.counters.swap,
            allocation_rate: rates.allocation.round(),
            fault_rate: rates.faults.round(),
            page_faults: self.observer.faults(i.slot),
            restarts: i.generation.saturating_sub(1),
            uptime_sec: i.started.elapsed().as_secs(),
            throttled: i.throttle.is_some(),
            leak: status::Leak {
                leaking: i.leaking,
                enabled: i.leak.is_some(),
                slope_bytes_per_sec: i.verdict.map(|v| v.slope_bytes_per_sec.round()),
                confidence: i.verdict.map(|v| v.confidence),
            },
        }
    }

    /// SIGCHLD: reaps every ended child, workers and orphaned descendants alike.
    fn reaped(&mut self, batch: &mut Vec<Observation>) {
        // What the kernel said before an exit (an OOM kill) comes first.
        self.observer.drain_now(batch);
        self.observed(batch);
        for (pid, exit) in reap::reap() {
            let Some((&slot, _)) = self.instances.iter().find(|(_, i)| i.pid == pid) else {
                tracing::debug!("reaped orphaned descendant {pid}: {exit:?}");
                continue;
            };
            self.exited(slot, exit);
        }
    }

    fn exited(&mut self, slot: u32, exit: Exit) {
        self.transition(slot, Input::Exited);
        let mut i = self.instances.remove(&slot).expect("found by the caller");
        // Whatever it left behind goes with it: its cgroup holds every
        // descendant, even those that left its process group.
        match i.cgroup.take() {
            Some(cgroup) => {
                self.cleanups.retain(|c| !c.is_finished());
                self.cleanups.push(tokio::task::spawn_blocking(move || {
                    if let Err(err) = cgroup.remove() {
                        tracing::warn!("{err}");
                    }
                }));
            }
            None => signal_group(i.pid, Signal::SIGKILL),
        }
        self.observer.unwatch(slot);
        let (code, signal) = match exit {
            Exit::Code(code) => (Some(code), None),
            Exit::Signal(signal) => (None, Some(signal.as_str().to_owned())),
        };
        let uptime = i.started.elapsed();
        self.check_pool();
        self.output.emit(&Event::WorkerExited {
            worker_id: i.id,
            pid: i.pid,
            generation: i.generation,
            code,
            signal,
            oom_killed: i.oom_killed,
            uptime_ms: uptime.as_millis() as u64,
            expected: i.stop.is_some(),
        });
        if i.stop.is_some() {
            if !self.rolling.is_empty() && !self.replacing() {
                self.next_replacement();
            }
            return;
        }
        // Not asked to stop: a crash. A newer generation already running replaces it.
        if self.instances.values().any(|o| o.id == i.id) {
            return;
        }
        let why = if i.oom_killed {
            "oom_killed"
        } else if i.not_ready {
            "not_ready"
        } else {
            "crashed"
        };
        self.failed(i.id, uptime, why);
    }

    /// The periodic refresh: fault counts and rates of quiet workers, and losses.
    fn tick(&mut self) {
        let now = monotonic_ns();
        self.ticks += 1;
        // reducedLogging leaves the periodic samples out; low-memory mode
        // sends one in COARSE_FACTOR.
        let periodic = !self.config.optimizes(|o| o.reduced_logging)
            && (self.low_memory.is_none() || self.ticks.is_multiple_of(COARSE_FACTOR));
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        if periodic {
            for &slot in &slots {
                let i = &self.instances[&slot];
                if i.series
                    .is_news(i.counters.rss(), self.observer.faults(i.slot))
                {
                    self.report(slot, now, Trigger::Interval);
                }
            }
        }
        // The leak detectors want a point at least every second, quiet or not.
        for slot in slots {
            self.check_leak(slot, now);
        }
        self.measure_load();
        let lost = self.observer.lost();
        if lost > self.lost_reported {
            self.output.emit(&Event::EventsLost {
                stage: LossStage::Kernel,
                count: lost - self.lost_reported,
                total: lost,
            });
            self.lost_reported = lost;
            self.resync(now);
        }
    }

    /// Kernel records were lost: the last ones received may be stale, and
    /// an idle worker sends no other. The kernel's totals are right: each
    /// worker whose totals differ from what was received is reported from them.
    fn resync(&mut self, now: u64) {
        let mut batch = Vec::new();
        self.observer.drain_now(&mut batch);
        self.observed(&mut batch);
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        for slot in slots {
            let Some((counters, level)) = self.observer.totals(slot) else {
                continue;
            };
            let Some(i) = self.instances.get_mut(&slot) else {
                continue;
            };
            if counters == i.counters {
                continue;
            }
            i.counters = counters;
            i.level = level;
            self.report(slot, now, Trigger::Interval);
            self.check_thresholds(slot);
        }
    }

    /// Reads each worker's CPU use, and scales the pool on load when
    /// `autoScaling` (or `lazyWorkerInit`) asks for it.
    fn measure_load(&mut self) {
        let scaling = &self.config.memory.auto_scaling;
        let lazy = self.config.optimizes(|o| o.lazy_worker_init);
        if !(scaling.enabled || lazy) {
            // Nothing scales on load: no /proc reads every tick for nothing.
            return;
        }
        let now = Instant::now();
        let per_second = procfs::ticks_per_second() as f64;
        for i in self.instances.values_mut() {
            let ticks = std::iter::once(i.pid)
                .chain(i.children.iter().copied())
                .filter_map(|pid| procfs::process::Process::new(pid as i32).ok()?.stat().ok())
                .map(|stat| stat.utime + stat.stime)
                .sum::<u64>();
            if let Some((before, at)) = i.cpu {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    i.cpu_pct =
                        Some(ticks.saturating_sub(before) as f64 / per_second / seconds * 100.0);
                }
            }
            i.cpu = Some((ticks, now));
        }
        let busy: Vec<f64> = self
            .instances
            .values()
            .filter(|i| i.state == State::Ready)
            .filter_map(|i| i.cpu_pct)
            .collect();
        if busy.is_empty() {
            return;
        }
        self.load
            .push_back((now, busy.iter().sum::<f64>() / busy.len() as f64));
        while self
            .load
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > LOAD_WINDOW)
        {
            self.load.pop_front();
        }
        let spanned = self.load.front().is_some_and(|(at, _)| {
            now.duration_since(*at) >= LOAD_WINDOW - self.config.sample_interval
        });
        if !spanned || self.replacing() {
            return;
        }
        let scaling = &self.config.memory.auto_scaling;
        let observed = self.memory_observed();
        let load = policy::Load {
            cpu_pct: self.load.iter().map(|(_, l)| l).sum::<f64>() / self.load.len() as f64,
            memory_pct: recommend::memory_share(&observed, 0),
            memory_pct_with_one_more: recommend::memory_share(&observed, 1),
            size: self.size,
            min_workers: self.config.min_workers,
            cap: if scaling.enabled {
                self.pool_cap()
            } else {
                self.pool_cap().min(self.config.workers)
            },
            since_last: self.last_load_scale.map(|t| t.elapsed()),
        };
        let mut settings = scaling.clone();
        if !scaling.enabled {
            // lazyWorkerInit alone grows on demand up to --workers, and never shrinks.
            settings.scale_down_threshold.cpu = -1.0;
        }
        let step = policy::scale_on_load(&load, &settings);
        let reason = format!("cpu {:.0}% over {}s", load.cpu_pct, LOAD_WINDOW.as_secs());
        match step {
            policy::Step::Hold => return,
            policy::Step::Up(n) => self.scale_up(n, &reason),
            policy::Step::Down(n) => self.scale_down(n, None, &reason),
        }
        self.last_load_scale = Some(now);
        self.load.clear();
    }

    /// The stop signal to every worker, then SIGKILL after the kill timeout or
    /// at a second SIGINT; returns when every worker has exited.
    async fn shutdown(
        &mut self,
        sigchld: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
        batch: &mut Vec<Observation>,
    ) {
        self.rolling.clear();
        for w in self.workers.values_mut() {
            w.restart_at = None;
        }
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        for slot in slots {
            self.stop_instance(slot, StopReason::Shutdown);
        }
        // Reap anything that ended before we listened.
        self.reaped(batch);
        let deadline = tokio::time::Instant::now() + self.config.kill_timeout;
        let mut killed = false;
        while !self.instances.is_empty() {
            let kill = tokio::select! {
                _ = sigchld.recv() => { self.reaped(batch); false }
                () = self.observer.next_batch(batch) => { self.observed(batch); false }
                () = sleep_until(deadline), if !killed => {
                    tracing::warn!("workers outlived --kill-timeout {:?}: SIGKILL", self.config.kill_timeout);
                    true
                }
                _ = sigint.recv(), if !killed => true,
            };
            if kill {
                killed = true;
                for i in self.instances.values() {
                    signal_group(i.pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// `resourceThrottling` at a critical crossing: has the kernel slow `i`
/// down (see [`WorkerCgroup::throttle`]), and says so in `events`. False
/// when it could not be done (no cgroup, or the kernel refused: logged).
fn throttle(i: &mut Instance, usage: u64, threshold: u64, events: &mut Vec<Event>) -> bool {
    let Some(cgroup) = &i.cgroup else {
        tracing::warn!("worker {}: no cgroup to throttle it in", i.id);
        return false;
    };
    match cgroup.throttle(threshold, policy::THROTTLE_CPU_FRACTION) {
        Ok(mechanism) => {
            i.throttle = Some(mechanism.as_str().to_owned());
            events.push(Event::MemoryThrottling {
                action: "throttle",
                worker_id: i.id,
                pid: i.pid,
                mechanism: mechanism.as_str().to_owned(),
                memory_usage: usage,
                threshold,
            });
            true
        }
        Err(err) => {
            tracing::warn!("worker {}: cannot throttle it: {err}", i.id);
            false
        }
    }
}

/// Lifts `i`'s throttle, if it has one, and says so in `events`.
fn release(i: &mut Instance, usage: u64, threshold: u64, events: &mut Vec<Event>) {
    let (Some(mechanism), Some(cgroup)) = (i.throttle.take(), &i.cgroup) else {
        return;
    };
    if let Err(err) = cgroup.unthrottle() {
        tracing::warn!("worker {}: cannot lift its throttle: {err}", i.id);
        i.throttle = Some(mechanism);
        return;
    }
    events.push(Event::MemoryThrottling {
        action: "release",
        worker_id: i.id,
        pid: i.pid,
        mechanism,
        memory_usage: usage,
        threshold,
    });
}

/// The events of a scope without workers (`cluster`, `system`); `action`
/// goes with its critical and limit alerts.
fn scope_events(
    scope: &'static str,
    usage: u64,
    changes: Vec<Change>,
    who: &str,
    against: &str,
    action: &'static str,
) -> Vec<Event> {
    changes
        .into_iter()
        .map(|change| {
            let action = match change {
                Change::Raised { level, .. } if level >= Level::Critical => action,
                _ => "none",
            };
            threshold_event(scope, None, who, Some(against), usage, change, action)
        })
        .collect()
}

/// One scope's `memory_alert` (going up) or `memory_recovered` for `change`.
fn threshold_event(
    scope: &'static str,
    worker: Option<(u32, u32)>,
    who: &str,
    against: Option<&str>,
    usage: u64,
    change: Change,
    action: &'static str,
) -> Event {
    match change {
        Change::Raised { level, threshold } => Event::MemoryAlert {
            kind: level.into(),
            scope,
            worker_id: worker.map(|(id, _)| id),
            pid: worker.map(|(_, pid)| pid),
            message: format!(
                "{who} uses {} MiB, over its {} of {} MiB{}",
                usage >> 20,
                level_name(level),
                threshold >> 20,
                against.map(|a| format!(" ({a})")).unwrap_or_default()
            ),
            action,
            memory_usage: usage,
            threshold,
            slope_bytes_per_sec: None,
            confidence: None,
            eta_to_limit_sec: None,
        },
        Change::Recovered { level, threshold } => Event::MemoryRecovered {
            kind: level,
            scope,
            worker_id: worker.map(|(id, _)| id),
            pid: worker.map(|(_, pid)| pid),
            memory_usage: usage,
            threshold,
        },
    }
}

/// How a message names an alert level.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Warning => "warning threshold",
        Level::Critical => "critical threshold",
        Level::LimitExceeded => "limit",
    }
}

/// A `memory_sample` for `i` at `at_ns`, updating its series; `compact`
/// leaves the breakdown out (`compactMetrics`).
fn sample(
    i: &mut Instance,
    observer: &Observer,
    at_ns: u64,
    trigger: Trigger,
    compact: bool,
) -> Event {
    let faults = observer.faults(i.slot);
    let rss = i.counters.rss();
    let rates = i.series.push(at_ns, rss, faults);
    i.series.emitted(rss, faults, rates);
    let detail = |value: u64| (!compact).then_some(value);
    Event::MemorySample(Box::new(MemorySample {
        worker_id: i.id,
        pid: i.pid,
        rss_bytes: rss,
        anon_bytes: detail(i.counters.anon),
        file_bytes: detail(i.counters.file),
        shmem_bytes: detail(i.counters.shmem),
        swap_bytes: detail(i.counters.swap),
        page_faults: detail(faults),
        allocation_rate: rates.allocation.round(),
        fault_rate: rates.faults.round(),
        threshold_level: i.level,
        trigger,
        source: observer.source(),
        monotonic_ns: at_ns,
    }))
}

/// The host's memory pressure: PSI `some avg10` of /proc/pressure/memory,
/// in percent; `None` without PSI.
fn psi_memory_some_avg10() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    policy::psi_some_avg10(&text)
}

/// Whether `pid` is a process (a thread-group leader) rather than a thread.
fn is_process(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .is_ok_and(|s| s.tgid == pid as i32)
}
