//! Memory recommendations: XyPriss's `getMemoryRecommendations()` and
//! `getOptimalWorkerCountForMemory()`, computed from what the workers were
//! observed to use, not guessed.
//!
//! The pool fits as many workers as its memory budget holds at the workers'
//! observed p95 resident size: the budget is `maxTotalMemory`, or what the
//! host (or cgroup) has available less `memoryReservation` plus what the pool
//! already uses, whichever is smaller; always within `minWorkers` and
//! `maxWorkers`. Pure: the caller gathers the observations.

use serde::Serialize;

/// What the recommendations are computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Resident bytes of each live worker, latest (any order).
    pub worker_rss: Vec<u64>,
    /// Bytes the host (or this process's cgroup) has available now.
    pub available: Option<u64>,
    /// `maxTotalMemory`.
    pub max_total_memory: u64,
    /// `memoryReservation`.
    pub memory_reservation: u64,
    /// `maxMemoryPerWorker`.
    pub max_memory_per_worker: u64,
    pub min_workers: u32,
    pub max_workers: u32,
    /// Whether low-memory mode is on already.
    pub low_memory_mode: bool,
}

/// `getMemoryRecommendations()`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendations {
    pub recommendations: Vec<String>,
    pub suggested_worker_count: u32,
    pub can_enable_low_memory_mode: bool,
}

/// The p95 of `values` (nearest rank); `None` when empty.
pub fn p95(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() as f64 * 0.95).ceil() as usize;
    sorted.get(rank.checked_sub(1)?).copied()
}

/// The memory the pool may use: `maxTotalMemory`, or less when the machine
/// has less to give.
fn budget(o: &Observed) -> u64 {
    let in_use: u64 = o.worker_rss.iter().sum();
    match o.available {
        Some(available) => o
            .max_total_memory
            .min((available + in_use).saturating_sub(o.memory_reservation)),
        None => o.max_total_memory,
    }
}

/// `getOptimalWorkerCountForMemory()`: how many workers fit the budget at
/// the observed p95 worker size (at `maxMemoryPerWorker` before any is seen).
pub fn optimal_worker_count(o: &Observed) -> u32 {
    let per_worker = p95(&o.worker_rss)
        .filter(|&b| b > 0)
        .unwrap_or(o.max_memory_per_worker)
        .max(1);
    let fits = (budget(o) / per_worker).min(u64::from(u32::MAX)) as u32;
    fits.clamp(o.min_workers, o.max_workers.max(o.min_workers))
}

/// The pool's memory with `extra` more workers of the observed p95 size, in
/// percent of its budget.
pub fn memory_share(o: &Observed, extra: u32) -> f64 {
    let in_use: u64 = o.worker_rss.iter().sum();
    let per_worker = p95(&o.worker_rss).unwrap_or(o.max_memory_per_worker);
    let projected = in_use.saturating_add(per_worker.saturating_mul(u64::from(extra)));
    projected as f64 * 100.0 / budget(o).max(1) as f64
}

/// `getMemoryRecommendations()`.
pub fn recommendations(o: &Observed) -> Recommendations {
    let suggested = optimal_worker_count(o);
    let current = u32::try_from(o.worker_rss.len()).unwrap_or(u32::MAX);
    let mut advice = Vec::new();
    if let Some(p95) = p95(&o.worker_rss) {
        if p95 > o.max_memory_per_worker {
            advice.push(format!(
                "workers use up to {} MiB (p95), over maxMemoryPerWorker {} MiB: raise the limit or find what grows",
                p95 >> 20,
                o.max_memory_per_worker >> 20
            ));
        } else if p95 < o.max_memory_per_worker / 4 {
            advice.push(format!(
                "workers use {} MiB (p95), under a quarter of maxMemoryPerWorker {} MiB: a lower limit would catch runaways sooner",
                p95 >> 20,
                o.max_memory_per_worker >> 20
            ));
        }
    }
    if suggested < current {
        advice.push(format!(
            "{current} workers do not fit the memory budget of {} MiB at their observed size: {suggested} would",
            budget(o) >> 20
        ));
    } else if suggested > current {
        advice.push(format!(
            "the memory budget of {} MiB fits {suggested} workers at their observed size; {current} run",
            budget(o) >> 20
        ));
    }
    let tight = o
        .available
        .is_some_and(|a| a < o.memory_reservation.saturating_mul(2));
    if tight && !o.low_memory_mode {
        advice
            .push("memory available is under twice memoryReservation: enable lowMemoryMode".into());
    }
    Recommendations {
        recommendations: advice,
        suggested_worker_count: suggested,
        can_enable_low_memory_mode: !o.low_memory_mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn observed(workers: &[u64]) -> Observed {
        Observed {
            worker_rss: workers.iter().map(|w| w * MIB).collect(),
            available: Some(8192 * MIB),
            max_total_memory: 4096 * MIB,
            memory_reservation: 1024 * MIB,
            max_memory_per_worker: 512 * MIB,
            min_workers: 1,
            max_workers: 64,
            low_memory_mode: false,
        }
    }

    #[test]
    fn memory_share_counts_the_extra_workers_at_p95() {
        // 4 × 256 MiB of a 4 GiB budget: 25 %; one more: 31.25 %.
        let o = observed(&[256, 256, 256, 256]);
        assert_eq!(memory_share(&o, 0), 25.0);
        assert_eq!(memory_share(&o, 1), 31.25);
    }

    #[test]
    fn the_pool_fits_its_budget_at_the_observed_p95() {
        // 4 GiB at 200 MiB (p95 of these) → 20 workers.
        let o = observed(&[100, 150, 200, 120]);
        assert_eq!(optimal_worker_count(&o), 20);
        // The host has less: (1 GiB available + 570 MiB in use − 1 GiB) / 200 MiB.
        let tight = Observed {
            available: Some(1024 * MIB),
            ..o
        };
        assert_eq!(optimal_worker_count(&tight), 2);
    }

    #[test]
    fn bounds_and_no_observations() {
        let none = observed(&[]);
        assert_eq!(optimal_worker_count(&none), 8, "4 GiB at the 512 MiB limit");
        let capped = Observed {
            max_workers: 3,
            ..observed(&[10])
        };
        assert_eq!(optimal_worker_count(&capped), 3);
        let starved = Observed {
            available: Some(0),
            min_workers: 2,
            ..observed(&[100])
        };
        assert_eq!(optimal_worker_count(&starved), 2, "never below minWorkers");
    }

    #[test]
    fn recommendations_say_why() {
        let r = recommendations(&observed(&[600, 700]));
        assert_eq!(r.suggested_worker_count, 5);
        assert!(
            r.recommendations[0].contains("over maxMemoryPerWorker"),
            "{r:?}"
        );
        assert!(
            r.recommendations
                .iter()
                .any(|a| a.contains("fits 5 workers")),
            "{r:?}"
        );
        assert!(r.can_enable_low_memory_mode);
        let low = recommendations(&Observed {
            available: Some(512 * MIB),
            ..observed(&[100])
        });
        assert!(
            low.recommendations
                .iter()
                .any(|a| a.contains("lowMemoryMode")),
            "{low:?}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(
            json["suggestedWorkerCount"].is_u64() && json["canEnableLowMemoryMode"].is_boolean()
        );
    }
}
