//! The pool's life: [`run`] is setup ([`super::setup`]), the select loop
//! ([`Pool::serve`]) and teardown ([`Pool::teardown`]).
//!
//! Signals: SIGINT/SIGTERM stop the pool gracefully (a second SIGINT forces
//! it); SIGHUP replaces every worker, one at a time, the new one ready before
//! the old one is asked to stop; SIGTTIN adds a worker and SIGTTOU removes
//! one, as Einhorn and unicorn do.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::{
    resource::{UsageWho, getrusage},
    signal::Signal,
};
use tokio::{
    signal::unix::{self, SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval, sleep_until},
};

use super::{FINAL_FLUSH, Pool, StopReason, setup::setup};
use crate::{
    api::{Calls, http::StatusServer, socket::ControlSocket},
    observe::Observation,
    output::event::Event,
    settings::RunConfig,
    supervise::spawn::signal_group,
};

/// Why the loop is stopping.
pub(super) enum Stop {
    Signal(&'static str),
    StdoutClosed,
    Errored,
}

/// The signals the loop answers.
pub(super) struct Signals {
    chld: unix::Signal,
    int: unix::Signal,
    term: unix::Signal,
    hup: unix::Signal,
    ttin: unix::Signal,
    ttou: unix::Signal,
}

impl Signals {
    pub(super) fn listen() -> std::io::Result<Self> {
        Ok(Self {
            chld: signal(SignalKind::child())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            ttin: signal(SignalKind::from_raw(Signal::SIGTTIN as i32))?,
            ttou: signal(SignalKind::from_raw(Signal::SIGTTOU as i32))?,
        })
    }
}

/// What the loop waits on besides the pool's own state, and what lives
/// exactly as long as the pool.
pub(super) struct Inputs {
    pub(super) signals: Signals,
    pub(super) calls: Calls,
    pub(super) control: ControlSocket,
    pub(super) status_server: Option<StatusServer>,
    /// Held open until xypriss ends: then the watchdog cleans what is left.
    pub(super) watchdog: Option<std::process::ChildStdin>,
}

/// Runs the pool until a signal, a closed stdout, or every worker errored.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let (mut pool, mut inputs) = setup(config).await?;
    let stop = pool.serve(&mut inputs).await;
    pool.teardown(inputs, stop).await
}

fn every(period: Duration) -> Interval {
    let mut timer = interval(period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// A handler that took this long on the loop thread is said on stderr:
/// every alert waited while it ran.
const SAY_TURN: Duration = Duration::from_millis(5);
/// And one that took this long, in the debug log.
const NOTE_TURN: Duration = Duration::from_millis(1);

/// What the loop's thread used so far: its CPU time, its page faults and
/// its context switches.
struct Usage {
    cpu: Duration,
    /// Page faults (without I/O): memory the thread touched afresh.
    faults: i64,
    /// Waits in the kernel (a blocking call, a lock, a page fault's I/O).
    waited: i64,
    /// Preemptions by other threads.
    preempted: i64,
}

impl Usage {
    fn since(&self, before: &Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(before.cpu),
            faults: self.faults - before.faults,
            waited: self.waited - before.waited,
            preempted: self.preempted - before.preempted,
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} ms on the CPU, {} page faults, waited in the kernel {} times, preempted {} times",
            self.cpu.as_secs_f64() * 1e3,
            self.faults,
            self.waited,
            self.preempted
        )
    }
}

