//! Policy: what xypriss does about what the detectors found. Pure: it reads
//! the configuration's `enforcement` and `memoryManagement` blocks and returns
//! decisions; the controller carries them out (the only side effects).
//!
//! Over 600 lines with its unit tests; the decisions themselves are the first
//! 360.

use std::time::Duration;

use crate::{
    detect::threshold::Level,
    settings::{AutoScaling, Enforcement, MemoryManagement},
};

/// What to do when a worker crosses a threshold going up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Alert only.
    None,
    /// Write a `gc_hint` on the worker's control channel.
    GcHint,
    /// Replace the worker gracefully: a new process first, the old one
    /// stopped once the new one is ready.
    Restart,
}

impl Action {
    /// The `action` field of `memory_alert`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::GcHint => "gc_hint",
            Self::Restart => "restart",
        }
    }
}

/// The decision for a crossing of `level`: the action, and whether the
/// alert is said (`memory_alert`).
pub fn on_crossing(
    level: Level,
    management: &MemoryManagement,
    enforcement: &Enforcement,
) -> (Action, bool) {
    let enforcing = enforcement.enabled && enforcement.enforce_hard_limits;
    let action = match level {
        Level::LimitExceeded if enforcing => Action::Restart,
        Level::Critical if management.garbage_collection_hint => Action::GcHint,
        _ => Action::None,
    };
    let said = match level {
        // Quiet limit crossings unless asked, but they still act.
        Level::LimitExceeded if !enforcement.alert_on_limit_reached => false,
        // Without enforcement, a limit crossing is a soft-limit warning.
        Level::LimitExceeded if !enforcing => enforcement.soft_limit_warnings,
        _ => true,
    };
    (action, said)
}

/// How much CPU a throttled worker gets on cgroups that slow it by CPU
/// bandwidth (v1, and v2's `cpu.max` beside `memory.high`): 2 % of one
/// CPU. Page faults are CPU time: measured here, a worker touching memory
/// as fast as it can still grew at about 150 MiB/s with a tenth of a CPU,
/// and at a few tens of MiB/s with 2 %, while it still runs.
pub const THROTTLE_CPU_FRACTION: f64 = 0.02;

/// Whether a critical crossing throttles the worker (`resourceThrottling`).
pub fn throttles(enforcement: &Enforcement) -> bool {
    enforcement.enabled && enforcement.resource_throttling
}

/// Whether workers get a leak detector: `memoryLeakDetection` within an
/// enabled `memoryManagement` (off, nothing is raised or restarted for memory).
pub fn detects_leaks(management: &MemoryManagement) -> bool {
    management.enabled && management.memory_leak_detection
}

/// `usage` as a percentage of `whole` (a scope's 100 %: the worker's limit,
/// `maxTotalMemory`, the host less its reservation), to one decimal; `None`
/// when there is no whole (no limit set).
pub fn percent_of(usage: u64, whole: u64) -> Option<f64> {
    (whole != 0).then(|| (usage as f64 * 1000.0 / whole as f64).round() / 10.0)
}

/// The decision for a worker found leaking: a graceful restart when the
/// enforcement allows it, otherwise an alert only.
pub fn on_leak(enforcement: &Enforcement) -> Action {
    if enforcement.enabled && enforcement.enforce_hard_limits {
        Action::Restart
    } else {
        Action::None
    }
}

/// How far low-memory mode lowers the warning and critical thresholds, as
/// a fraction of the limit (80 % → 70 %, 95 % → 85 %).
pub const LOW_MEMORY_TIGHTENING: f64 = 0.10;

