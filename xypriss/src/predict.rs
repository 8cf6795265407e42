//! Predictive replacement: when to start a worker's successor ahead of its
//! limit, and when to stop the old worker. Pure: the pool feeds it the
//! worker's memory, its slope and the pool's start-up times, and carries out
//! what it answers.
//!
//! A replacement that starts at the limit arrives one start-up later, and
//! meanwhile the old worker either runs on past its limit or is slowed down
//! while it still takes requests: both are what users come to a limit to
//! avoid. So the successor starts when the old worker's memory says it will
//! need one within about a start-up: at the critical threshold, or when the
//! time its slope takes to reach the limit falls under the start-up time the
//! app has shown so far ([`Startup`], an EWMA of spawn → ready). The old
//! worker goes on serving at full speed until it reaches the limit, and is
//! told to drain and stop at that moment, its successor ready by then
//! ([`handover`]). When its memory does not reach the limit after all (a
//! collection freed it), after [`MAX_STANDBY`] lead times one of the two
//! goes, so that a pool is never left a worker over its size: the old one
//! when its memory still calls for a successor, else the successor.
//!
//! Two trade-offs. A worker's slope is only trusted once it is ready: while
//! it starts, loading its code is a burst that ends (a Node.js process takes
//! 40 MiB in 100 ms), and predicting from it would replace every new worker.
//! And when a worker reaches its limit before its successor is ready (it
//! grows faster than a start-up allows for), it waits for the successor
//! only while the slope keeps it under the kernel's first bound until the
//! successor is expected ready: a worker slowed by the kernel while it still
//! takes requests (v2's `memory.high`) serves them at a crawl, and one
//! OOM-killed (v1's limit) fails them, both worse than a pool one worker
//! short for a moment while the others serve.

use std::time::Duration;

/// The weight of the latest start-up in [`Startup`]'s average: a few
/// start-ups make the estimate, and one slow start does not double it.
pub const STARTUP_WEIGHT: f64 = 0.3;

/// How many expected start-ups ahead of the limit a successor starts: the
/// slope is measured over the last second and may steepen, and a start-up
/// may be slower than the average.
pub const AHEAD_FACTOR: f64 = 1.5;

/// The least time ahead of the limit a successor starts, whatever the
/// start-ups have been: a fork, an exec and a cgroup take milliseconds even
/// for the quickest app.
pub const MIN_AHEAD: Duration = Duration::from_millis(100);

/// How many expected start-ups an old worker whose successor is ready may
/// wait for its limit before it is stopped anyway.
pub const MAX_STANDBY: u32 = 10;

/// The start-up time of a pool's workers, learned from their start-ups:
/// an exponentially weighted moving average of spawn → ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Startup {
    average: Duration,
    seen: u32,
}

impl Startup {
    /// Before any start-up is seen, `prior`: what readiness promises (the
    /// delay of `--ready delay`, or a guess for the others).
    pub fn new(prior: Duration) -> Self {
        Startup {
            average: prior,
            seen: 0,
        }
    }

    /// Adds a start-up that took `took` from spawn to ready. The first one
    /// replaces the prior.
    pub fn observe(&mut self, took: Duration) {
        self.average = if self.seen == 0 {
            took
        } else {
            self.average.mul_f64(1.0 - STARTUP_WEIGHT) + took.mul_f64(STARTUP_WEIGHT)
        };
        self.seen = self.seen.saturating_add(1);
    }

    /// The start-up time to expect.
    pub fn expected(&self) -> Duration {
        self.average
    }

    /// How many start-ups were seen.
    pub fn seen(&self) -> u32 {
        self.seen
    }
}

/// What a worker's memory says about its replacement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Memory {
    /// Resident bytes now.
    pub usage: u64,
    /// How fast it grows, in bytes per second (negative when it shrinks).
    pub slope: f64,
}

/// The worker thresholds, in bytes (0 = unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub critical: u64,
    pub limit: u64,
}

