//! Starting a worker process without holding the loop.
//!
//! Creating a process waits until the child has joined its cgroups,
//! registered with the kernel programs and exec'd (or failed to): several
//! milliseconds, more on a loaded host. Done on the loop thread, that wait
//! delayed every alert behind it. So the loop prepares a start (generation,
//! environment, control channel, kernel slot), another thread creates the
//! worker's cgroup (which takes the kernel's cgroup lock) and its process,
//! and the outcome comes back into the select loop as an event
//! ([`Pool::launched`]); only then does the instance exist, with its pid, in
//! the lifecycle table's `starting` state. That thread is one, [`Launcher`],
//! for the pool's whole life (see there why).
//!
//! While a process is being created, the loop neither reaps children nor
//! reads what workers say (NOTIFY_SOCKET datagrams, control channels; see
//! [`Pool::launching`]): an exit, a READY=1 or a request from a process the
//! pool does not know yet would be lost, and [`spawn`] reaps a child
//! whose exec failed itself, which a concurrent `waitpid(-1)` must not race.
//! They wait, in order (in the kernel, or in the control channels' queue),
//! for a few milliseconds at most; observations, alerts and operators'
//! requests go on meanwhile. The slot and worker id a start holds
//! meanwhile are [`super::pending`]'s.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Instance, Pool, StopReason,
    observed::sample,
    pending::{OnFailure, Reservation, after_failed_start},
    state::Failure,
};
use crate::{
    detect::{
        leak::{LeakDetector, Params as LeakParams},
        threshold::Alerts,
    },
    observe::{Counters, Trigger, ebpf::Registration, procfs::monotonic_ns},
    output::event::Event,
    policy,
    series::Series,
    supervise::{
        cgroup::{PoolCgroup, WorkerCgroup},
        control::{self, Control, WorkerEnd},
        lifecycle::{Input, State, step},
        listen::Listeners,
        spawn::{Identity, SELF, Spec, spawn},
    },
};

/// What the thread that creates a worker process takes with it.
struct Launch {
    id: u32,
    generation: u32,
    app: PathBuf,
    args: Vec<OsString>,
    identity: Identity,
    env: Vec<(OsString, OsString)>,
    cgroup: Option<CgroupPlan>,
    registration: Option<Registration>,
    listeners: Arc<Listeners>,
    worker_end: WorkerEnd,
}

/// The worker's cgroup, made on the launcher's thread too: creating a
/// cgroup takes the kernel's cgroup lock, which other cgroup work on the
/// host may hold for a while.
struct CgroupPlan {
    pool: Arc<PoolCgroup>,
    /// `memory.high` and `memory.max` (the kernel's bound), if enforced.
    bound: Option<(u64, u64)>,
}

impl CgroupPlan {
    fn create(self, id: u32, generation: u32) -> anyhow::Result<WorkerCgroup> {
        let cgroup = self.pool.worker(id, generation)?;
        if let Some((high, max)) = self.bound
            && let Err(err) = cgroup.bound(high, max)
        {
            if let Err(removal) = cgroup.remove() {
                tracing::warn!("{removal}");
            }
            return Err(err.into());
        }
        Ok(cgroup)
    }
}

impl Launch {
    /// Creates the cgroup, then the process: its pid, or why not (its
    /// cgroup then removed).
    fn create(self) -> (Option<WorkerCgroup>, anyhow::Result<u32>) {
        let cgroup = match self
            .cgroup
            .map(|plan| plan.create(self.id, self.generation))
        {
            None => None,
            Some(Ok(cgroup)) => Some(cgroup),
            Some(Err(err)) => return (None, Err(err)),
        };
        let spawned = spawn(Spec {
            starter: Path::new(SELF),
            app: &self.app,
            args: &self.args,
            id: self.id,
            generation: self.generation,
            identity: &self.identity,
            env: self.env,
            cgroup: cgroup.as_ref(),
            registration: self.registration,
            listeners: Some(&self.listeners),
            control: Some(self.worker_end.raw()),
        });
        drop(self.worker_end);
        match spawned {
            Ok(pid) => (cgroup, Ok(pid)),
            Err(err) => {
                if let Some(cgroup) = cgroup
                    && let Err(removal) = cgroup.remove()
                {
                    tracing::warn!("{removal}");
                }
                (None, Err(err.into()))
            }
        }
    }
}