/// The worker thresholds (warning, critical, limit in bytes; 0 = unset) in
/// low-memory mode: warning and critical come [`LOW_MEMORY_TIGHTENING`] of
/// the limit closer to zero, never below 1 % of it; the limit stays.
pub fn tightened([warning, critical, limit]: [u64; 3]) -> [u64; 3] {
    if limit == 0 {
        return [warning, critical, limit];
    }
    let step = (limit as f64 * LOW_MEMORY_TIGHTENING) as u64;
    let floor = (limit / 100).max(1);
    let lower = |t: u64| {
        if t == 0 {
            0
        } else {
            t.saturating_sub(step).max(floor)
        }
    };
    [
        lower(warning),
        lower(critical).max(lower(warning) + 1),
        limit,
    ]
}

/// How long after a memory scale-down before the next: `aggressiveMemoryScaling`
/// shortens it.
pub fn scale_down_cooldown(scaling: &AutoScaling) -> Duration {
    if scaling.aggressive_memory_scaling {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    }
}

/// Whether a crossing of `level` in the cluster or system scope scales the
/// pool down by one worker (`autoScaleOnMemory`), `since_last` after the
/// previous memory scale-down, if any.
pub fn scale_down_on(
    level: Level,
    management: &MemoryManagement,
    scaling: &AutoScaling,
    since_last: Option<Duration>,
) -> bool {
    level >= Level::Critical
        && management.auto_scale_on_memory
        && since_last.is_none_or(|d| d >= scale_down_cooldown(scaling))
}

/// Where low-memory mode came from: what it does and how it ends follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowMemoryOrigin {
    /// `lowMemoryMode: true` in the configuration ("start in low memory
    /// mode"): the figures beside it (`workers`, `maxWorkers`, the
    /// thresholds) are already the user's low-memory figures, so the mode
    /// neither caps the pool nor tightens the thresholds. It ends when an
    /// operator disables it (`disableLowMemoryMode()`), or gives way to
    /// [`Self::Pressure`] when the host's memory calls for more.
    Configuration,
    /// An operator's `enableLowMemoryMode()`: caps and tightens; only an
    /// operator ends it.
    Operator,
    /// The host's memory pressure: caps and tightens; ends when the
    /// pressure does.
    Pressure,
}

impl LowMemoryOrigin {
    /// Whether the mode caps the pool (at half its size, never under
    /// `minWorkers`) and tightens the worker thresholds ([`tightened`]).
    pub fn restricts(self) -> bool {
        self != Self::Configuration
    }

    /// The `origin` field of `low_memory_mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configuration => "configuration",
            Self::Operator => "operator",
            Self::Pressure => "pressure",
        }
    }
}

/// What low-memory mode does at a memory check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LowMemoryStep {
    Hold,
    /// Turn it on, from pressure, for this reason.
    Enter(String),
    /// A configured mode meets pressure: it becomes a pressure mode (it caps
    /// and tightens, and ends with the pressure), for this reason.
    Restrict(String),
    /// The pressure that started it eased.
    Leave,
}

/// The step for a mode now `current` (where it came from, if on), when the
/// host calls for it for `reason` (from [`low_memory_reason`]).
pub fn low_memory_step(current: Option<LowMemoryOrigin>, reason: Option<String>) -> LowMemoryStep {
    match (current, reason) {
        (None, Some(reason)) => LowMemoryStep::Enter(reason),
        (Some(LowMemoryOrigin::Configuration), Some(reason)) => LowMemoryStep::Restrict(reason),
        (Some(LowMemoryOrigin::Pressure), None) => LowMemoryStep::Leave,
        _ => LowMemoryStep::Hold,
    }
}

/// PSI `some avg10` (percent) at which low-memory mode starts, and under
/// which it may end.
pub const PSI_ENTER: f64 = 10.0;
pub const PSI_LEAVE: f64 = 5.0;

/// How far under `swapUsageLimit` swap use must fall to end low-memory mode.
pub const SWAP_MARGIN: f64 = 5.0;

/// What the host says, at `memoryCheckInterval`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostPressure {
    /// The system scope's highest raised alert (itself lifted with hysteresis).
    pub system_level: Option<Level>,
    /// PSI memory `some avg10`, percent; `None` without PSI.
    pub psi_some_avg10: Option<f64>,
    /// Swap in use, percent of the swap there is; `None` without swap.
    pub swap_used_pct: Option<f64>,
}

