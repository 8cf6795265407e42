//! The pool's I/O-free state and decisions: a worker id's standing and
//! restart bookkeeping, the choices of what to replace, retire and cap, and
//! the enums those decisions are made in (turned into the stream's strings
//! only when an event is built). Nothing here touches a process, a file or
//! the clock except through its arguments, so every decision is unit-tested
//! below, on a made-up host where it reads one.
//!
//! Over 600 lines for a reason: half of it is those tests, kept beside the
//! decisions they pin down.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    detect::threshold::Level,
    observe::host::{Host, Memory},
    settings::{Enforcement, MemoryManagement},
    supervise::{
        backoff::{Decision, Failures, Policy},
        lifecycle::{Input, State, step},
    },
};

/// Why a worker was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopReason {
    Shutdown,
    ScaleDown,
    /// Replaced by a newer generation (rolling restart).
    Replaced,
    /// A successor started ahead of a limit its predecessor did not reach.
    Cancelled,
}

impl StopReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::ScaleDown => "scale_down",
            Self::Replaced => "replaced",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Why a worker's process ended when nobody asked it to (the restart's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    Crashed,
    OomKilled,
    /// Killed for not being ready within `--ready-timeout`.
    NotReady,
    /// Its process could not be created.
    SpawnFailed,
}

impl Failure {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Crashed => "crashed",
            Self::OomKilled => "oom_killed",
            Self::NotReady => "not_ready",
            Self::SpawnFailed => "spawn_failed",
        }
    }
}

/// Where a worker id stands, apart from its processes: one value, so that
/// "errored", "retired" and "due to restart" can never be true together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Standing {
    /// Running, or starting.
    #[default]
    Live,
    /// Crashed; starts again at `at`.
    RestartDue { at: Instant, why: Failure },
    /// Failed too often in a row: the lifecycle table's `Errored`.
    Errored,
    /// Removed by a scale-down: nothing restarts it.
    Retired,
}

/// A worker id's history across its processes.
#[derive(Debug, Default)]
pub(super) struct Worker {
    pub(super) generation: u32,
    pub(super) restarts: u32,
    failures: Failures,
    standing: Standing,
}

/// What [`Worker::failed`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterFailure {
    RestartAt(Instant),
    /// Errored after this many failures in a row.
    GaveUp {
        failures: u32,
        event: &'static str,
    },
}

impl Worker {
    /// Neither errored nor retired.
    pub(super) fn active(&self) -> bool {
        !matches!(self.standing, Standing::Errored | Standing::Retired)
    }

    pub(super) fn errored(&self) -> bool {
        self.standing == Standing::Errored
    }

    pub(super) fn retired(&self) -> bool {
        self.standing == Standing::Retired
    }

    /// When it is due to start again, if it is.
    pub(super) fn restart_at(&self) -> Option<Instant> {
        match self.standing {
            Standing::RestartDue { at, .. } => Some(at),
            _ => None,
        }
    }

    /// Why it restarts, when its restart is due at `now`.
    pub(super) fn due(&self, now: Instant) -> Option<Failure> {
        match self.standing {
            Standing::RestartDue { at, why } if at <= now => Some(why),
            _ => None,
        }
    }

    /// Its process failed after `uptime`: a restart after the backoff
    /// `policy` says, or, failing too often, the table's `Errored`.
    pub(super) fn failed(
        &mut self,
        policy: &Policy,
        uptime: Duration,
        why: Failure,
        now: Instant,
    ) -> AfterFailure {
        match self.failures.crashed(policy, uptime) {
            Decision::Restart { after } => {
                self.standing = Standing::RestartDue {
                    at: now + after,
                    why,
                };
                AfterFailure::RestartAt(now + after)
            }
            Decision::GiveUp { failures } => {
                let (to, event) = step(State::Stopped, Input::GiveUp)
                    .expect("the table gives up on stopped workers");
                debug_assert_eq!(to, State::Errored);
                self.standing = Standing::Errored;
                AfterFailure::GaveUp { failures, event }
            }
        }
    }

    /// Its restart is starting: counted, and the table's event for it.
    pub(super) fn restarting(&mut self) -> &'static str {
        let (_, event) =
            step(State::Stopped, Input::Restart).expect("the table restarts stopped workers");
        self.standing = Standing::Live;
        self.restarts += 1;
        event
    }

    /// Removed by a scale-down; a pending restart is cancelled.
    pub(super) fn retire(&mut self) {
        self.standing = Standing::Retired;
    }

    /// No restart any more (the pool is stopping).
    pub(super) fn cancel_restart(&mut self) {
        if let Standing::RestartDue { .. } = self.standing {
            self.standing = Standing::Live;
        }
    }
}