/// A start made on the launcher's thread.
type Job = Box<dyn FnOnce() -> Launched + Send>;

/// The one thread that creates worker processes, for the pool's whole life.
///
/// A worker's parent-death signal (`PR_SET_PDEATHSIG`, which [`spawn`]
/// sets) comes when the *thread* that created it ends, not its process:
/// tokio's blocking threads end after 10 s idle, and every worker one of
/// them had created was then SIGKILLed. This thread ends only when the
/// pool is dropped, after its workers have exited.
pub(super) struct Launcher {
    jobs: std::sync::mpsc::Sender<(u64, Job)>,
    /// The outcomes, in the order the starts end. Unbounded, yet never
    /// longer than the starts under way, which the pool's size bounds.
    done: tokio::sync::mpsc::UnboundedReceiver<(u64, Result<Launched, String>)>,
    next: u64,
}

impl Launcher {
    /// Starts the thread; within the pool's runtime, which the thread
    /// enters (a worker's output is read through the runtime's reactor).
    pub(super) fn start() -> io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<(u64, Job)>();
        let (outcomes, done) = tokio::sync::mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("xypriss-launch".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (number, job) in queue {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(job))
                        .map_err(|panic| panic_message(panic.as_ref()));
                    if outcomes.send((number, outcome)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs,
            done,
            next: 0,
        })
    }

    /// Hands `job` to the thread: the number its outcome will come back with.
    fn submit(&mut self, job: Job) -> anyhow::Result<u64> {
        let number = self.next;
        self.next += 1;
        self.jobs
            .send((number, job))
            .map_err(|_| anyhow::anyhow!("the thread that starts workers has ended"))?;
        Ok(number)
    }

    /// The next start that is over; `None` once the thread has ended.
    pub(super) async fn next(&mut self) -> Option<(u64, Result<Launched, String>)> {
        self.done.recv().await
    }
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A start, back on the loop: the process, or why there is none.
pub(super) struct Launched {
    id: u32,
    generation: u32,
    slot: u32,
    on_failure: OnFailure,
    control: Control,
    cgroup: Option<WorkerCgroup>,
    pid: anyhow::Result<u32>,
}

impl Pool {
    /// Starts a new process for worker `id` (a restart, a replacement, a
    /// scale-up) off the loop; a failure to exec is counted against the worker.
    pub(super) fn start(&mut self, id: u32) -> anyhow::Result<()> {
        self.start_as(id, OnFailure::Restart)
    }

    /// Starts a new process for worker `id` off the loop; its outcome
    /// arrives as [`Pool::launched`], and `on_failure` says what a failure means.
    pub(super) fn start_as(&mut self, id: u32, on_failure: OnFailure) -> anyhow::Result<()> {
        let (launch, slot, generation, control) = self.prepare(id)?;
        let number = self.launcher.submit(Box::new(move || {
            let (cgroup, pid) = launch.create();
            Launched {
                id,
                generation,
                slot,
                on_failure,
                control,
                cgroup,
                pid,
            }
        }))?;
        self.launches.reserve(
            number,
            Reservation {
                slot,
                id,
                on_failure,
            },
        );
        Ok(())
    }

    /// Starts a new process for worker `id` and waits for it: before the
    /// loop runs, when a worker that cannot start fails the whole run.
    pub(super) fn start_now(&mut self, id: u32) -> anyhow::Result<()> {
        let (launch, slot, generation, control) = self.prepare(id)?;
        let (cgroup, pid) = launch.create();
        self.arrived(Launched {
            id,
            generation,
            slot,
            on_failure: OnFailure::Restart,
            control,
            cgroup,
            pid,
        })
    }

    /// Whether a process is being created: until it is, exits and READY
    /// messages wait (see the module's header).
    pub(super) fn launching(&self) -> bool {
        self.launches.any()
    }

    /// Whether worker `id` has a process that will serve: one not stopping,
    /// or one being created.
    pub(super) fn serves_on(&self, id: u32) -> bool {
        self.launches
            .serves_on(id, self.instances.values().map(|i| (i.id, i.state)))
    }