/// Why a successor starts ahead of the limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ahead {
    /// The worker is at or past its critical threshold.
    Critical,
    /// At its slope the worker reaches its limit in `eta`, within a
    /// start-up (times [`AHEAD_FACTOR`]).
    TimeToLimit { eta: Duration },
}

impl Ahead {
    /// The `reason` of the event that says so.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::TimeToLimit { .. } => "time_to_limit",
        }
    }
}

/// How long before the limit a successor starts, for a pool whose workers
/// take `startup` to be ready.
pub fn lead_time(startup: &Startup) -> Duration {
    startup.expected().mul_f64(AHEAD_FACTOR).max(MIN_AHEAD)
}

/// Whether a worker's successor should start now: `None` without a limit,
/// or while the worker is below its critical threshold and, once `ready`
/// (a start-up's burst says nothing of what follows: the caller says ready
/// once the slope's window no longer holds the start-up), its slope leaves
/// it more than [`lead_time`] before the limit.
pub fn start_ahead(
    memory: Memory,
    thresholds: Thresholds,
    ready: bool,
    startup: &Startup,
) -> Option<Ahead> {
    if thresholds.limit == 0 {
        return None;
    }
    if thresholds.critical != 0 && memory.usage >= thresholds.critical {
        return Some(Ahead::Critical);
    }
    if !ready || memory.slope <= 0.0 || !memory.slope.is_finite() {
        return None;
    }
    let room = thresholds.limit.saturating_sub(memory.usage) as f64;
    let eta = Duration::from_secs_f64(room / memory.slope);
    (eta <= lead_time(startup)).then_some(Ahead::TimeToLimit { eta })
}

/// What to do with an old worker whose replacement was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Keep it serving: its limit is not reached, or its successor is not
    /// ready yet (stopping it then would leave the pool a worker short).
    Wait,
    /// Drain it and stop it now: it reached its limit and its successor is
    /// ready.
    AtLimit,
    /// Drain it and stop it now, before its successor is ready: at its
    /// slope it would pass the kernel's `memory.high` first.
    AtLimitAlone,
    /// Drain it and stop it now: its successor is ready, and it was not
    /// waiting for its limit (a leak, a restart).
    SuccessorReady,
    /// Its successor has been ready for [`MAX_STANDBY`] lead times and its
    /// limit is still not reached: the old worker goes if its memory still
    /// calls for a successor ([`start_ahead`]), else the successor.
    StandbyOver,
}

/// The old worker and its successor, for [`handover`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair {
    /// The old worker's memory.
    pub memory: Memory,
    /// Its limit, and the kernel's first bound above it (0 = none): v2's
    /// `memory.high`, where it would crawl, or v1's `memory.limit_in_bytes`,
    /// where it would be OOM-killed.
    pub limit: u64,
    pub high: u64,
    /// Whether it waits for its limit (a replacement started ahead of it),
    /// or goes as soon as its successor is ready (a leak, a restart).
    pub waits_for_limit: bool,
    /// How long ago the successor started.
    pub successor_age: Duration,
    /// For how long the successor has been ready (`None`: not yet).
    pub ready_for: Option<Duration>,
}