/// What an alert did (`memory_alert`'s `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Taken {
    None,
    GcHint,
    /// The worker's control channel was full or closed.
    GcHintDropped,
    Throttle,
    GcHintThrottle,
    Restart,
    ScaleDown,
}

impl Taken {
    /// With the worker throttled as well, when it was.
    pub(super) fn and_throttled(self, throttled: bool) -> Self {
        match (self, throttled) {
            (Self::None, true) => Self::Throttle,
            (Self::GcHint, true) => Self::GcHintThrottle,
            (taken, _) => taken,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::GcHint => "gc_hint",
            Self::GcHintDropped => "gc_hint_dropped",
            Self::Throttle => "throttle",
            Self::GcHintThrottle => "gc_hint+throttle",
            Self::Restart => "restart",
            Self::ScaleDown => "scale_down",
        }
    }
}

/// A worker's health, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Leaking,
    LimitExceeded,
    Critical,
    Warning,
    Healthy,
}

impl Health {
    /// Leaking if its leak detector says so, else its highest alert.
    pub(super) fn of(leaking: bool, highest: Option<Level>) -> Self {
        match (leaking, highest) {
            (true, _) => Self::Leaking,
            (false, None) => Self::Healthy,
            (false, Some(Level::Warning)) => Self::Warning,
            (false, Some(Level::Critical)) => Self::Critical,
            (false, Some(Level::LimitExceeded)) => Self::LimitExceeded,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Leaking => "leaking",
            Self::LimitExceeded => "limit_exceeded",
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Healthy => "healthy",
        }
    }
}

/// A process's status in `status`: its lifecycle state.
pub(super) fn status_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Ready => "ready",
        State::Stopping => "stopping",
        State::Stopped | State::Errored => "stopped",
    }
}

/// The order of a rolling restart, as a stack (the next to replace last):
/// every active worker, lowest id first.
pub(super) fn rolling_order(workers: &BTreeMap<u32, Worker>) -> Vec<u32> {
    workers
        .iter()
        .filter(|(_, w)| w.active())
        .map(|(&id, _)| id)
        .rev()
        .collect()
}

/// The id a new worker takes: the lowest free or retired one.
pub(super) fn free_id(workers: &BTreeMap<u32, Worker>) -> u32 {
    (0..)
        .find(|id| workers.get(id).is_none_or(Worker::retired))
        .unwrap_or(0)
}

/// Which worker a scale-down removes: the one `named`, if it is not retired,
/// or else the one using the most memory among `running` (id, RSS) pairs of
/// processes not already stopping.
pub(super) fn scale_down_pick(
    named: Option<u32>,
    workers: &BTreeMap<u32, Worker>,
    running: impl Iterator<Item = (u32, u64)>,
) -> Option<u32> {
    named
        .filter(|id| workers.get(id).is_some_and(|w| !w.retired()))
        .or_else(|| running.max_by_key(|&(_, rss)| rss).map(|(id, _)| id))
}

/// Low-memory mode's ceiling on a pool of `size`: half of it, rounded up,
/// never under `min_workers`.
pub(super) fn low_memory_cap(min_workers: u32, size: u32) -> u32 {
    min_workers.max(size.div_ceil(2))
}

/// What `gracefulDegradation` looks at.
pub(super) struct Degradation {
    /// The system scope's highest alert.
    pub(super) system_level: Option<Level>,
    /// Whether this check already scaled the pool down.
    pub(super) scaled: bool,
    /// Since memory last scaled the pool down.
    pub(super) since_last: Option<Duration>,
    pub(super) cooldown: Duration,
    pub(super) size: u32,
    pub(super) min_workers: u32,
}

/// `gracefulDegradation`: one worker less while the host stays critical, at
/// most one per cooldown, never under `minWorkers`.
pub(super) fn degrades(enforcement: &Enforcement, d: &Degradation) -> bool {
    enforcement.enabled
        && enforcement.graceful_degradation
        && d.system_level.is_some_and(|l| l >= Level::Critical)
        && !d.scaled
        && d.since_last.is_none_or(|t| t >= d.cooldown)
        && d.size > d.min_workers
}

/// The system scope's reading: memory in use, and the warning, critical and
/// limit thresholds of what the host has less `memoryReservation`.
pub(super) fn system_reading(memory: &Memory, management: &MemoryManagement) -> (u64, [u64; 3]) {
    let capacity = memory
        .total
        .saturating_sub(management.memory_reservation)
        .max(1);
    let pct = |p: f64| (capacity as f64 * p / 100.0) as u64;
    (
        memory.used(),
        [
            pct(management.memory_warning_threshold),
            pct(management.memory_critical_threshold),
            capacity,
        ],
    )
}

/// How deep a READY sender's ancestry is searched for a worker.
const ANCESTRY: usize = 32;

