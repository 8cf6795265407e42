//! The restart throttle: how long to wait before restarting a crashed worker,
//! and when to stop trying.
//!
//! Delays grow geometrically from `initial` by `factor`, up to `max`. A worker
//! that ran for `reset_after` before it crashed was healthy: its count of
//! quick failures starts again. After `max_quick_failures` quick failures in
//! a row the worker is given up on (errored), so a crash loop cannot burn the
//! machine, and the rest of the pool keeps serving. Pure: the caller measures
//! the uptime and keeps the timers.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    pub reset_after: Duration,
    pub max_quick_failures: u32,
}

impl Default for Policy {
    /// 100 ms, ×1.5, at most 15 s; reset after 30 s up; errored after 10 quick failures.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 1.5,
            max: Duration::from_secs(15),
            reset_after: Duration::from_secs(30),
            max_quick_failures: 10,
        }
    }
}

/// What to do about a worker that exited when it was not asked to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Restart { after: Duration },
    GiveUp { failures: u32 },
}

/// One worker's run of quick failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures(pub u32);

impl Failures {
    /// Records a crash after `uptime`, and decides.
    pub fn crashed(&mut self, policy: &Policy, uptime: Duration) -> Decision {
        if uptime >= policy.reset_after {
            self.0 = 0;
        }
        self.0 += 1;
        if self.0 > policy.max_quick_failures {
            return Decision::GiveUp { failures: self.0 };
        }
        let exponent = i32::try_from(self.0 - 1).unwrap_or(i32::MAX);
        let delay = policy.initial.as_secs_f64() * policy.factor.powi(exponent);
        let after = Duration::try_from_secs_f64(delay)
            .unwrap_or(policy.max)
            .min(policy.max);
        Decision::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(policy: &Policy, n: usize) -> Vec<Duration> {
        let mut failures = Failures::default();
        (0..n)
            .map(|_| match failures.crashed(policy, Duration::ZERO) {
                Decision::Restart { after } => after,
                Decision::GiveUp { .. } => Duration::MAX,
            })
            .collect()
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap() {
        let policy = Policy {
            max_quick_failures: 100,
            ..Policy::default()
        };
        let d = delays(&policy, 20);
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[1], Duration::from_millis(150));
        assert_eq!(d[2], Duration::from_millis(225));
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*d.last().unwrap(), Duration::from_secs(15));
    }

    #[test]
    fn healthy_uptime_resets_the_count() {
        let policy = Policy::default();
        let mut failures = Failures::default();
        for _ in 0..5 {
            failures.crashed(&policy, Duration::from_secs(1));
        }
        assert_eq!(
            failures.crashed(&policy, Duration::from_secs(31)),
            Decision::Restart {
                after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn too_many_quick_failures_give_up() {
        let policy = Policy {
            max_quick_failures: 3,
            ..Policy::default()
        };
        let mut failures = Failures::default();
        for _ in 0..3 {
            assert!(matches!(
                failures.crashed(&policy, Duration::ZERO),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(
            failures.crashed(&policy, Duration::ZERO),
            Decision::GiveUp { failures: 4 }
        );
    }
}
