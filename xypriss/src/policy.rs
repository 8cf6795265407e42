//! Policy: what xypriss does about what the detectors found. Pure: it reads
//! the configuration's `enforcement` and `memoryManagement` blocks and returns
//! decisions; the controller carries them out (the only side effects).

use std::time::Duration;

use crate::{
    config::{AutoScaling, Enforcement, MemoryManagement},
    detect::threshold::Level,
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

/// PSI's `some avg10` (percent) from the text of /proc/pressure/memory.
pub fn psi_some_avg10(text: &str) -> Option<f64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?
        .parse()
        .ok()
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

/// The kernel-enforced backstop for a hard limit of `limit` bytes: slightly
/// above it, so the graceful restart wins unless the worker runs away.
pub fn backstop(limit: u64) -> u64 {
    limit + (limit / 10).max(16 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_mode_lowers_warning_and_critical_by_a_tenth_of_the_limit() {
        assert_eq!(tightened([800, 950, 1000]), [700, 850, 1000]);
        assert_eq!(tightened([0, 0, 0]), [0, 0, 0]);
        // Never below 1 % of the limit, and critical stays above warning.
        assert_eq!(tightened([50, 60, 1000]), [10, 11, 1000]);
    }

    #[test]
    fn psi_avg10_is_read_from_the_some_line() {
        let text = "some avg10=12.34 avg60=1.00 avg300=0.00 total=44306\n\
                    full avg10=3.00 avg60=0.00 avg300=0.00 total=11718\n";
        assert_eq!(psi_some_avg10(text), Some(12.34));
        assert_eq!(psi_some_avg10("full avg10=3.00\n"), None);
        assert_eq!(psi_some_avg10("some avg10=x\n"), None);
        assert_eq!(psi_some_avg10(""), None);
    }
    use crate::config::MemoryConfig;

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
}
