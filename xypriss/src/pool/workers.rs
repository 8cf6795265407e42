//! The worker processes: stop, ready, exit, restart, replacement (their
//! start is [`super::launch`]).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use super::{
    Instance, NOTIFY_BATCH, Pool, SOCKET_READY_POLL, StopReason, Worker,
    pending::OnFailure,
    state::{AfterFailure, Failure, owner, rolling_order},
};
use crate::{
    observe::Observation,
    output::event::Event,
    settings::ReadyMode,
    supervise::{
        control::{ChannelId, Incoming},
        lifecycle::{Input, State, step},
        notify::Notification,
        reap::{self, Exit},
        socket_ready,
        spawn::signal_group,
    },
};

impl Pool {
    /// Moves instance `slot` through the lifecycle table: the event the
    /// table names for it, or `None` if the table refuses.
    pub(super) fn transition(&mut self, slot: u32, input: Input) -> Option<&'static str> {
        let instance = self.instances.get_mut(&slot)?;
        match step(instance.state, input) {
            Ok((to, named)) => {
                instance.state = to;
                Some(named)
            }
            Err(refused) => {
                tracing::debug!("worker {}: {refused}", instance.id);
                None
            }
        }
    }

    /// Emits `event`, the one the lifecycle table `named` for a transition.
    pub(super) fn say(&self, event: &Event, named: &'static str) {
        debug_assert!(is_named(event, named), "the table says {named}");
        self.output.emit(event);
    }

    /// The processes still waiting to be ready (and not already killed for it).
    pub(super) fn awaiting_ready(&self) -> impl Iterator<Item = (u32, &Instance)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.state == State::Starting && !i.not_ready)
            .map(|(&slot, i)| (slot, i))
    }

    /// The earliest of the restart and readiness deadlines.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let restarts = self.workers.values().filter_map(Worker::restart_at);
        let deadlines = self
            .awaiting_ready()
            .map(|(_, i)| i.started + self.config.ready_timeout);
        let poll = (self.config.ready == ReadyMode::Socket
            && self.awaiting_ready().next().is_some())
        .then(|| Instant::now() + SOCKET_READY_POLL);
        restarts.chain(deadlines).chain(poll).min()
    }

    /// Fires the restart and readiness deadlines that are due.
    pub(super) fn timers(&mut self) {
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
        let restarts: Vec<(u32, Failure)> = self
            .workers
            .iter()
            .filter_map(|(&id, w)| w.due(now).map(|why| (id, why)))
            .collect();
        for (id, why) in restarts {
            let worker = self.workers.get_mut(&id).expect("listed above");
            let event = worker.restarting();
            let restart = Event::WorkerRestarted {
                worker_id: id,
                generation: worker.generation + 1,
                restarts: worker.restarts,
                reason: why.as_str(),
            };
            self.say(&restart, event);
            if let Err(err) = self.start(id) {
                tracing::error!("worker {id}: {err:#}");
                self.failed(id, Duration::ZERO, Failure::SpawnFailed);
            }
        }
    }

    /// Worker `id` failed after `uptime` when nobody asked it to stop:
    /// schedule its restart, or give up on it.
    pub(super) fn failed(&mut self, id: u32, uptime: Duration, why: Failure) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        let after = worker.failed(&self.config.restart, uptime, why, Instant::now());
        if let AfterFailure::GaveUp { failures, event } = after {
            let errored = Event::WorkerErrored {
                worker_id: id,
                failures,
                message: format!(
                    "worker {id} failed {failures} times in a row, each within {:?} of starting: not restarted",
                    self.config.restart.reset_after
                ),
            };
            self.say(&errored, event);
        }
    }

    /// Instance `slot` is ready: say so, and go on with a rolling restart.
    pub(super) fn ready(&mut self, slot: u32) {
        let Some(named) = self.transition(slot, Input::Ready) else {
            return;
        };
        let i = self.instances.get_mut(&slot).expect("transitioned");
        i.ready_at = Some(Instant::now());
        let (id, generation, pid) = (i.id, i.generation, i.pid);
        let took = i.started.elapsed();
        self.startup.observe(took);
        let ready = Event::WorkerReady {
            worker_id: id,
            pid,
            generation,
            startup_ms: took.as_millis() as u64,
        };
        self.say(&ready, named);
        // The replacement is serving: its predecessors may go.
        self.successor_ready(id, generation);
        if !self.rolling.is_empty() && !self.replacing() {
            self.next_replacement();
        }
    }

    /// Whether a worker has two processes (a replacement not yet done).
    pub(super) fn replacing(&self) -> bool {
        !self.doubled(|_| true).is_empty()
    }

    /// The worker ids with more than one process in the states `counted`,
    /// a process being created counted as `starting`.
    pub(super) fn doubled(&self, counted: impl Fn(State) -> bool) -> Vec<u32> {
        self.launches
            .doubled(self.instances.values().map(|i| (i.id, i.state)), counted)
    }

    /// SIGHUP: replace every worker, one at a time.
    pub(super) fn rolling_restart(&mut self) {
        self.rolling = rolling_order(&self.workers);
        tracing::info!("rolling restart of {} workers", self.rolling.len());
        if !self.replacing() {
            self.next_replacement();
        }
    }

    pub(super) fn next_replacement(&mut self) {
        while let Some(id) = self.rolling.pop() {
            if self.live(id) {
                if let Err(err) = self.start_as(id, OnFailure::NextReplacement) {
                    tracing::error!("rolling restart of worker {id}: {err:#}");
                    continue;
                }
                return;
            }
        }
    }

    /// Asks instance `slot` to stop: the drain notice on its control
    /// channel first, for workers that read it, then the stop signal, for
    /// those that do not. Both mean: stop accepting, finish what is in hand,
    /// exit within `deadlineMs` (`--kill-timeout`), after which it is killed.
    pub(super) fn stop_instance(&mut self, slot: u32, reason: StopReason) {
        let Some(named) = self.transition(slot, Input::Stop) else {
            return;
        };
        let i = self.instances.get_mut(&slot).expect("transitioned");
        i.stop = Some(reason);
        i.stop_sent = Some(Instant::now());
        let pid = i.pid;
        let stopping = Event::WorkerStopping {
            worker_id: i.id,
            pid,
            generation: i.generation,
            reason: reason.as_str(),
        };
        let notice = self.drain_notice(slot, reason);
        if let Some(i) = self.instances.get_mut(&slot) {
            i.control.send(&notice);
        }
        self.say(&stopping, named);
        signal_group(pid, self.config.stop_signal);
    }

    /// Starts a new generation of worker `id`, unless one is already on its
    /// way; the old one is stopped when the new one is ready. Returns
    /// whether one was started.
    pub(super) fn replace(&mut self, id: u32) -> bool {
        let processes = self
            .instances
            .values()
            .filter(|i| i.id == id && i.state != State::Stopping)
            .count()
            + self.launches.of(id);
        if processes > 1 {
            return false;
        }
        match self.start_as(id, OnFailure::KeepOld) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!("replacing worker {id}: {err:#}");
                false
            }
        }
    }

    /// Whether worker `id` runs (not retired, not errored).
    pub(super) fn live(&self, id: u32) -> bool {
        self.workers.get(&id).is_some_and(Worker::active)
    }

    /// Datagrams on NOTIFY_SOCKET: `first`, then at most [`NOTIFY_BATCH`]
    /// in all of those already waiting, so that a flood of them cannot hold
    /// the loop. True when the batch was full: more may be waiting.
    ///
    /// A sender's worker is found by walking its ancestry in /proc (up to
    /// 32 reads); within a batch each sender is looked up once, so that a
    /// flood from one process costs one walk a turn, not one a datagram.
    /// (Not across turns: a pid may be reused, a worker may start.)
    pub(super) fn notified_batch(&mut self, first: std::io::Result<Notification>) -> bool {
        let mut owners = HashMap::new();
        self.notified(first, &mut owners);
        for _ in 1..NOTIFY_BATCH {
            match self.notify.try_recv() {
                Ok(Some(message)) => self.notified(Ok(message), &mut owners),
                Ok(None) => return false,
                Err(err) => {
                    self.notified(Err(err), &mut owners);
                    return false;
                }
            }
        }
        true
    }

    /// A datagram on NOTIFY_SOCKET: READY=1 from a worker, or one of its
    /// descendants; `owners` holds the senders already looked up.
    fn notified(
        &mut self,
        message: std::io::Result<Notification>,
        owners: &mut HashMap<u32, Option<u32>>,
    ) {
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
        let owner = *owners
            .entry(sender)
            .or_insert_with(|| self.instance_of(sender));
        let Some(slot) = owner else {
            tracing::debug!("READY from pid {sender}, which is no worker's");
            return;
        };
        self.on_notification(slot, &message);
    }

    /// What instance `slot` said, on NOTIFY_SOCKET or its control channel.
    fn on_notification(&mut self, slot: u32, message: &Notification) {
        if let Some(text) = message.status()
            && let Some(i) = self.instances.get_mut(&slot)
        {
            i.status_text = Some(text.to_owned());
        }
        if message.ready() {
            self.ready(slot);
        }
    }

    /// Lines from the workers' control channels, a turn's budget of them.
    pub(super) fn controlled(&mut self, messages: &mut Vec<(ChannelId, Incoming)>) {
        for (channel, message) in messages.drain(..) {
            // A process gone since it wrote: nobody to answer.
            let Some((&slot, i)) = self
                .instances
                .iter()
                .find(|(_, i)| i.control.id() == channel)
            else {
                continue;
            };
            match message {
                Incoming::Notify { key, value } => {
                    let notification = Notification {
                        pid: Some(i.pid),
                        fields: vec![(key, value)],
                    };
                    self.on_notification(slot, &notification);
                }
                Incoming::MemoryUsage { id } => {
                    let usage = self.worker_status(i);
                    let i = self.instances.get_mut(&slot).expect("found above");
                    i.control.answer_memory_usage(id, &usage);
                }
            }
        }
    }

    /// The instance whose process is `pid` or one of its ancestors.
    pub(super) fn instance_of(&self, pid: u32) -> Option<u32> {
        owner(self.host.as_ref(), pid, |pid| {
            self.instances
                .iter()
                .find(|(_, i)| i.pid == pid)
                .map(|(&slot, _)| slot)
        })
    }

    /// SIGCHLD: reaps every ended child, workers and orphaned descendants alike.
    pub(super) fn reaped(&mut self, batch: &mut Vec<Observation>) {
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

    pub(super) fn exited(&mut self, slot: u32, exit: Exit) {
        let named = self.transition(slot, Input::Exited);
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
        let exited = Event::WorkerExited {
            worker_id: i.id,
            pid: i.pid,
            generation: i.generation,
            code,
            signal,
            oom_killed: i.oom_killed,
            uptime_ms: uptime.as_millis() as u64,
            expected: i.stop.is_some(),
        };
        self.say(&exited, named.unwrap_or("worker_exited"));
        if i.stop.is_some() {
            if !self.rolling.is_empty() && !self.replacing() {
                self.next_replacement();
            }
            return;
        }
        // Not asked to stop: a crash. Another generation, running and not
        // stopping or on its way, replaces it.
        if self.serves_on(i.id) {
            return;
        }
        let why = if i.oom_killed {
            Failure::OomKilled
        } else if i.not_ready {
            Failure::NotReady
        } else {
            Failure::Crashed
        };
        self.failed(i.id, uptime, why);
    }
}

/// Whether `event` is the one the lifecycle table `named` for its
/// transition: the table and the stream must not drift apart.
fn is_named(event: &Event, named: &str) -> bool {
    serde_json::to_value(event).is_ok_and(|v| v["event"] == named)
}
