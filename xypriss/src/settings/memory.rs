//! The memory options of XyPriss's cluster configuration, resolved: every
//! option has a value, sizes are in bytes, durations are [`Duration`]s,
//! percentages are 0–100.
//!
//! The fields mirror the JSON (in snake_case), without its `resources` level.
//! The pool's size and bounds are not here: they are the pool's settings
//! ([`super::Options`], then [`super::RunConfig`]), held once.

use std::time::Duration;

/// `resources` and `autoScaling`, as the controller reads them.
/// [`MemoryConfig::default`] holds the defaults listed in
/// `docs/configuration.md` (a test in `flags` keeps the two equal).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryConfig {
    /// `resources.maxMemoryPerWorker`, in bytes.
    pub max_memory_per_worker: u64,
    /// `resources.memoryManagement`.
    pub memory_management: MemoryManagement,
    /// `resources.performanceOptimization`.
    pub performance_optimization: PerformanceOptimization,
    /// `resources.enforcement`.
    pub enforcement: Enforcement,
    /// `autoScaling`, but for its `minWorkers` and `maxWorkers`.
    pub auto_scaling: AutoScaling,
}

/// `resources.memoryManagement`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryManagement {
    pub enabled: bool,
    /// In bytes.
    pub max_total_memory: u64,
    /// Paces the slow periodic checks only; memory events never wait for it.
    pub memory_check_interval: Duration,
    /// Percent of `max_memory_per_worker`.
    pub memory_warning_threshold: f64,
    /// Percent of `max_memory_per_worker`; above the warning threshold.
    pub memory_critical_threshold: f64,
    pub auto_scale_on_memory: bool,
    pub memory_leak_detection: bool,
    pub garbage_collection_hint: bool,
    pub low_memory_mode: bool,
    /// In bytes.
    pub memory_reservation: u64,
    /// Percent of the host's swap in use: a host signal for low-memory mode,
    /// not a limit on the pool.
    pub swap_usage_limit: f64,
}

/// `resources.performanceOptimization`.
#[derive(Clone, Debug, PartialEq)]
pub struct PerformanceOptimization {
    pub enabled: bool,
    pub low_memory_mode: bool,
    pub reduced_logging: bool,
    pub compact_metrics: bool,
    pub lazy_worker_init: bool,
    /// A hint for the app (`XYPRISS_WORKER_POOLING`).
    pub worker_pooling: bool,
    /// A hint for the app (`XYPRISS_MEMORY_POOLING`).
    pub memory_pooling: bool,
    pub disable_debug_features: bool,
    pub minimal_footprint: bool,
    /// A hint for the app (`XYPRISS_EFFICIENT_DATA_STRUCTURES`).
    pub efficient_data_structures: bool,
}

/// `resources.enforcement`.
#[derive(Clone, Debug, PartialEq)]
pub struct Enforcement {
    pub enabled: bool,
    pub enforce_hard_limits: bool,
    pub soft_limit_warnings: bool,
    pub graceful_degradation: bool,
    pub resource_throttling: bool,
    pub alert_on_limit_reached: bool,
}

/// `autoScaling`, without the pool's bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoScaling {
    pub enabled: bool,
    pub memory_based_scaling: bool,
    pub aggressive_memory_scaling: bool,
    /// `scaleDownThreshold`: scale down below these.
    pub scale_down_threshold: ScaleThreshold,
    /// `scaleUpThreshold`: scale up above these.
    pub scale_up_threshold: ScaleThreshold,
}

/// A scaling threshold, in percent.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleThreshold {
    pub memory: f64,
    pub cpu: f64,
}

impl Default for MemoryConfig {
    /// The reference's first example where it gives a value, then XyPriss's
    /// own documented defaults, then ours (marked).
    fn default() -> Self {
        Self {
            max_memory_per_worker: 512 << 20,
            memory_management: MemoryManagement {
                enabled: true,
                max_total_memory: 4 << 30,
                memory_check_interval: Duration::from_secs(30),
                memory_warning_threshold: 80.0,
                memory_critical_threshold: 95.0,
                auto_scale_on_memory: true,
                memory_leak_detection: true,
                // XyPriss's default.
                garbage_collection_hint: false,
                low_memory_mode: false,
                memory_reservation: 1 << 30,
                // XyPriss's default.
                swap_usage_limit: 10.0,
            },
            // XyPriss enables the section; each optimization is ours to
            // leave off until asked for.
            performance_optimization: PerformanceOptimization {
                enabled: true,
                low_memory_mode: false,
                reduced_logging: false,
                compact_metrics: false,
                lazy_worker_init: false,
                worker_pooling: false,
                memory_pooling: false,
                disable_debug_features: false,
                minimal_footprint: false,
                efficient_data_structures: false,
            },
            // XyPriss enables the section; ours: warn and alert, never kill,
            // throttle or degrade unless asked.
            enforcement: Enforcement {
                enabled: true,
                enforce_hard_limits: false,
                soft_limit_warnings: true,
                graceful_degradation: false,
                resource_throttling: false,
                alert_on_limit_reached: true,
            },
            // Ours: a fixed pool; the scaling thresholds are the reference's
            // advanced example (memory) and the same for CPU.
            auto_scaling: AutoScaling {
                enabled: false,
                memory_based_scaling: true,
                aggressive_memory_scaling: false,
                scale_down_threshold: ScaleThreshold {
                    memory: 30.0,
                    cpu: 30.0,
                },
                scale_up_threshold: ScaleThreshold {
                    memory: 80.0,
                    cpu: 80.0,
                },
            },
        }
    }
}