/// When the old worker stops. Once its successor is ready: at once unless
/// it waits for its limit, else at its limit, or after [`MAX_STANDBY`] lead
/// times of waiting. Before: only when it is at its limit and its slope
/// would take it past `memory.high` before the successor is expected ready.
pub fn handover(pair: Pair, startup: &Startup) -> Handover {
    let Pair {
        memory,
        limit,
        high,
        waits_for_limit,
        ..
    } = pair;
    let at_limit = limit != 0 && memory.usage >= limit;
    let Some(ready_for) = pair.ready_for else {
        let remaining = startup.expected().saturating_sub(pair.successor_age);
        let projected = memory.usage as f64 + memory.slope.max(0.0) * remaining.as_secs_f64();
        return if waits_for_limit && at_limit && high != 0 && projected >= high as f64 {
            Handover::AtLimitAlone
        } else {
            Handover::Wait
        };
    };
    if !waits_for_limit {
        Handover::SuccessorReady
    } else if at_limit {
        Handover::AtLimit
    } else if ready_for >= lead_time(startup) * MAX_STANDBY {
        Handover::StandbyOver
    } else {
        Handover::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const MS: Duration = Duration::from_millis(1);

    fn thresholds() -> Thresholds {
        Thresholds {
            critical: 243 * MIB,
            limit: 256 * MIB,
        }
    }

    fn at(usage_mib: u64, slope_mib_per_s: f64) -> Memory {
        Memory {
            usage: usage_mib * MIB,
            slope: slope_mib_per_s * MIB as f64,
        }
    }

    #[test]
    fn the_startup_estimate_follows_the_start_ups() {
        let mut s = Startup::new(Duration::from_secs(1));
        assert_eq!((s.expected(), s.seen()), (Duration::from_secs(1), 0));
        // The first start-up replaces the prior.
        s.observe(200 * MS);
        assert_eq!(s.expected(), 200 * MS);
        // Then 30 % of each new one: 0.7 × 200 + 0.3 × 400 = 260 ms.
        s.observe(400 * MS);
        assert_eq!(s.expected(), 260 * MS);
        assert_eq!(s.seen(), 2);
        // One very slow start moves it, but does not take it over.
        s.observe(Duration::from_secs(10));
        assert_eq!(s.expected(), 182 * MS + Duration::from_secs(3));
    }

    #[test]
    fn a_successor_starts_at_the_critical_threshold() {
        let s = Startup::new(Duration::from_secs(1));
        assert_eq!(
            start_ahead_ready(at(243, 0.0), thresholds(), &s),
            Some(Ahead::Critical)
        );
        assert_eq!(
            start_ahead_ready(at(250, -5.0), thresholds(), &s),
            Some(Ahead::Critical)
        );
        assert_eq!(start_ahead_ready(at(242, 0.0), thresholds(), &s), None);
        // Without a critical threshold, only the slope counts.
        let no_critical = Thresholds {
            critical: 0,
            ..thresholds()
        };
        assert_eq!(start_ahead_ready(at(250, 0.0), no_critical, &s), None);
    }

    #[test]
    fn a_successor_starts_when_the_limit_is_a_start_up_away() {
        // Start-ups of 200 ms: 300 ms ahead.
        let mut s = Startup::new(Duration::from_secs(1));
        s.observe(200 * MS);
        assert_eq!(lead_time(&s), 300 * MS);
        // 200 MiB/s, 56 MiB to go: 280 ms, within 300 ms.
        assert_eq!(
            start_ahead_ready(at(200, 200.0), thresholds(), &s),
            Some(Ahead::TimeToLimit { eta: 280 * MS })
        );
        // 64 MiB to go: 320 ms, not yet.
        assert_eq!(start_ahead_ready(at(192, 200.0), thresholds(), &s), None);
        // Flat or shrinking memory far from the limit: nothing to predict.
        assert_eq!(start_ahead_ready(at(100, 0.0), thresholds(), &s), None);
        assert_eq!(start_ahead_ready(at(100, -50.0), thresholds(), &s), None);
        assert_eq!(start_ahead_ready(at(100, f64::NAN), thresholds(), &s), None);
        // No limit, no replacement ahead of it.
        let unlimited = Thresholds {
            critical: 0,
            limit: 0,
        };
        assert_eq!(start_ahead_ready(at(900, 1000.0), unlimited, &s), None);
    }

    #[test]
    fn quick_start_ups_still_get_the_least_lead() {
        let mut s = Startup::new(Duration::from_secs(1));
        s.observe(10 * MS);
        assert_eq!(lead_time(&s), MIN_AHEAD);
        // 1000 MiB/s, 90 MiB to go: 90 ms.
        assert!(matches!(
            start_ahead_ready(at(166, 1000.0), thresholds(), &s),
            Some(Ahead::TimeToLimit { .. })
        ));
    }

    fn start_ahead_ready(memory: Memory, t: Thresholds, s: &Startup) -> Option<Ahead> {
        start_ahead(memory, t, true, s)
    }

    #[test]
    fn a_starting_worker_is_judged_by_its_thresholds_only() {
        let s = Startup::new(Duration::from_secs(1));
        // A Node.js process loading its code: 400 MiB/s for a moment.
        assert_eq!(start_ahead(at(40, 400.0), thresholds(), false, &s), None);
        assert_eq!(
            start_ahead(at(40, 400.0), thresholds(), true, &s),
            Some(Ahead::TimeToLimit {
                eta: Duration::from_millis(540)
            })
        );
        assert_eq!(
            start_ahead(at(250, 0.0), thresholds(), false, &s),
            Some(Ahead::Critical)
        );
    }

    /// The old worker at `usage_mib` growing `slope` MiB/s, its limit 256 MiB
    /// and memory.high 272 MiB, its successor started 100 ms ago.
    fn pair(usage_mib: u64, slope: f64, waits: bool, ready_for: Option<Duration>) -> Pair {
        Pair {
            memory: at(usage_mib, slope),
            limit: 256 * MIB,
            high: 272 * MIB,
            waits_for_limit: waits,
            successor_age: 100 * MS,
            ready_for,
        }
    }

    #[test]
    fn the_old_worker_stops_at_its_limit_once_its_successor_is_ready() {
        let s = Startup::new(Duration::from_secs(1));
        let ready = |d: u64| Some(Duration::from_secs(d));
        assert_eq!(
            handover(pair(256, 1.0, true, ready(0)), &s),
            Handover::AtLimit
        );
        // Ready, under the limit: wait for it…
        assert_eq!(
            handover(pair(250, 1.0, true, ready(14)), &s),
            Handover::Wait
        );
        // …for at most ten lead times (10 × 1.5 s).
        assert_eq!(
            handover(pair(250, 1.0, true, ready(15)), &s),
            Handover::StandbyOver
        );
        // Without a limit to wait for, the end of the standby still comes.
        let unlimited = Pair {
            limit: 0,
            high: 0,
            ..pair(250, 1.0, true, ready(15))
        };
        assert_eq!(handover(unlimited, &s), Handover::StandbyOver);
    }

    #[test]
    fn at_its_limit_before_its_successor_the_old_worker_waits_unless_it_would_crawl() {
        let s = Startup::new(Duration::from_secs(1));
        // Under its limit: it serves on.
        assert_eq!(handover(pair(250, 200.0, true, None), &s), Handover::Wait);
        // At its limit, 1 MiB/s, 0.9 s to go: 257 MiB, under memory.high.
        assert_eq!(handover(pair(256, 1.0, true, None), &s), Handover::Wait);
        // 200 MiB/s would take it to 436 MiB: it goes now.
        assert_eq!(
            handover(pair(256, 200.0, true, None), &s),
            Handover::AtLimitAlone
        );
        // Without a kernel bound (no cgroup), nothing to run into: it waits.
        let unbound = Pair {
            high: 0,
            ..pair(256, 200.0, true, None)
        };
        assert_eq!(handover(unbound, &s), Handover::Wait);
    }

    #[test]
    fn a_leaking_worker_stops_as_soon_as_its_successor_is_ready() {
        let s = Startup::new(Duration::from_secs(1));
        assert_eq!(handover(pair(100, 1.0, false, None), &s), Handover::Wait);
        assert_eq!(
            handover(pair(100, 1.0, false, Some(Duration::ZERO)), &s),
            Handover::SuccessorReady
        );
    }
}
