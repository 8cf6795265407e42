//! Setting the pool up: xypriss's own protections, stdout, the control
//! socket, the observer, the sockets workers get, the status server, the
//! cgroups and the watchdog, each announced on the stream; then the first
//! workers.

use std::{
    collections::{BTreeMap, VecDeque},
    process::ChildStdin,
    sync::Arc,
    time::Instant,
};

use super::{
    Pool, Worker,
    launch::Launcher,
    pending::Launches,
    run::{Inputs, Signals},
};
use crate::{
    api::{
        self, Handle,
        http::{Reads, StatusServer},
        socket::ControlSocket,
    },
    detect::threshold::Alerts,
    observe::{self, Observer, Source, host},
    output::{
        event::{Event, SCHEMA_VERSION},
        ndjson::{Output, QUEUE_LINES, QUEUE_LINES_MINIMAL},
        stderr,
    },
    policy::LowMemoryOrigin,
    predict::Startup,
    runtime_dir,
    settings::{ObserverChoice, RunConfig},
    supervise::{
        cgroup::{Hierarchy, PoolCgroup, Version},
        control::Inbox,
        listen::Listeners,
        notify::NotifySocket,
        oom_score_adj,
        priority::{self, Nice, Realtime},
        reap, watchdog,
    },
};

/// Everything the pool needs before its first worker, and its first workers.
pub(super) async fn setup(config: RunConfig) -> anyhow::Result<(Pool, Inputs)> {
    protect_self(config.nice, config.realtime);
    let mut output = Output::stdout(
        if config.optimizes(|o| o.minimal_footprint) {
            QUEUE_LINES_MINIMAL
        } else {
            QUEUE_LINES
        },
        config.format,
        urgent_thread,
    )?;
    // Its thread started by this one before the loop raises its own priority
    // (below): it takes the rest's.
    stderr::start();
    let (api, calls) = api::channel();
    output.follow_with(api.event_sender());
    let runtime_dir = runtime_dir::create()?;
    // Before anything else: a pool of the same name makes this one refuse to start.
    let control = ControlSocket::start(&runtime_dir, &config.name, api.clone())?;
    let (observer, degraded) = Observer::start(&observe_settings(&config), background_thread)?;
    // Before the stream says the pool started: signals sent then are heard.
    let signals = Signals::listen()?;
    announce(&config, &output, &observer, degraded);
    let listeners = Listeners::bind(&config.listen)?;
    let notify = NotifySocket::bind(
        runtime_dir.join(format!("{}.{}.notify", config.name, std::process::id())),
        config
            .identity
            .uid
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
    )
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
            Some(status_server(
                address,
                &token,
                reads(&config),
                api,
                &output,
            )?)
        }
        None => None,
    };
    let cgroups = pool_cgroup(&config.name, &output);
    let watchdog = cgroups.as_ref().and_then(|_| start_watchdog());
    let startup = Startup::new(config.ready_timeout);
    let mut pool = Pool {
        startup,
        host: Box::new(host::Procfs),
        listen_inodes: listeners.inodes(),
        listeners: Arc::new(listeners),
        launcher: Launcher::start()
            .map_err(|e| anyhow::anyhow!("cannot start the thread that starts workers: {e}"))?,
        launches: Launches::default(),
        notify,
        inbox: Inbox::default(),
        cgroups: cgroups.map(Arc::new),
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
    pool.first_workers()?;
    // Last: the threads started above keep the rest's priority.
    urgent_thread();
    let inputs = Inputs {
        signals,
        calls,
        control,
        status_server,
        watchdog,
    };
    Ok((pool, inputs))
}

impl Pool {
    /// The pool's first size and mode, and its first workers.
    fn first_workers(&mut self) -> anyhow::Result<()> {
        if self.config.optimizes(|o| o.lazy_worker_init) {
            // Start small; load grows the pool to --workers on demand.
            self.size = self.config.min_workers.min(self.size);
        }
        let management = &self.config.memory.memory_management;
        if management.enabled
            && (management.low_memory_mode
                || self.config.memory.performance_optimization.low_memory_mode)
        {
            self.set_low_memory(
                true,
                "lowMemoryMode is set in the configuration: the pool keeps its configured size and thresholds",
                LowMemoryOrigin::Configuration,
            );
        }
        for id in 0..self.size {
            self.workers.insert(id, Worker::default());
            // Before the loop: a first worker that cannot start fails the run.
            self.start_now(id)?;
        }
        Ok(())
    }
}