/// Why low-memory mode should be on, or `None` when nothing calls for it.
/// `on` says whether it is on already: staying takes less than entering
/// (PSI under [`PSI_LEAVE`], swap [`SWAP_MARGIN`] under its limit), so the
/// mode does not flap at a boundary.
pub fn low_memory_reason(p: &HostPressure, swap_usage_limit: f64, on: bool) -> Option<String> {
    if let Some(level) = p.system_level.filter(|&l| l >= Level::Critical) {
        let what = if level == Level::LimitExceeded {
            "over its limit"
        } else {
            "critical"
        };
        return Some(format!("system memory is {what}"));
    }
    let psi_bar = if on { PSI_LEAVE } else { PSI_ENTER };
    if let Some(psi) = p.psi_some_avg10.filter(|&psi| psi >= psi_bar) {
        return Some(format!("memory pressure: PSI some avg10 {psi:.1}%"));
    }
    let swap_bar = if on {
        swap_usage_limit - SWAP_MARGIN
    } else {
        swap_usage_limit
    };
    if let Some(swap) = p.swap_used_pct.filter(|&swap| swap > swap_bar) {
        return Some(format!(
            "swap use {swap:.1}% is over swapUsageLimit {swap_usage_limit}%"
        ));
    }
    None
}

/// How long load-driven scaling waits after a scaling before the next.
pub fn load_cooldown(scaling: &AutoScaling) -> Duration {
    scale_down_cooldown(scaling)
}

/// What load-driven scaling sees: the workers' CPU over the load window,
/// their memory against `maxMemoryPerWorker`, and the pool's memory as a
/// share of its budget (`maxTotalMemory`, or less when the host has less to
/// give), now and with one more worker of the observed p95 size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Mean CPU use of the ready workers over the window; 100 = one core each.
    pub cpu_pct: f64,
    /// Mean resident size of the ready workers, percent of
    /// `maxMemoryPerWorker`; `None` without a per-worker limit.
    pub worker_memory_pct: Option<f64>,
    pub memory_pct: f64,
    pub memory_pct_with_one_more: f64,
    pub size: u32,
    pub min_workers: u32,
    /// `maxWorkers`, or less in low-memory mode.
    pub cap: u32,
    /// Since the last load-driven scaling, if any.
    pub since_last: Option<Duration>,
}

/// A change of the pool's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Hold,
    Up(u32),
    Down(u32),
}

/// Load-driven scaling (`autoScaling`), as docs/configuration.md
/// ("Semantics") describes it:
/// - up when the workers' CPU is at `scaleUpThreshold.cpu` or more, or (with
///   `memoryBasedScaling`) their memory is at `scaleUpThreshold.memory` of
///   `maxMemoryPerWorker` or more; either only while one more worker keeps
///   the pool under `scaleUpThreshold.memory` of its budget (with
///   `memoryBasedScaling`; always for a memory-driven step): pressure on the
///   workers adds capacity only while the budget has room;
/// - down when an idle pool (CPU at `scaleDownThreshold.cpu` or less) is
///   also small (at most `scaleDownThreshold.memory` of its budget, with
///   `memoryBasedScaling`); or, with `memoryBasedScaling`, on memory alone:
///   the workers and the pool at most `scaleDownThreshold.memory`, when the
///   workers left would stay under `scaleUpThreshold.cpu` (no flapping).
///
/// One worker a step, two with `aggressiveMemoryScaling`, within
/// `minWorkers` and the cap, and not within [`load_cooldown`] of the
/// previous step.
pub fn scale_on_load(load: &Load, scaling: &AutoScaling) -> Step {
    if load
        .since_last
        .is_some_and(|since| since < load_cooldown(scaling))
    {
        return Step::Hold;
    }
    let step = if scaling.aggressive_memory_scaling {
        2
    } else {
        1
    };
    let (up, down) = (&scaling.scale_up_threshold, &scaling.scale_down_threshold);
    let memory_based = scaling.memory_based_scaling;
    let budget_has_room = load.memory_pct_with_one_more < up.memory;
    let busy = load.cpu_pct >= up.cpu && (!memory_based || budget_has_room);
    let pressed =
        memory_based && load.worker_memory_pct.is_some_and(|m| m >= up.memory) && budget_has_room;
    if (busy || pressed) && load.size < load.cap {
        return Step::Up(step.min(load.cap - load.size));
    }
    if load.size <= load.min_workers {
        return Step::Hold;
    }
    let pool_small = load.memory_pct <= down.memory;
    let idle = load.cpu_pct <= down.cpu && (!memory_based || pool_small);
    let n = step.min(load.size - load.min_workers);
    let cpu_after = load.cpu_pct * f64::from(load.size) / f64::from(load.size - n);
    let small = memory_based
        && pool_small
        && load.worker_memory_pct.is_some_and(|m| m <= down.memory)
        && cpu_after < up.cpu;
    if idle || small {
        return Step::Down(n);
    }
    Step::Hold
}