/// The worker process that is `pid` or its nearest ancestor, as `find` knows
/// worker pids; init and beyond are no one's.
pub(super) fn owner<T>(
    host: &dyn Host,
    mut pid: u32,
    find: impl Fn(u32) -> Option<T>,
) -> Option<T> {
    for _ in 0..ANCESTRY {
        if let Some(found) = find(pid) {
            return Some(found);
        }
        pid = host.parent(pid).filter(|&ppid| ppid > 1)?;
    }
    None
}

/// CPU use in percent of one core between two readings of clock `ticks`.
pub(super) fn cpu_pct(before: (u64, Instant), now: (u64, Instant), per_second: u64) -> Option<f64> {
    let seconds = now.1.duration_since(before.1).as_secs_f64();
    (seconds > 0.0 && per_second > 0)
        .then(|| now.0.saturating_sub(before.0) as f64 / per_second as f64 / seconds * 100.0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::settings::MemoryConfig;

    /// A made-up host: a process tree, and fixed memory.
    #[derive(Default)]
    struct FakeHost {
        parents: HashMap<u32, u32>,
        memory: Option<Memory>,
    }

    impl Host for FakeHost {
        fn memory(&self) -> Option<Memory> {
            self.memory
        }
        fn available_memory(&self) -> Option<u64> {
            self.memory.map(|m| m.available)
        }
        fn memory_pressure(&self) -> Option<f64> {
            None
        }
        fn cpu_ticks(&self, _: u32) -> Option<u64> {
            None
        }
        fn ticks_per_second(&self) -> u64 {
            100
        }
        fn parent(&self, pid: u32) -> Option<u32> {
            self.parents.get(&pid).copied()
        }
        fn is_process(&self, pid: u32) -> bool {
            self.parents.contains_key(&pid)
        }
    }

    fn policy() -> Policy {
        Policy {
            initial: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
            max_quick_failures: 2,
            reset_after: Duration::from_secs(10),
        }
    }

    fn pool(ids: &[u32]) -> BTreeMap<u32, Worker> {
        ids.iter().map(|&id| (id, Worker::default())).collect()
    }

    #[test]
    fn a_rolling_restart_replaces_active_workers_lowest_id_first() {
        let mut workers = pool(&[0, 1, 2, 3]);
        workers.get_mut(&1).unwrap().retire();
        let now = Instant::now();
        for _ in 0..3 {
            workers
                .get_mut(&2)
                .unwrap()
                .failed(&policy(), Duration::ZERO, Failure::Crashed, now);
        }
        assert!(workers[&2].errored());
        let mut order = rolling_order(&workers);
        assert_eq!(order.pop(), Some(0));
        assert_eq!(order.pop(), Some(3));
        assert_eq!(order.pop(), None);
    }

    #[test]
    fn a_scale_down_takes_the_named_worker_or_else_the_biggest() {
        let workers = pool(&[0, 1, 2]);
        let running = || [(0, 10 << 20), (1, 300 << 20), (2, 20 << 20)].into_iter();
        assert_eq!(scale_down_pick(Some(2), &workers, running()), Some(2));
        assert_eq!(scale_down_pick(None, &workers, running()), Some(1));
        // A named worker already retired is not taken twice.
        let mut retired = pool(&[0, 1, 2]);
        retired.get_mut(&2).unwrap().retire();
        assert_eq!(scale_down_pick(Some(2), &retired, running()), Some(1));
        assert_eq!(scale_down_pick(None, &workers, std::iter::empty()), None);
    }

    #[test]
    fn a_new_worker_takes_the_lowest_free_or_retired_id() {
        let mut workers = pool(&[0, 1, 2]);
        assert_eq!(free_id(&workers), 3);
        workers.get_mut(&1).unwrap().retire();
        assert_eq!(free_id(&workers), 1);
    }

    #[test]
    fn low_memory_mode_halves_the_pool_but_never_under_min_workers() {
        assert_eq!(low_memory_cap(1, 8), 4);
        assert_eq!(low_memory_cap(1, 5), 3);
        assert_eq!(low_memory_cap(1, 1), 1);
        assert_eq!(low_memory_cap(4, 4), 4);
        assert_eq!(low_memory_cap(3, 2), 3);
    }

    #[test]
    fn degradation_sheds_one_worker_per_cooldown_while_critical() {
        let mut enforcement = MemoryConfig::default().enforcement;
        enforcement.enabled = true;
        enforcement.graceful_degradation = true;
        let base = Degradation {
            system_level: Some(Level::Critical),
            scaled: false,
            since_last: None,
            cooldown: Duration::from_secs(30),
            size: 3,
            min_workers: 1,
        };
        assert!(degrades(&enforcement, &base));
        let cooling = Degradation {
            since_last: Some(Duration::from_secs(29)),
            ..base
        };
        assert!(!degrades(&enforcement, &cooling));
        let cooled = Degradation {
            since_last: Some(Duration::from_secs(30)),
            ..cooling
        };
        assert!(degrades(&enforcement, &cooled));
        let warning = Degradation {
            system_level: Some(Level::Warning),
            ..cooled
        };
        assert!(!degrades(&enforcement, &warning));
        let already = Degradation {
            scaled: true,
            system_level: Some(Level::LimitExceeded),
            ..warning
        };
        assert!(!degrades(&enforcement, &already));
        let at_min = Degradation {
            scaled: false,
            size: 1,
            ..already
        };
        assert!(!degrades(&enforcement, &at_min));
        enforcement.graceful_degradation = false;
        assert!(!degrades(
            &enforcement,
            &Degradation {
                system_level: Some(Level::Critical),
                scaled: false,
                since_last: None,
                cooldown: Duration::from_secs(30),
                size: 3,
                min_workers: 1,
            }
        ));
    }

    #[test]
    fn restarts_back_off_then_the_worker_errors() {
        let mut w = Worker::default();
        let now = Instant::now();
        let first = w.failed(&policy(), Duration::ZERO, Failure::OomKilled, now);
        assert_eq!(
            first,
            AfterFailure::RestartAt(now + Duration::from_millis(100))
        );
        assert_eq!(w.due(now), None);
        assert_eq!(
            w.due(now + Duration::from_millis(100)),
            Some(Failure::OomKilled)
        );
        assert_eq!(w.restarting(), "worker_restarted");
        assert_eq!((w.restarts, w.restart_at()), (1, None));
        let second = w.failed(&policy(), Duration::ZERO, Failure::Crashed, now);
        assert_eq!(
            second,
            AfterFailure::RestartAt(now + Duration::from_millis(200))
        );
        w.restarting();
        assert_eq!(
            w.failed(&policy(), Duration::ZERO, Failure::Crashed, now),
            AfterFailure::GaveUp {
                failures: 3,
                event: "worker_errored"
            }
        );
        assert!(w.errored() && !w.active());
        assert_eq!(w.due(now + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_long_run_resets_the_failure_count() {
        let mut w = Worker::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                w.failed(&policy(), Duration::from_secs(10), Failure::Crashed, now),
                AfterFailure::RestartAt(_)
            ));
            w.restarting();
        }
        assert_eq!(w.restarts, 5);
    }

    #[test]
    fn a_retired_or_stopping_pool_cancels_restarts() {
        let now = Instant::now();
        let mut w = Worker::default();
        w.failed(&policy(), Duration::ZERO, Failure::Crashed, now);
        w.cancel_restart();
        assert_eq!(w.restart_at(), None);
        assert!(w.active());
        w.failed(&policy(), Duration::ZERO, Failure::Crashed, now);
        w.retire();
        assert_eq!(w.due(now + Duration::from_secs(60)), None);
        assert!(w.retired());
    }

    #[test]
    fn the_system_scope_reads_the_host_less_the_reservation() {
        let host = FakeHost {
            memory: Some(Memory {
                total: 16 << 30,
                available: 6 << 30,
                swap_total: 0,
                swap_free: 0,
            }),
            ..FakeHost::default()
        };
        let mut management = MemoryConfig::default().memory_management;
        management.memory_reservation = 4 << 30;
        management.memory_warning_threshold = 80.0;
        management.memory_critical_threshold = 95.0;
        let (used, thresholds) = system_reading(&host.memory().unwrap(), &management);
        assert_eq!(used, 10 << 30);
        let capacity = 12u64 << 30;
        assert_eq!(
            thresholds,
            [
                (capacity as f64 * 0.8) as u64,
                (capacity as f64 * 0.95) as u64,
                capacity
            ]
        );
    }

    #[test]
    fn a_ready_sender_belongs_to_its_nearest_worker_ancestor() {
        // 100 is a worker; 101 its child, 102 a grandchild; 200 is not ours.
        let host = FakeHost {
            parents: HashMap::from([(100, 1), (101, 100), (102, 101), (200, 1)]),
            ..FakeHost::default()
        };
        let find = |pid: u32| (pid == 100).then_some("worker 0");
        assert_eq!(owner(&host, 102, find), Some("worker 0"));
        assert_eq!(owner(&host, 100, find), Some("worker 0"));
        assert_eq!(owner(&host, 200, find), None);
        assert_eq!(owner(&host, 999, find), None);
        // A cycle (pid reuse seen mid-walk) ends.
        let looping = FakeHost {
            parents: HashMap::from([(5, 6), (6, 5)]),
            ..FakeHost::default()
        };
        assert_eq!(owner(&looping, 5, find), None);
    }

    #[test]
    fn cpu_use_is_ticks_over_time() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(cpu_pct((100, t0), (200, t1), 100), Some(50.0));
        assert_eq!(cpu_pct((100, t0), (200, t0), 100), None);
    }
}
