//! Replacements for memory, and stopping a worker: the successor started
//! ahead of the limit, the old worker stopped at its crossing once the
//! successor is ready (as [`predict`] decides), and every stop announced by
//! a drain notice on the worker's control channel before the stop signal.
//!
//! A worker that is being replaced is never slowed down: on a shared
//! `--listen` socket it would go on taking connections and serve them at a
//! crawl. It serves at full speed until it is told to drain, and the
//! kernel's bound (`memory.high`, `memory.max` above the limit) only ever
//! slows one that ignored that.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use super::{Pool, StopReason};
use crate::{
    policy,
    predict::{self, Handover},
    supervise::{
        cgroup::{PoolCgroup, Version},
        spawn::signal_group,
    },
};

/// Why a worker is replaced for its memory, as its drain notice says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DrainReason {
    LimitExceeded,
    LeakDetected,
}

impl DrainReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::LimitExceeded => "limit_exceeded",
            Self::LeakDetected => "leak_detected",
        }
    }
}

/// A worker whose replacement for its memory has started: it serves on
/// until [`predict::handover`] says it goes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Replaced {
    reason: DrainReason,
    /// Whether it waits for its limit (started ahead of it), or goes as soon
    /// as its successor is ready (a leak).
    waits_for_limit: bool,
    /// When its successor started.
    successor_started: Instant,
    /// Since when its successor is ready.
    successor_ready: Option<Instant>,
}

/// Milliseconds since the Unix epoch, as the events' timestamps.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Pool {
    /// The drain notice for instance `slot`, asked to stop for `reason`.
    pub(super) fn drain_notice(&self, slot: u32, reason: StopReason) -> serde_json::Value {
        let replaced = self.instances.get(&slot).and_then(|i| i.replaced);
        let why = match (reason, replaced) {
            (StopReason::Replaced, Some(replaced)) => replaced.reason.as_str(),
            (StopReason::Replaced, None) => "restart",
            (StopReason::ScaleDown, _) => "scale_down",
            (StopReason::Cancelled, _) => "cancelled",
            (StopReason::Shutdown, _) => "shutdown",
        };
        serde_json::json!({
            "event": "drain",
            "reason": why,
            "deadlineMs": self.config.kill_timeout.as_millis() as u64,
            "timestamp": unix_ms(),
        })
    }

    /// Starts the replacement of instance `slot` for its memory, unless one
    /// is already on its way (or it is itself a successor whose predecessor
    /// still runs: then at a later sample).
    pub(super) fn replace_for(&mut self, slot: u32, reason: DrainReason, waits_for_limit: bool) {
        let Some(i) = self.instances.get(&slot) else {
            return;
        };
        if i.replaced.is_some() || i.stop.is_some() {
            return;
        }
        let id = i.id;
        if self.replace(id)
            && let Some(i) = self.instances.get_mut(&slot)
        {
            i.replaced = Some(Replaced {
                reason,
                waits_for_limit,
                successor_started: Instant::now(),
                successor_ready: None,
            });
        }
    }

    /// The successor of worker `id`'s older processes is ready: those
    /// replaced for their memory go when [`predict::handover`] says, the
    /// others (a restart) at once.
    pub(super) fn successor_ready(&mut self, id: u32, generation: u32) {
        let older: Vec<u32> = self
            .instances
            .iter()
            .filter(|(_, o)| o.id == id && o.generation < generation)
            .map(|(&s, _)| s)
            .collect();
        let now = Instant::now();
        for old in older {
            match self
                .instances
                .get_mut(&old)
                .and_then(|o| o.replaced.as_mut())
            {
                Some(replaced) => {
                    replaced.successor_ready.get_or_insert(now);
                    self.hand_over(old);
                }
                None => self.stop_instance(old, StopReason::Replaced),
            }
        }
    }

    /// Stops instance `slot`, replaced for its memory, when
    /// [`predict::handover`] says it is time: at its limit (the crossing
    /// wakes xypriss at once), its successor ready.
    pub(super) fn hand_over(&mut self, slot: u32) {
        let limit = self.worker_thresholds()[2];
        // The kernel's first bound above the limit, as the worker's cgroup
        // holds it (see `WorkerCgroup::bound`).
        let high = match self.cgroups.as_deref().map(PoolCgroup::version) {
            _ if limit == 0 => 0,
            Some(Version::V2) => policy::high_bound(limit),
            Some(Version::V1) => policy::backstop(limit),
            None => 0,
        };
        let Some(i) = self.instances.get(&slot) else {
            return;
        };
        let Some(replaced) = i.replaced else {
            return;
        };
        if i.stop.is_some() {
            return;
        }
        let pair = predict::Pair {
            memory: predict::Memory {
                usage: i.counters.rss(),
                slope: i.series.rates().allocation,
            },
            limit,
            high,
            waits_for_limit: replaced.waits_for_limit,
            successor_age: replaced.successor_started.elapsed(),
            ready_for: replaced.successor_ready.map(|at| at.elapsed()),
        };
        let decision = predict::handover(pair, &self.startup);
        let (id, generation) = (i.id, i.generation);
        match decision {
            Handover::Wait => {}
            // Its memory no longer calls for a successor (a start-up's burst
            // was taken for a trend, or a collection freed it): the
            // successor goes, it stays.
            Handover::StandbyOver
                if predict::start_ahead(
                    pair.memory,
                    self.worker_predict_thresholds(),
                    true,
                    &self.startup,
                )
                .is_none() =>
            {
                tracing::debug!("worker {id}: its successor is not needed after all");
                if let Some(i) = self.instances.get_mut(&slot) {
                    i.replaced = None;
                }
                let successors: Vec<u32> = self
                    .instances
                    .iter()
                    .filter(|(_, s)| s.id == id && s.generation > generation && s.stop.is_none())
                    .map(|(&s, _)| s)
                    .collect();
                for successor in successors {
                    self.stop_instance(successor, StopReason::Cancelled);
                }
            }
            _ => {
                tracing::debug!("worker {id}: {decision:?}");
                self.stop_instance(slot, StopReason::Replaced);
            }
        }
    }

    /// The worker thresholds as [`predict`] takes them.
    pub(super) fn worker_predict_thresholds(&self) -> predict::Thresholds {
        let [_, critical, limit] = self.worker_thresholds();
        predict::Thresholds { critical, limit }
    }

    /// At each tick: hands over the workers whose standby is over, and kills
    /// those that outlived their stop signal by `--kill-timeout`.
    pub(super) fn replacement_timers(&mut self) {
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        for slot in slots {
            self.hand_over(slot);
        }
        let kill_timeout = self.config.kill_timeout;
        for i in self.instances.values_mut() {
            if i.stop_sent.is_some_and(|at| at.elapsed() >= kill_timeout) {
                tracing::warn!(
                    "worker {} (pid {}) outlived --kill-timeout {kill_timeout:?} after its stop signal: SIGKILL",
                    i.id,
                    i.pid
                );
                i.stop_sent = None;
                signal_group(i.pid, Signal::SIGKILL);
            }
        }
    }
}