/// The calling thread's [`Usage`]; `None` if the kernel would not say.
fn thread_usage() -> Option<Usage> {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    Some(Usage {
        cpu: seconds(usage.user_time()) + seconds(usage.system_time()),
        faults: usage.minor_page_faults(),
        waited: usage.voluntary_context_switches(),
        preempted: usage.involuntary_context_switches(),
    })
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Pool {
    /// Runs one turn's handler, `what`, timed (see [`SAY_TURN`]). A slow
    /// turn says too how much of it the thread ran, and how often it
    /// waited in the kernel or was preempted: work to make shorter, a
    /// blocking call, or a busy machine.
    fn timed<R>(&mut self, what: &str, handle: impl FnOnce(&mut Self) -> R) -> R {
        let began = Instant::now();
        let before = thread_usage();
        let result = handle(self);
        let took = began.elapsed();
        if took >= NOTE_TURN {
            let ms = took.as_secs_f64() * 1e3;
            let how = match (before, thread_usage()) {
                (Some(before), Some(after)) => after.since(&before).to_string(),
                _ => "its own usage unread".into(),
            };
            if took >= SAY_TURN {
                tracing::warn!(
                    "the loop spent {ms:.1} ms on one turn ({what}; {how}): alerts waited as long"
                );
            } else {
                tracing::debug!("the loop spent {ms:.1} ms on one turn ({what}; {how})");
            }
        }
        result
    }

    /// The loop: waits on everything that can happen, one thing a turn.
    async fn serve(&mut self, inputs: &mut Inputs) -> Stop {
        let mut tick = every(self.config.sample_interval);
        let mut check = every(self.config.memory.memory_management.memory_check_interval);
        let mut batch = Vec::new();
        let mut notify_open = true;
        let mut messages = Vec::new();
        let s = &mut inputs.signals;
        loop {
            let timer = self.next_timer();
            // In this order when several are ready: stopping first, then what
            // the kernel says (alerts must not wait behind operators' requests),
            // then the pool's own business, what workers write on their
            // control channels (a chatty worker must not hold up the pool's
            // timers), operators last.
            tokio::select! {
                biased;
                _ = s.int.recv() => return Stop::Signal("SIGINT"),
                _ = s.term.recv() => return Stop::Signal("SIGTERM"),
                () = self.output.closed() => return Stop::StdoutClosed,
                () = self.observer.next_batch(&mut batch) => self.timed("what the kernel said", |p| p.observed(&mut batch)),
                Some((number, done)) = self.launcher.next() => self.timed("a process created", |p| p.launched(number, done)),
                // Both wait while a process is being created: see pool::launch.
                _ = s.chld.recv(), if !self.launching() => self.timed("reaping", |p| p.reaped(&mut batch)),
                message = self.notify.recv(), if notify_open && !self.launching() => notify_open = !self.timed("notify datagrams", |p| p.notified_batch(message)),
                () = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => self.timed("the pool's timers", |p| p.timers()),
                _ = tick.tick() => self.timed("the sample tick", |p| p.tick()),
                _ = check.tick() => self.timed("the system check", |p| p.check_system()),
                _ = s.hup.recv() => self.timed("SIGHUP", |p| p.rolling_restart()),
                _ = s.ttin.recv() => self.timed("SIGTTIN", |p| p.scale_up(1, "SIGTTIN")),
                _ = s.ttou.recv() => self.timed("SIGTTOU", |p| p.scale_down(1, None, "SIGTTOU")),
                // Waits too while a process is being created (its READY=1).
                () = self.inbox.recv(&mut messages), if !self.launching() => self.timed("control messages", |p| p.controlled(&mut messages)),
                Some(call) = inputs.calls.recv() => self.timed("an operator's request", |p| p.answer(call)),
                // After a full batch of datagrams, everything else had its turn.
                () = std::future::ready(()), if !notify_open => notify_open = true,
            }
            if self.instances.is_empty() && self.workers.values().all(|w| !w.active()) {
                return Stop::Errored;
            }
        }
    }

    /// Stops every worker, removes the pool's cgroups, and says why the
    /// pool stopped.
    async fn teardown(mut self, inputs: Inputs, stop: Stop) -> anyhow::Result<()> {
        let Inputs {
            mut signals,
            calls,
            control,
            status_server,
            watchdog,
        } = inputs;
        let reason = match stop {
            Stop::Signal(name) => format!("received {name}"),
            Stop::StdoutClosed => "stdout was closed".into(),
            Stop::Errored => "every worker errored".into(),
        };
        // Whoever asks from now on hears that the pool is stopping.
        drop(calls);
        self.shutdown(&mut signals).await;
        self.last_tick();
        for cleanup in self.cleanups.drain(..) {
            cleanup.await?;
        }
        // Every start is over (see shutdown): the pool's cgroup is ours alone.
        match self.cgroups.take().map(Arc::into_inner) {
            Some(Some(pool)) => {
                if let Err(err) = tokio::task::spawn_blocking(move || pool.remove()).await? {
                    tracing::warn!("removing the pool's cgroup: {err}");
                }
            }
            Some(None) => tracing::warn!(
                "the pool's cgroup is still held by a start: the watchdog removes it"
            ),
            None => {}
        }
        // The server goes with the pool, and its token file with it.
        drop(status_server);
        let events_emitted = self.output.counters().events_emitted;
        self.output.emit(&Event::ClusterStopped {
            reason,
            events_emitted,
        });
        control.close().await;
        self.output.finish(FINAL_FLUSH);
        drop(watchdog);
        if matches!(stop, Stop::Errored) {
            anyhow::bail!("every worker errored");
        }
        Ok(())
    }

    /// The stop signal to every worker, then SIGKILL after the kill timeout or
    /// at a second SIGINT; returns when every worker has exited.
    async fn shutdown(&mut self, signals: &mut Signals) {
        let mut batch: Vec<Observation> = Vec::new();
        self.rolling.clear();
        // The processes being created join the others, to be stopped with them.
        while self.launching() {
            match self.launcher.next().await {
                Some((number, done)) => self.launched(number, done),
                None => break,
            }
        }
        for w in self.workers.values_mut() {
            w.cancel_restart();
        }
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        for slot in slots {
            self.stop_instance(slot, StopReason::Shutdown);
        }
        // Reap anything that ended before we listened.
        self.reaped(&mut batch);
        let deadline = tokio::time::Instant::now() + self.config.kill_timeout;
        let mut killed = false;
        while !self.instances.is_empty() {
            let kill = tokio::select! {
                _ = signals.chld.recv() => { self.reaped(&mut batch); false }
                () = self.observer.next_batch(&mut batch) => { self.observed(&mut batch); false }
                () = sleep_until(deadline), if !killed => {
                    tracing::warn!("workers outlived --kill-timeout {:?}: SIGKILL", self.config.kill_timeout);
                    true
                }
                _ = signals.int.recv(), if !killed => true,
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