/// The kernel-enforced backstop for a hard limit of `limit` bytes: slightly
/// above it, so the graceful restart wins unless the worker runs away. The
/// worker's cgroup charge never exceeds it (`memory.max`, v1
/// `memory.limit_in_bytes`); reaching it OOM-kills the worker.
pub fn backstop(limit: u64) -> u64 {
    limit + (limit / 10).max(16 << 20)
}

/// Where the kernel starts slowing a worker past a hard limit of `limit`
/// bytes (v2 `memory.high`): above the limit by max(5 %, 8 MiB), and never
/// above the [`backstop`], so that only a worker already told to drain and
/// stop, and still growing, is slowed, and it crawls rather than reaching
/// the OOM killer.
pub fn high_bound(limit: u64) -> u64 {
    (limit + (limit / 20).max(8 << 20)).min(backstop(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling() -> AutoScaling {
        crate::settings::MemoryConfig::default().auto_scaling
    }

    /// Without a per-worker reading (no `maxMemoryPerWorker`): CPU and the
    /// pool's share of its budget only.
    fn load(cpu_pct: f64, memory_pct: f64) -> Load {
        Load {
            cpu_pct,
            worker_memory_pct: None,
            memory_pct,
            memory_pct_with_one_more: memory_pct + 10.0,
            size: 2,
            min_workers: 1,
            cap: 4,
            since_last: None,
        }
    }

    #[test]
    fn busy_workers_add_one_while_memory_allows() {
        let s = scaling();
        assert_eq!(scale_on_load(&load(90.0, 40.0), &s), Step::Up(1));
        // One more worker would take the pool past scaleUpThreshold.memory (80 %).
        assert_eq!(scale_on_load(&load(90.0, 75.0), &s), Step::Hold);
        // …unless memory-based scaling is off.
        let cpu_only = AutoScaling {
            memory_based_scaling: false,
            ..s.clone()
        };
        assert_eq!(scale_on_load(&load(90.0, 75.0), &cpu_only), Step::Up(1));
        // At the cap, nothing more.
        let full = Load {
            size: 4,
            ..load(90.0, 10.0)
        };
        assert_eq!(scale_on_load(&full, &s), Step::Hold);
    }

    #[test]
    fn an_idle_small_pool_shrinks_to_its_minimum() {
        let s = scaling();
        assert_eq!(scale_on_load(&load(5.0, 10.0), &s), Step::Down(1));
        // Idle but big: memory over scaleDownThreshold.memory (30 %) holds it.
        assert_eq!(scale_on_load(&load(5.0, 50.0), &s), Step::Hold);
        // Busy enough to keep: between the two CPU thresholds.
        assert_eq!(scale_on_load(&load(50.0, 10.0), &s), Step::Hold);
        let minimal = Load {
            size: 1,
            ..load(5.0, 10.0)
        };
        assert_eq!(scale_on_load(&minimal, &s), Step::Hold);
    }

    #[test]
    fn scaling_waits_out_its_cooldown_and_aggressive_takes_two() {
        let s = scaling();
        let recent = Load {
            since_last: Some(Duration::from_secs(29)),
            ..load(90.0, 10.0)
        };
        assert_eq!(scale_on_load(&recent, &s), Step::Hold);
        let aggressive = AutoScaling {
            aggressive_memory_scaling: true,
            ..s
        };
        // 10 s cooldown when aggressive, and two at a time, within the cap.
        assert_eq!(scale_on_load(&recent, &aggressive), Step::Up(2));
        let near_cap = Load { size: 3, ..recent };
        assert_eq!(scale_on_load(&near_cap, &aggressive), Step::Up(1));
    }

    /// `load(cpu, pool memory)` with the workers at `worker` % of their limit.
    fn with_workers(cpu_pct: f64, memory_pct: f64, worker: f64) -> Load {
        Load {
            worker_memory_pct: Some(worker),
            ..load(cpu_pct, memory_pct)
        }
    }

    #[test]
    fn memory_pressure_on_workers_adds_capacity_while_the_budget_has_room() {
        let s = scaling();
        // Workers at 85 % of maxMemoryPerWorker, CPU quiet: one more, since
        // the pool with it (50 %) stays under scaleUpThreshold.memory (80 %).
        assert_eq!(
            scale_on_load(&with_workers(10.0, 40.0, 85.0), &s),
            Step::Up(1)
        );
        // The budget has no room: the same pressure holds.
        assert_eq!(
            scale_on_load(&with_workers(10.0, 75.0, 85.0), &s),
            Step::Hold
        );
        // Under the trigger: nothing.
        assert_eq!(
            scale_on_load(&with_workers(50.0, 40.0, 60.0), &s),
            Step::Hold
        );
        // memoryBasedScaling off: memory neither triggers nor holds.
        let cpu_only = AutoScaling {
            memory_based_scaling: false,
            ..s.clone()
        };
        assert_eq!(
            scale_on_load(&with_workers(50.0, 40.0, 85.0), &cpu_only),
            Step::Hold
        );
        // At the cap, nothing more.
        let full = Load {
            size: 4,
            ..with_workers(10.0, 40.0, 95.0)
        };
        assert_eq!(scale_on_load(&full, &s), Step::Hold);
    }

    #[test]
    fn scale_down_threshold_memory_alone_shrinks_a_small_pool() {
        let s = scaling();
        let four = |cpu, pool, worker| Load {
            size: 4,
            ..with_workers(cpu, pool, worker)
        };
        // CPU between the thresholds, workers and pool under 30 %: one less,
        // as the three left stay under scaleUpThreshold.cpu (50 × 4/3 ≈ 67 %).
        assert_eq!(scale_on_load(&four(50.0, 10.0, 20.0), &s), Step::Down(1));
        // The three left would be busy (65 × 4/3 ≈ 87 %): it holds.
        assert_eq!(scale_on_load(&four(65.0, 10.0, 20.0), &s), Step::Hold);
        // Workers over scaleDownThreshold.memory, or the pool: it holds.
        assert_eq!(scale_on_load(&four(50.0, 10.0, 40.0), &s), Step::Hold);
        assert_eq!(scale_on_load(&four(50.0, 40.0, 20.0), &s), Step::Hold);
        // Never under minWorkers.
        let one = Load {
            size: 1,
            ..with_workers(5.0, 5.0, 5.0)
        };
        assert_eq!(scale_on_load(&one, &s), Step::Hold);
        // Without memoryBasedScaling, memory alone does nothing.
        let cpu_only = AutoScaling {
            memory_based_scaling: false,
            ..s
        };
        assert_eq!(
            scale_on_load(&four(50.0, 10.0, 20.0), &cpu_only),
            Step::Hold
        );
    }

    #[test]
    fn a_configured_low_memory_mode_keeps_the_configured_figures() {
        use LowMemoryOrigin::*;
        assert!(!Configuration.restricts());
        assert!(Operator.restricts() && Pressure.restricts());
        let r = || Some("swap".to_owned());
        assert_eq!(
            low_memory_step(None, r()),
            LowMemoryStep::Enter("swap".into())
        );
        assert_eq!(low_memory_step(None, None), LowMemoryStep::Hold);
        // Pressure on a configured mode makes it a pressure mode…
        assert_eq!(
            low_memory_step(Some(Configuration), r()),
            LowMemoryStep::Restrict("swap".into())
        );
        // …which ends with the pressure; a calm host leaves a configured
        // mode on, and only an operator ends an operator's.
        assert_eq!(low_memory_step(Some(Pressure), None), LowMemoryStep::Leave);
        assert_eq!(low_memory_step(Some(Pressure), r()), LowMemoryStep::Hold);
        assert_eq!(
            low_memory_step(Some(Configuration), None),
            LowMemoryStep::Hold
        );
        assert_eq!(low_memory_step(Some(Operator), None), LowMemoryStep::Hold);
        assert_eq!(low_memory_step(Some(Operator), r()), LowMemoryStep::Hold);
    }

    #[test]
    fn low_memory_mode_starts_on_pressure_and_ends_with_hysteresis() {
        let calm = HostPressure::default();
        assert_eq!(low_memory_reason(&calm, 10.0, false), None);
        let critical = HostPressure {
            system_level: Some(Level::Critical),
            ..calm
        };
        assert!(
            low_memory_reason(&critical, 10.0, false)
                .unwrap()
                .contains("critical")
        );
        let warning = HostPressure {
            system_level: Some(Level::Warning),
            ..calm
        };
        assert_eq!(low_memory_reason(&warning, 10.0, false), None);
        // PSI: on at 10 %, off under 5 %.
        let psi = |v| HostPressure {
            psi_some_avg10: Some(v),
            ..calm
        };
        assert_eq!(low_memory_reason(&psi(7.0), 10.0, false), None);
        assert!(
            low_memory_reason(&psi(12.0), 10.0, false)
                .unwrap()
                .contains("PSI")
        );
        assert!(low_memory_reason(&psi(7.0), 10.0, true).is_some());
        assert_eq!(low_memory_reason(&psi(4.0), 10.0, true), None);
        // Swap: on over swapUsageLimit, off 5 points under it.
        let swap = |v| HostPressure {
            swap_used_pct: Some(v),
            ..calm
        };
        assert!(
            low_memory_reason(&swap(11.0), 10.0, false)
                .unwrap()
                .contains("swapUsageLimit")
        );
        assert_eq!(low_memory_reason(&swap(8.0), 10.0, false), None);
        assert!(low_memory_reason(&swap(8.0), 10.0, true).is_some());
        assert_eq!(low_memory_reason(&swap(4.0), 10.0, true), None);
    }

    #[test]
    fn low_memory_mode_lowers_warning_and_critical_by_a_tenth_of_the_limit() {
        assert_eq!(tightened([800, 950, 1000]), [700, 850, 1000]);
        assert_eq!(tightened([0, 0, 0]), [0, 0, 0]);
        // Never below 1 % of the limit, and critical stays above warning.
        assert_eq!(tightened([50, 60, 1000]), [10, 11, 1000]);
    }

    use crate::settings::MemoryConfig;

    fn config() -> (MemoryManagement, Enforcement) {
        let c = MemoryConfig::default();
        (c.memory_management, c.enforcement)
    }

    #[test]
    fn hard_limits_restart_and_soft_limits_warn() {
        let (m, mut e) = config();
        e.enforce_hard_limits = true;
        assert_eq!(
            on_crossing(Level::LimitExceeded, &m, &e),
            (Action::Restart, true)
        );
        e.enforce_hard_limits = false;
        e.soft_limit_warnings = true;
        assert_eq!(
            on_crossing(Level::LimitExceeded, &m, &e),
            (Action::None, true)
        );
        e.soft_limit_warnings = false;
        assert_eq!(
            on_crossing(Level::LimitExceeded, &m, &e),
            (Action::None, false)
        );
    }

    #[test]
    fn quiet_limits_still_act() {
        let (m, mut e) = config();
        e.enforce_hard_limits = true;
        e.alert_on_limit_reached = false;
        assert_eq!(
            on_crossing(Level::LimitExceeded, &m, &e),
            (Action::Restart, false)
        );
        assert!(on_crossing(Level::Critical, &m, &e).1);
    }

    #[test]
    fn gc_hints_go_with_critical_crossings_only() {
        let (mut m, e) = config();
        m.garbage_collection_hint = true;
        assert_eq!(on_crossing(Level::Critical, &m, &e).0, Action::GcHint);
        assert_eq!(on_crossing(Level::Warning, &m, &e).0, Action::None);
        m.garbage_collection_hint = false;
        assert_eq!(on_crossing(Level::Critical, &m, &e).0, Action::None);
    }

    #[test]
    fn memory_management_off_detects_no_leak() {
        let (mut m, _) = config();
        assert!(detects_leaks(&m));
        m.enabled = false;
        assert!(!detects_leaks(&m), "enabled: false");
        m.enabled = true;
        m.memory_leak_detection = false;
        assert!(!detects_leaks(&m));
    }

    #[test]
    fn percentages_are_of_the_scope_whole_to_a_tenth() {
        assert_eq!(percent_of(3 << 30, 4 << 30), Some(75.0));
        assert_eq!(percent_of(1, 3), Some(33.3));
        assert_eq!(percent_of(5 << 30, 4 << 30), Some(125.0));
        assert_eq!(percent_of(1 << 20, 0), None, "no limit, no percentage");
    }

    #[test]
    fn leaks_restart_only_when_enforcement_allows() {
        let (_, mut e) = config();
        e.enforce_hard_limits = true;
        assert_eq!(on_leak(&e), Action::Restart);
        e.enabled = false;
        assert_eq!(on_leak(&e), Action::None);
    }

    #[test]
    fn critical_memory_scales_down_one_at_a_time_after_a_cooldown() {
        let c = MemoryConfig::default();
        let (m, mut a) = (c.memory_management, c.auto_scaling);
        assert!(scale_down_on(Level::Critical, &m, &a, None));
        assert!(scale_down_on(Level::LimitExceeded, &m, &a, None));
        assert!(!scale_down_on(Level::Warning, &m, &a, None));
        assert!(!scale_down_on(
            Level::Critical,
            &m,
            &a,
            Some(Duration::from_secs(29))
        ));
        assert!(scale_down_on(
            Level::Critical,
            &m,
            &a,
            Some(Duration::from_secs(30))
        ));
        a.aggressive_memory_scaling = true;
        assert!(scale_down_on(
            Level::Critical,
            &m,
            &a,
            Some(Duration::from_secs(10))
        ));
        let mut off = m.clone();
        off.auto_scale_on_memory = false;
        assert!(!scale_down_on(Level::Critical, &off, &a, None));
    }

    #[test]
    fn the_backstop_sits_slightly_above_the_limit() {
        assert_eq!(backstop(64 << 20), 80 << 20);
        assert_eq!(backstop(1 << 30), (1 << 30) + (1 << 30) / 10);
    }

    #[test]
    fn the_high_bound_sits_between_the_limit_and_the_backstop() {
        assert_eq!(high_bound(64 << 20), 72 << 20);
        assert_eq!(high_bound(1 << 30), (1 << 30) + (1 << 30) / 20);
        for limit in [0, 1, 4096, 64 << 20, 192 << 20, 1 << 40] {
            assert!(limit < high_bound(limit) || limit == 0, "{limit}");
            assert!(high_bound(limit) <= backstop(limit), "{limit}");
        }
    }
}
