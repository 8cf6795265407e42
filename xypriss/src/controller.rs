//! The control loop: it wires the stages together.
//!
//! observe (kernel or /proc) → decode → per-worker series → outputs, with the
//! supervision of the worker processes alongside. One task on one thread owns
//! all the state, and waits on everything that can happen: observations,
//! worker exits, the periodic tick, signals, and stdout closing.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::ExitStatus,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{MissedTickBehavior, interval, sleep_until},
};

use crate::{
    cli::{ObserverChoice, RunConfig},
    observe::{Counters, Observation, Observer, Trigger, procfs::monotonic_ns},
    output::{
        event::{Event, LossStage, MemorySample, SCHEMA_VERSION},
        ndjson::Output,
    },
    series::Series,
    supervise::spawn::{signal_group, spawn},
};

/// How long the last events may take to reach a stalled stdout at exit.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

struct Worker {
    id: u32,
    pid: u32,
    started: Instant,
    alive: bool,
    oom_killed: bool,
    counters: Counters,
    level: u32,
    series: Series,
    children: BTreeSet<u32>,
}

struct Exited {
    id: u32,
    status: std::io::Result<ExitStatus>,
}

/// Why the loop is stopping.
enum Stop {
    Signal(&'static str),
    StdoutClosed,
    AllExited,
}

struct Controller {
    config: RunConfig,
    observer: Observer,
    output: Output,
    workers: BTreeMap<u32, Worker>,
    exits: mpsc::UnboundedSender<Exited>,
    lost_reported: u64,
}

/// Runs the pool until a signal, a closed stdout, or the end of every worker.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let output = Output::stdout()?;
    let (observer, degraded) = Observer::start(&config)?;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

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
        crate::observe::Source::Ebpf => config.wakeup_interval,
        crate::observe::Source::Procfs => config.poll_interval,
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

    let mut ctl = Controller {
        config,
        observer,
        output,
        workers: BTreeMap::new(),
        exits: exits_tx,
        lost_reported: 0,
    };
    for id in 0..ctl.config.workers {
        ctl.start_worker(id)?;
    }