    /// Start `number`, made off the loop, is over: its process, or why
    /// there is none (`Err`: the launcher caught a panic).
    pub(super) fn launched(&mut self, number: u64, done: Result<Launched, String>) {
        let reserved = self.launches.release(number);
        let (id, on_failure, result) = match done {
            Ok(launched) => (launched.id, launched.on_failure, self.arrived(launched)),
            Err(err) => {
                let Some(reserved) = reserved else {
                    tracing::error!("a worker's start ended abnormally: {err}");
                    return;
                };
                let err = anyhow::anyhow!("its start ended abnormally: {err}");
                (reserved.id, reserved.on_failure, Err(err))
            }
        };
        let Err(err) = result else {
            return;
        };
        match on_failure {
            OnFailure::Restart => tracing::error!("worker {id}: {err:#}"),
            OnFailure::NextReplacement => {
                tracing::error!("rolling restart of worker {id}: {err:#}")
            }
            OnFailure::KeepOld => tracing::error!("replacing worker {id}: {err:#}"),
        }
        let after = after_failed_start(on_failure, self.serves_on(id));
        if after.old_serves_on {
            // Replaced for its memory: it may be replaced again.
            for i in self.instances.values_mut().filter(|i| i.id == id) {
                i.replaced = None;
            }
        }
        if after.failure {
            self.failed(id, Duration::ZERO, Failure::SpawnFailed);
        }
        if after.next_replacement {
            self.next_replacement();
        }
    }

    /// The loop's part of a start before the process is created: a new
    /// generation, its environment, cgroup, control channel and kernel slot.
    fn prepare(&mut self, id: u32) -> anyhow::Result<(Launch, u32, u32, Control)> {
        let slot = self
            .launches
            .free_slot(|slot| self.instances.contains_key(&slot));
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
        let enforcement = &self.config.memory.enforcement;
        let limit = self.config.thresholds[2];
        let cgroup = self.cgroups.as_ref().map(|pool| CgroupPlan {
            pool: Arc::clone(pool),
            // The kernel's bound, in case the worker outruns its graceful
            // replacement or ignores its stop signal.
            bound: (enforcement.enabled && enforcement.enforce_hard_limits && limit != 0)
                .then(|| (policy::high_bound(limit), policy::backstop(limit))),
        });
        let (control, worker_end) = self.inbox.pair()?;
        // After the --listen fds, which take 3, 4, ….
        let control_fd = 3 + self.listeners.local_addrs().len() as i32;
        env.push(("XYPRISS_CONTROL_FD".into(), control_fd.to_string().into()));
        env.push((
            "XYPRISS_PROTOCOL_VERSION".into(),
            control::PROTOCOL_VERSION.to_string().into(),
        ));
        self.observer.prepare(slot, self.worker_thresholds())?;
        let launch = Launch {
            id,
            generation,
            app: self.config.app.clone(),
            args: self.config.args.clone(),
            identity: self.config.identity.clone(),
            env,
            cgroup,
            registration: self.observer.registration(slot),
            listeners: Arc::clone(&self.listeners),
            worker_end,
        };
        Ok((launch, slot, generation, control))
    }

    /// The process exists: the instance, in the `starting` state. Or it
    /// does not: why.
    fn arrived(&mut self, launched: Launched) -> anyhow::Result<()> {
        let Launched {
            id,
            generation,
            slot,
            control,
            cgroup,
            pid,
            ..
        } = launched;
        let pid = match pid {
            Ok(pid) => pid,
            Err(err) => anyhow::bail!("could not start {}: {err:#}", self.config.app.display()),
        };
        let (state, named) =
            step(State::Stopped, Input::Spawned).expect("the table starts workers");
        self.say(
            &Event::WorkerSpawned {
                worker_id: id,
                pid,
                generation,
            },
            named,
        );
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
            leak: policy::detects_leaks(&self.config.memory.memory_management)
                .then(|| LeakDetector::new(LeakParams::default())),
            leaking: false,
            verdict: None,
            throttle: None,
            cpu: None,
            cpu_pct: None,
            control,
            replaced: None,
            stop_sent: None,
            ready_at: None,
            status_text: None,
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
        // Retired (scaled down) while its process was being created.
        if !self.live(id) {
            self.stop_instance(slot, StopReason::ScaleDown);
        }
        Ok(())
    }
}
