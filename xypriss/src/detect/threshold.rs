//! Threshold alerts with hysteresis: one alert per crossing, never a storm.
//!
//! The kernel wakes xypriss the moment a worker's memory crosses one of its
//! thresholds, either way; this decides what that means for alerts. Going up
//! across a threshold raises its alert once. The alert stays raised while the
//! memory hovers around the threshold, and is only lifted (a recovery) when
//! the memory falls below the threshold less a margin. So a worker oscillating
//! across a line gets one alert, not one per oscillation. Pure: fed with the
//! worker's resident size, it returns what changed.

/// The alert levels, in the order of the thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Warning,
    Critical,
    LimitExceeded,
}

const LEVELS: [Level; 3] = [Level::Warning, Level::Critical, Level::LimitExceeded];

/// What an update changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Crossed `level`'s threshold going up.
    Raised { level: Level, threshold: u64 },
    /// Fell below `level`'s threshold less the margin.
    Recovered { level: Level, threshold: u64 },
}

/// One scope's alert state (a worker, the pool, the host).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alerts {
    /// How many levels are raised: 0 (none) to 3.
    raised: usize,
}

impl Alerts {
    /// The highest raised level, if any.
    pub fn highest(&self) -> Option<Level> {
        self.raised.checked_sub(1).map(|i| LEVELS[i])
    }

    /// Updates with `bytes` against `thresholds` (warning, critical, limit,
    /// ascending; 0 = unset, and an unset one stops the levels above it),
    /// lifting alerts only below `threshold × (1 − margin)`.
    pub fn update(&mut self, bytes: u64, thresholds: [u64; 3], margin: f64) -> Vec<Change> {
        let mut changes = Vec::new();
        // Up: every set threshold at or below the value, above those raised.
        while self.raised < LEVELS.len() {
            let threshold = thresholds[self.raised];
            if threshold == 0 || bytes < threshold {
                break;
            }
            changes.push(Change::Raised {
                level: LEVELS[self.raised],
                threshold,
            });
            self.raised += 1;
        }
        // Down: the highest raised level first, each with its margin.
        while self.raised > 0 {
            let threshold = thresholds[self.raised - 1];
            let floor = (threshold as f64 * (1.0 - margin.clamp(0.0, 1.0))) as u64;
            if threshold != 0 && bytes >= floor {
                break;
            }
            self.raised -= 1;
            changes.push(Change::Recovered {
                level: LEVELS[self.raised],
                threshold,
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: [u64; 3] = [800, 950, 1000];

    #[test]
    fn one_alert_per_crossing_however_it_oscillates() {
        let mut a = Alerts::default();
        assert_eq!(
            a.update(810, T, 0.05),
            [Change::Raised {
                level: Level::Warning,
                threshold: 800
            }]
        );
        for bytes in [790, 805, 770, 810, 761] {
            assert!(a.update(bytes, T, 0.05).is_empty(), "at {bytes}");
        }
        assert_eq!(
            a.update(759, T, 0.05),
            [Change::Recovered {
                level: Level::Warning,
                threshold: 800
            }]
        );
        assert!(a.update(790, T, 0.05).is_empty());
        assert_eq!(a.update(800, T, 0.05).len(), 1);
    }

    #[test]
    fn a_jump_raises_every_level_it_crosses_in_order() {
        let mut a = Alerts::default();
        let changes = a.update(2000, T, 0.05);
        let levels: Vec<_> = changes
            .iter()
            .map(|c| match c {
                Change::Raised { level, .. } => *level,
                Change::Recovered { .. } => panic!("recovered"),
            })
            .collect();
        assert_eq!(levels, LEVELS);
        assert_eq!(a.highest(), Some(Level::LimitExceeded));
        // Straight down to nothing: recoveries from the top.
        let changes = a.update(0, T, 0.05);
        assert_eq!(changes.len(), 3);
        assert!(matches!(
            changes[0],
            Change::Recovered {
                level: Level::LimitExceeded,
                ..
            }
        ));
        assert_eq!(a.highest(), None);
    }

    #[test]
    fn unset_thresholds_never_fire() {
        let mut a = Alerts::default();
        assert!(a.update(u64::MAX, [0, 0, 0], 0.05).is_empty());
        assert_eq!(a.update(900, [800, 0, 0], 0.05).len(), 1);
        assert!(a.update(u64::MAX, [800, 0, 0], 0.05).is_empty());
    }
}
