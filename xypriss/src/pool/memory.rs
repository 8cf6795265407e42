//! Memory: the worker, cluster and system scopes' thresholds, leaks,
//! low-memory mode and throttling. The pure parts (`detect`, `policy`)
//! decide; this carries their decisions out.

use std::time::{Duration, Instant};

use super::{
    ALERT_MARGIN, Instance, LowMemory, Pool,
    replace::DrainReason,
    state::{Degradation, Taken, degrades, low_memory_cap, system_reading},
};
use crate::{
    api::Reply,
    detect::threshold::{Change, Level},
    observe::procfs::monotonic_ns,
    output::event::{AlertType, Event},
    policy::{self, Action, LowMemoryOrigin},
    predict, series,
    supervise::lifecycle::State,
};

impl Pool {
    /// Raises or lifts instance `slot`'s alerts for its latest memory, and
    /// carries out what the policy decides.
    pub(super) fn check_thresholds(&mut self, slot: u32) {
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
                        Action::None => Taken::None,
                        Action::GcHint => {
                            let hint = serde_json::json!({
                                "event": "gc_hint",
                                "reason": "critical",
                                "memoryUsage": usage,
                                "threshold": threshold,
                            });
                            if i.control.send(&hint) {
                                Taken::GcHint
                            } else {
                                Taken::GcHintDropped
                            }
                        }
                        Action::Restart => {
                            // Never slowed: it may still be taking requests.
                            // Its successor starts (unless it did ahead of
                            // the limit), and it stops once that is ready.
                            restart = true;
                            Taken::Restart
                        }
                    };
                    let throttled = level == Level::Critical
                        && policy::throttles(&memory.enforcement)
                        && throttle(i, usage, threshold, &mut throttling);
                    let done = done.and_throttled(throttled);
                    if !said {
                        continue;
                    }
                    threshold_event(
                        "worker",
                        Some((i.id, i.pid)),
                        &format!("worker {}", i.id),
                        None,
                        (usage, thresholds[2]),
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
                        (usage, thresholds[2]),
                        change,
                        Taken::None,
                    )
                }
            };
            i.control.send(&event);
            self.output.emit(&event);
        }
        for event in throttling {
            i.control.send(&event);
            self.output.emit(&event);
        }
        let enforcing = memory.enforcement.enabled && memory.enforcement.enforce_hard_limits;
        let ahead = enforcing
            .then(|| {
                predict::start_ahead(
                    predict::Memory {
                        usage,
                        slope: i.series.rates().allocation,
                    },
                    predict::Thresholds {
                        critical: thresholds[1],
                        limit: thresholds[2],
                    },
                    // Its slope says something once the rates' window no
                    // longer holds its start-up.
                    i.state == State::Ready
                        && i.ready_at.is_some_and(|at| {
                            at.elapsed() >= Duration::from_nanos(series::WINDOW_NS)
                        }),
                    &self.startup,
                )
            })
            .flatten();
        if restart || ahead.is_some() {
            self.replace_for(slot, DrainReason::LimitExceeded, true);
        }
        // At the crossing, with its successor ready: it goes now.
        self.hand_over(slot);
        self.check_pool();
    }

    /// The system scope, at `memoryCheckInterval`: the host's memory in use
    /// against what it has less `memoryReservation`.
    pub(super) fn check_system(&mut self) {
        let management = &self.config.memory.memory_management;
        if !management.enabled {
            return;
        }
        let Some(memory) = self.host.memory() else {
            return;
        };
        let (used, thresholds) = system_reading(&memory, management);
        let changes = self.system_alerts.update(used, thresholds, ALERT_MARGIN);
        let action = self.memory_scaling(&changes);
        for event in scope_events(
            "system",
            (used, thresholds[2]),
            changes,
            "the host",
            "memory less memoryReservation",
            action,
        ) {
            self.output.emit(&event);
        }
        self.scale_down_for_memory(action);
        let pressure = policy::HostPressure {
            system_level: self.system_alerts.highest(),
            psi_some_avg10: self.host.memory_pressure(),
            swap_used_pct: memory.swap_used_pct(),
        };
        self.degrade(&pressure, action);
    }

    /// Low-memory mode on host pressure, off when it eases (one an operator
    /// or the configuration turned on stays: [`policy::low_memory_step`]);
    /// and `gracefulDegradation`: while system memory stays critical, one
    /// worker less per cooldown, down to `minWorkers`.
    pub(super) fn degrade(&mut self, pressure: &policy::HostPressure, scaled: Taken) {
        let swap_limit = self.config.memory.memory_management.swap_usage_limit;
        let reason = policy::low_memory_reason(pressure, swap_limit, self.low_memory.is_some());
        match policy::low_memory_step(self.low_memory.as_ref().map(|l| l.origin), reason) {
            policy::LowMemoryStep::Hold => {}
            policy::LowMemoryStep::Enter(reason) => {
                self.set_low_memory(true, &reason, LowMemoryOrigin::Pressure);
            }
            policy::LowMemoryStep::Restrict(reason) => {
                self.restrict_low_memory(&reason);
            }
            policy::LowMemoryStep::Leave => {
                self.set_low_memory(false, "memory pressure eased", LowMemoryOrigin::Pressure);
            }
        }
        let degradation = Degradation {
            system_level: pressure.system_level,
            scaled: scaled == Taken::ScaleDown,
            since_last: self.last_memory_scale_down.map(|t| t.elapsed()),
            cooldown: policy::scale_down_cooldown(&self.config.memory.auto_scaling),
            size: self.size,
            min_workers: self.config.min_workers,
        };
        if degrades(&self.config.memory.enforcement, &degradation) {
            self.last_memory_scale_down = Some(Instant::now());
            self.scale_down(1, None, "graceful_degradation");
        }
    }

    /// The cluster scope: the pool's total against `maxTotalMemory`.
    pub(super) fn check_pool(&mut self) {
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
            (usage, total),
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
    pub(super) fn memory_scaling(&self, changes: &[Change]) -> Taken {
        let memory = &self.config.memory;
        let since = self.last_memory_scale_down.map(|t| t.elapsed());
        let scale = changes.iter().any(|c| {
            matches!(c, Change::Raised { level, .. }
                if policy::scale_down_on(*level, &memory.memory_management, &memory.auto_scaling, since))
        });
        if scale && self.size > self.config.min_workers {
            Taken::ScaleDown
        } else {
            Taken::None
        }
    }

    pub(super) fn scale_down_for_memory(&mut self, action: Taken) {
        if action == Taken::ScaleDown {
            self.last_memory_scale_down = Some(Instant::now());
            self.scale_down(1, None, "memory_critical");
        }
    }

    /// Feeds instance `slot`'s memory at `at_ns` to its leak detector; a new
    /// "leaking" verdict raises `leak_detected`, and acts as the policy says.
    pub(super) fn check_leak(&mut self, slot: u32, at_ns: u64) {
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
        let alert = Event::MemoryAlert {
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
            memory_usage_percent: policy::percent_of(usage, limit),
            threshold: limit,
            slope_bytes_per_sec: Some(verdict.slope_bytes_per_sec.round()),
            confidence: Some(verdict.confidence),
            eta_to_limit_sec: verdict.eta_to_limit_sec.map(f64::round),
        };
        i.control.send(&alert);
        self.output.emit(&alert);
        if action == Action::Restart {
            self.replace_for(slot, DrainReason::LeakDetected, false);
        }
    }

    /// The worker thresholds in force: tighter in a low-memory mode that
    /// restricts.
    pub(super) fn worker_thresholds(&self) -> [u64; 3] {
        if self
            .low_memory
            .as_ref()
            .is_some_and(|l| l.origin.restricts())
        {
            policy::tightened(self.config.thresholds)
        } else {
            self.config.thresholds
        }
    }

    /// Turns low-memory mode on or off, for `reason`, from `origin`. Says
    /// so, tells the workers, and applies its effects: when `origin`
    /// restricts, the pool's ceiling and tighter worker thresholds. An
    /// operator's request makes a pressure mode already on the operator's
    /// (only an operator ends it then), without changing what it does.
    pub(super) fn set_low_memory(
        &mut self,
        enabled: bool,
        reason: &str,
        origin: LowMemoryOrigin,
    ) -> Reply {
        if enabled == self.low_memory.is_some() {
            if let Some(l) = self.low_memory.as_mut()
                && origin == LowMemoryOrigin::Operator
                && l.origin == LowMemoryOrigin::Pressure
            {
                l.origin = origin;
            }
            return Reply::LowMemory {
                enabled,
                changed: false,
            };
        }
        let before = self.low_memory.take();
        if enabled {
            self.low_memory = Some(LowMemory {
                reason: reason.into(),
                origin,
                cap: origin
                    .restricts()
                    .then(|| low_memory_cap(self.config.min_workers, self.size)),
                size_before: self.size,
            });
        }
        self.low_memory_changed(enabled, reason, before);
        Reply::LowMemory {
            enabled,
            changed: true,
        }
    }

    /// A low-memory mode from the configuration meets host pressure: it
    /// becomes a pressure mode, which caps and tightens, and ends with the
    /// pressure.
    fn restrict_low_memory(&mut self, reason: &str) {
        let before = self.low_memory.take();
        self.low_memory = Some(LowMemory {
            reason: reason.into(),
            origin: LowMemoryOrigin::Pressure,
            cap: Some(low_memory_cap(self.config.min_workers, self.size)),
            size_before: self.size,
        });
        self.low_memory_changed(true, reason, before);
    }

    /// Says low-memory mode's new state (it was `before`), tells the
    /// workers, retunes their thresholds, and moves the pool to its new
    /// ceiling, or back to its size from before a ceiling.
    fn low_memory_changed(&mut self, enabled: bool, reason: &str, before: Option<LowMemory>) {
        let now = self.low_memory.as_ref();
        let cap = now.and_then(|l| l.cap);
        let thresholds = self.worker_thresholds();
        self.output.emit(&Event::LowMemoryMode {
            enabled,
            reason: reason.into(),
            origin: now.or(before.as_ref()).map(|l| l.origin.as_str()),
            pool_cap: cap,
            worker_thresholds: now.map(|_| thresholds),
        });
        let message = serde_json::json!({
            "event": "low_memory_mode",
            "enabled": enabled,
            "reason": reason,
        });
        for i in self.instances.values_mut() {
            i.control.send(&message);
            if let Err(err) = self.observer.retune(i.slot, thresholds) {
                tracing::warn!("worker {}: new thresholds not set: {err}", i.id);
            }
        }
        let restored = before.filter(|b| b.cap.is_some()).map(|b| b.size_before);
        match (cap, restored) {
            (Some(cap), _) if self.size > cap => {
                self.scale_down(self.size - cap, None, "low_memory_mode");
            }
            (None, Some(before)) if self.size < before => {
                self.scale_up(before - self.size, "low_memory_mode_ended");
            }
            _ => {}
        }
    }
}

