//! The pool's life: setup, the select loop, teardown.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep_until},
};

use super::{FINAL_FLUSH, Pool, StopReason, Worker};
use crate::{
    api::{self, http::StatusServer, socket::ControlSocket},
    detect::threshold::Alerts,
    observe::{self, Observation, Observer, Source, host},
    output::{
        event::{Event, SCHEMA_VERSION},
        ndjson::{Output, QUEUE_LINES, QUEUE_LINES_MINIMAL},
    },
    runtime_dir,
    settings::{ObserverChoice, RunConfig},
    supervise::{
        cgroup::{Hierarchy, PoolCgroup, Version},
        listen::Listeners,
        notify::NotifySocket,
        oom_score_adj,
        reap::{self},
        spawn::signal_group,
        watchdog,
    },
};

/// Why the loop is stopping.
enum Stop {
    Signal(&'static str),
    StdoutClosed,
    Errored,
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
    let (observer, degraded) = Observer::start(&observe_settings(&config))?;
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
    let mut ctl = Pool {
        host: Box::new(host::Procfs),
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
    let mut notify_open = true;
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
            message = ctl.notify.recv(), if notify_open => notify_open = !ctl.notified_batch(message),
            () = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => ctl.timers(),
            _ = tick.tick() => ctl.tick(),
            _ = check.tick() => ctl.check_system(),
            _ = sighup.recv() => ctl.rolling_restart(),
            _ = sigttin.recv() => ctl.scale_up(1, "SIGTTIN"),
            _ = sigttou.recv() => ctl.scale_down(1, None, "SIGTTOU"),
            Some(call) = calls.recv() => ctl.answer(call),
            // After a full batch of datagrams, everything else had its turn.
            () = std::future::ready(()), if !notify_open => notify_open = true,
        }
        if ctl.instances.is_empty() && ctl.workers.values().all(|w| !w.active()) {
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

impl Pool {
    /// The stop signal to every worker, then SIGKILL after the kill timeout or
    /// at a second SIGINT; returns when every worker has exited.
    pub(super) async fn shutdown(
        &mut self,
        sigchld: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
        batch: &mut Vec<Observation>,
    ) {
        self.rolling.clear();
        for w in self.workers.values_mut() {
            w.cancel_restart();
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
    }
}