    let mut tick = interval(ctl.config.sample_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    let stop = loop {
        tokio::select! {
            () = ctl.observer.next_batch(&mut batch) => ctl.observed(&mut batch),
            Some(exited) = exits.recv() => {
                ctl.exited(exited, &mut batch);
                if ctl.workers.values().all(|w| !w.alive) {
                    break Stop::AllExited;
                }
            }
            _ = tick.tick() => ctl.tick(),
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            () = ctl.output.closed() => break Stop::StdoutClosed,
        }
    };

    let reason = match stop {
        Stop::Signal(name) => format!("received {name}"),
        Stop::StdoutClosed => "stdout was closed".into(),
        Stop::AllExited => "every worker exited".into(),
    };
    if !matches!(stop, Stop::AllExited) {
        ctl.stop_workers(&mut exits, &mut sigint, &mut batch).await;
    }
    ctl.tick();
    ctl.output.emit(&Event::ClusterStopped { reason });
    ctl.output.finish(FINAL_FLUSH);
    Ok(())
}

impl Controller {
    fn start_worker(&mut self, id: u32) -> anyhow::Result<()> {
        let mut child = spawn(&self.config, id).map_err(|err| {
            anyhow::anyhow!("could not start {}: {err}", self.config.app.display())
        })?;
        let pid = child.id().unwrap_or(0);
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exits.send(Exited { id, status });
        });
        self.output
            .emit(&Event::WorkerSpawned { worker_id: id, pid });
        let mut worker = Worker {
            id,
            pid,
            started: Instant::now(),
            alive: true,
            oom_killed: false,
            counters: Counters::default(),
            level: 0,
            series: Series::default(),
            children: BTreeSet::new(),
        };
        match self.observer.watch(id, pid, self.config.thresholds) {
            Ok(seed) => {
                worker.counters = seed;
                let sample = sample(
                    &mut worker,
                    &self.observer,
                    monotonic_ns(),
                    Trigger::Initial,
                );
                self.output.emit(&sample);
            }
            // It exited already: its exit is on its way.
            Err(err) => tracing::debug!("worker {id} (pid {pid}) could not be watched: {err}"),
        }
        self.workers.insert(id, worker);
        Ok(())
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
                let Some(w) = self.workers.get_mut(&slot).filter(|w| w.alive) else {
                    return;
                };
                w.counters = counters;
                w.level = level;
                let event = sample(w, &self.observer, at_ns, trigger);
                self.output.emit(&event);
            }
            Observation::Fork { slot, pid, parent } => {
                let Some(w) = self.workers.get_mut(&slot) else {
                    return;
                };
                // Threads are cloned tasks too; only processes are children.
                if is_process(pid) && w.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: slot,
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
                let Some(w) = self.workers.get_mut(&slot) else {
                    return;
                };
                if pid == w.pid {
                    return; // worker_exited comes from its exit status.
                }
                // A child too short-lived to be seen at its fork is reported now.
                if w.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: slot,
                        pid,
                        parent_pid: w.pid,
                    });
                }
                w.children.remove(&pid);
                self.output.emit(&Event::ChildExited {
                    worker_id: slot,
                    pid,
                });
                if w.alive && counters != w.counters {
                    w.counters = counters;
                    let event = sample(w, &self.observer, at_ns, Trigger::Granularity);
                    self.output.emit(&event);
                }
            }
            Observation::OomVictim {
                slot,
                pid,
                counters,
            } => {
                let Some(w) = self.workers.get_mut(&slot) else {
                    return;
                };
                if pid == w.pid {
                    w.oom_killed = true;
                }
                self.output.emit(&Event::OomKill {
                    worker_id: slot,
                    pid,
                    rss_bytes: counters.rss(),
                    anon_bytes: counters.anon,
                });
            }
        }
    }

    fn exited(&mut self, exited: Exited, batch: &mut Vec<Observation>) {
        // What the kernel said before the exit (an OOM kill) comes first.
        self.observer.drain_now(batch);
        self.observed(batch);
        let Some(w) = self.workers.get_mut(&exited.id) else {
            return;
        };
        w.alive = false;
        let (code, signal) = match exited.status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                (
                    status.code(),
                    status.signal().map(|s| {
                        Signal::try_from(s)
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_else(|_| s.to_string())
                    }),
                )
            }
            Err(err) => {
                tracing::error!("waiting for worker {}: {err}", w.id);
                (None, None)
            }
        };
        self.output.emit(&Event::WorkerExited {
            worker_id: w.id,
            pid: w.pid,
            code,
            signal,
            oom_killed: w.oom_killed,
            uptime_ms: w.started.elapsed().as_millis() as u64,
        });
        self.observer.unwatch(w.id);
    }

    /// The periodic refresh: fault counts and rates of quiet workers, and losses.
    fn tick(&mut self) {
        let now = monotonic_ns();
        for w in self.workers.values_mut().filter(|w| w.alive) {
            let faults = self.observer.faults(w.id);
            if w.series.is_news(w.counters.rss(), faults) {
                let event = sample(w, &self.observer, now, Trigger::Interval);
                self.output.emit(&event);
            }
        }
        let lost = self.observer.lost();
        if lost > self.lost_reported {
            self.output.emit(&Event::EventsLost {
                stage: LossStage::Kernel,
                count: lost - self.lost_reported,
                total: lost,
            });
            self.lost_reported = lost;
        }
    }

    /// SIGTERM to every worker's group, then SIGKILL after the kill timeout or
    /// at a second SIGINT; returns when every worker has exited.
    async fn stop_workers(
        &mut self,
        exits: &mut mpsc::UnboundedReceiver<Exited>,
        sigint: &mut tokio::signal::unix::Signal,
        batch: &mut Vec<Observation>,
    ) {
        let alive = |ctl: &Self| {
            ctl.workers
                .values()
                .filter(|w| w.alive)
                .map(|w| w.pid)
                .collect::<Vec<_>>()
        };
        for pid in alive(self) {
            signal_group(pid, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + self.config.kill_timeout;
        let mut killed = false;
        while self.workers.values().any(|w| w.alive) {
            tokio::select! {
                Some(exited) = exits.recv() => self.exited(exited, batch),
                () = self.observer.next_batch(batch) => self.observed(batch),
                () = sleep_until(deadline), if !killed => {
                    killed = true;
                    for pid in alive(self) {
                        tracing::warn!("worker pid {pid} outlived --kill-timeout: SIGKILL");
                        signal_group(pid, Signal::SIGKILL);
                    }
                }
                _ = sigint.recv(), if !killed => {
                    killed = true;
                    for pid in alive(self) {
                        signal_group(pid, Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

/// A `memory_sample` for `w` at `at_ns`, updating its series.
fn sample(w: &mut Worker, observer: &Observer, at_ns: u64, trigger: Trigger) -> Event {
    let faults = observer.faults(w.id);
    let rss = w.counters.rss();
    let rates = w.series.push(at_ns, rss, faults);
    w.series.emitted(rss, faults, rates);
    Event::MemorySample(Box::new(MemorySample {
        worker_id: w.id,
        pid: w.pid,
        rss_bytes: rss,
        anon_bytes: w.counters.anon,
        file_bytes: w.counters.file,
        shmem_bytes: w.counters.shmem,
        swap_bytes: w.counters.swap,
        page_faults: faults,
        allocation_rate: rates.allocation.round(),
        fault_rate: rates.faults.round(),
        threshold_level: w.level,
        trigger,
        source: observer.source(),
        monotonic_ns: at_ns,
    }))
}

/// Whether `pid` is a process (a thread-group leader) rather than a thread.
fn is_process(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .is_ok_and(|s| s.tgid == pid as i32)
}