/// `resourceThrottling` at a critical crossing: has the kernel slow `i`
/// down (see [`WorkerCgroup::throttle`]), and says so in `events`. False
/// when it could not be done (no cgroup, or the kernel refused: logged).
pub(super) fn throttle(
    i: &mut Instance,
    usage: u64,
    threshold: u64,
    events: &mut Vec<Event>,
) -> bool {
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
pub(super) fn release(i: &mut Instance, usage: u64, threshold: u64, events: &mut Vec<Event>) {
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
pub(super) fn scope_events(
    scope: &'static str,
    usage: (u64, u64),
    changes: Vec<Change>,
    who: &str,
    against: &str,
    action: Taken,
) -> Vec<Event> {
    changes
        .into_iter()
        .map(|change| {
            let action = match change {
                Change::Raised { level, .. } if level >= Level::Critical => action,
                _ => Taken::None,
            };
            threshold_event(scope, None, who, Some(against), usage, change, action)
        })
        .collect()
}

/// One scope's `memory_alert` (going up) or `memory_recovered` for `change`.
/// `whole` is the scope's 100 % (0 = none), for `memoryUsagePercent`.
pub(super) fn threshold_event(
    scope: &'static str,
    worker: Option<(u32, u32)>,
    who: &str,
    against: Option<&str>,
    (usage, whole): (u64, u64),
    change: Change,
    action: Taken,
) -> Event {
    let memory_usage_percent = policy::percent_of(usage, whole);
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
            action: action.as_str(),
            memory_usage: usage,
            memory_usage_percent,
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
            memory_usage_percent,
            threshold,
        },
    }
}

/// How a message names an alert level.
pub(super) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Warning => "warning threshold",
        Level::Critical => "critical threshold",
        Level::LimitExceeded => "limit",
    }
}