/// What a thread that does bookkeeping runs first: its work is never
/// urgent, so it puts back normal scheduling and gives the loop's thread
/// the CPU whenever that wakes.
fn background_thread() {
    if let Err(err) = priority::reset_this_thread() {
        tracing::warn!("a background thread keeps xypriss's priority: {err}");
    }
}

/// What each thread an alert passes through runs first, the loop's and
/// the stdout writer's: no other thread of xypriss holds them up.
fn urgent_thread() {
    if let Err(err) = priority::urgent_this_thread() {
        tracing::warn!("a thread on the alert's path keeps the others' priority: {err}");
    }
}

/// Keeps the OOM killer off xypriss, raises its priority, and keeps
/// orphans of workers in its care.
fn protect_self(nice: Nice, realtime: Option<Realtime>) {
    // Before the threads that write the outputs start: they inherit it.
    match priority::raise(nice) {
        Ok(nice) => tracing::debug!("nice {nice}"),
        Err(err) => tracing::warn!("xypriss runs at its usual priority: {err}"),
    }
    match priority::enter_realtime(realtime.unwrap_or(priority::DEFAULT_REALTIME)) {
        Ok(Some(priority)) => tracing::debug!("SCHED_FIFO priority {priority}"),
        Ok(None) => {}
        // Asked for: said as loudly as `--nice`'s.
        Err(err) if realtime.is_some() => {
            tracing::warn!("xypriss runs with normal scheduling: {err}");
        }
        Err(err) => tracing::info!(
            "xypriss runs with normal scheduling, so busy CPUs can delay its alerts: {err}"
        ),
    }
    match oom_score_adj::protect_self() {
        Ok(adj) => tracing::debug!("oom_score_adj {adj}"),
        Err(err) => tracing::warn!("the OOM killer may choose xypriss before a worker: {err}"),
    }
    if let Err(err) = reap::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({err}): orphaned descendants of workers go to init"
        );
    }
}

/// Says `cluster_started`, and which source the observer uses (and why,
/// when it is not the one preferred).
fn announce(config: &RunConfig, output: &Output, observer: &Observer, degraded: Option<String>) {
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
}

/// What the observers need of the run's settings.
fn observe_settings(config: &RunConfig) -> observe::Settings {
    observe::Settings {
        choice: match config.observer {
            ObserverChoice::Prefer => observe::Choice::Prefer,
            ObserverChoice::Require => observe::Choice::Require,
            ObserverChoice::Procfs => observe::Choice::Procfs,
        },
        granularity: config.granularity,
        wakeup_interval: config.wakeup_interval,
        poll_interval: config.poll_interval,
        bpf_log: config.bpf_log,
        kernel_fault_counts: config.kernel_fault_counts,
    }
}

/// Starts the HTTP status server, and says where.
fn status_server(
    address: std::net::SocketAddr,
    token: &std::path::Path,
    reads: Reads,
    api: Handle,
    output: &Output,
) -> anyhow::Result<StatusServer> {
    let server = StatusServer::start(address, token, reads, api)?;
    output.emit(&Event::StatusServer {
        address: server.address().to_string(),
        token_file: server.token_file().display().to_string(),
    });
    Ok(server)
}

/// Whether reads take the token (`--status-read-token`).
fn reads(config: &RunConfig) -> Reads {
    if config.status_read_token {
        Reads::TakeToken
    } else {
        Reads::Open
    }
}

/// The watchdog that cleans the pool's cgroups if xypriss is SIGKILLed.
fn start_watchdog() -> Option<ChildStdin> {
    match watchdog::start() {
        Ok(pipe) => Some(pipe),
        Err(err) => {
            tracing::warn!(
                "no watchdog ({err}): a SIGKILLed xypriss leaves its workers' daemons until the next start"
            );
            None
        }
    }
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
