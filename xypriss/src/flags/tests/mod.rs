//! The configuration's tests, read as its specification: here the
//! reference's examples and the helpers; every error's wording and place
//! in [`errors`], the flags beside the file and the docs' table in
//! [`command_line`], and properties over generated input in [`properties`].

mod command_line;
mod errors;
mod properties;

use std::{
    fs::OpenOptions,
    sync::atomic::{AtomicUsize, Ordering},
};

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{CommandFactory as _, Parser};
use proptest::prelude::*;
use serde_json::Value as Json;
use xypriss_ebpf::MAX_WORKERS;

use super::{
    ConfigError, ConfigFlags, RunFlags,
    defs::{self, Value},
    file::{self, sections},
    merge,
};
use crate::settings::{
    AutoScaling, Enforcement, MemoryConfig, MemoryManagement, Options, PerformanceOptimization,
    ScaleThreshold, WorkerCount,
};

/// The reference's "Basic Memory Management" example, as JSON: keys
/// quoted, comments and trailing commas dropped, values as written.
const BASIC: &str = r#"{
        "cluster": {
            "enabled": true,
            "config": {
                "workers": "auto",
                "resources": {
                    "maxMemoryPerWorker": "512MB",
                    "memoryManagement": {
                        "enabled": true,
                        "maxTotalMemory": "4GB",
                        "memoryCheckInterval": 30000,
                        "memoryWarningThreshold": 80,
                        "memoryCriticalThreshold": 95,
                        "autoScaleOnMemory": true,
                        "memoryLeakDetection": true,
                        "lowMemoryMode": false,
                        "memoryReservation": "1GB"
                    }
                }
            }
        }
    }"#;

/// The reference's "Advanced Memory Configuration" example's
/// `cluster.config`, as JSON.
const ADVANCED_CONFIG: &str = r#"{
        "workers": 4,
        "resources": {
            "maxMemoryPerWorker": "256MB",
            "memoryManagement": {
                "enabled": true,
                "maxTotalMemory": "2GB",
                "memoryCheckInterval": 15000,
                "memoryWarningThreshold": 70,
                "memoryCriticalThreshold": 85,
                "autoScaleOnMemory": true,
                "memoryLeakDetection": true,
                "garbageCollectionHint": true,
                "lowMemoryMode": true,
                "memoryReservation": "512MB",
                "swapUsageLimit": 5
            },
            "performanceOptimization": {
                "enabled": true,
                "lowMemoryMode": true,
                "reducedLogging": true,
                "compactMetrics": true,
                "lazyWorkerInit": true,
                "workerPooling": true,
                "memoryPooling": true,
                "disableDebugFeatures": true,
                "minimalFootprint": true,
                "efficientDataStructures": true
            },
            "enforcement": {
                "enabled": true,
                "enforceHardLimits": false,
                "softLimitWarnings": true,
                "gracefulDegradation": true,
                "resourceThrottling": true,
                "alertOnLimitReached": true
            }
        },
        "autoScaling": {
            "enabled": true,
            "minWorkers": 1,
            "maxWorkers": 6,
            "memoryBasedScaling": true,
            "aggressiveMemoryScaling": true,
            "scaleDownThreshold": {
                "memory": 30
            },
            "scaleUpThreshold": {
                "memory": 80
            }
        }
    }"#;

/// The reference's "For Low Memory Environments" example, as JSON.
const LOW_MEMORY: &str = r#"{
        "cluster": {
            "enabled": true,
            "config": {
                "workers": 2,
                "resources": {
                    "maxMemoryPerWorker": "256MB",
                    "memoryManagement": {
                        "enabled": true,
                        "maxTotalMemory": "1.5GB",
                        "memoryWarningThreshold": 60,
                        "memoryCriticalThreshold": 75,
                        "lowMemoryMode": true,
                        "memoryReservation": "512MB"
                    },
                    "performanceOptimization": {
                        "enabled": true,
                        "lowMemoryMode": true,
                        "reducedLogging": true,
                        "compactMetrics": true,
                        "minimalFootprint": true,
                        "disableDebugFeatures": true
                    }
                }
            }
        }
    }"#;

/// The reference's "Start Conservative" snippet: its keys are not where
/// the options live.
const CONSERVATIVE: &str = r#"{
        "maxMemoryPerWorker": "256MB",
        "memoryWarningThreshold": 70,
        "memoryCriticalThreshold": 85
    }"#;

const FILE: &str = "app.json";

/// The memory flags alone, as `run` holds them.
#[derive(Parser, Debug)]
struct Alone {
    #[command(flatten)]
    config: ConfigFlags,
}

fn flags(args: &[&str]) -> Result<ConfigFlags, clap::Error> {
    Alone::try_parse_from(std::iter::once("xypriss").chain(args.iter().copied())).map(|a| a.config)
}

/// The options from `json` (as the file app.json) and the flags `args`.
fn load_with(json: &str, args: &[&str]) -> Result<Options, ConfigError> {
    let flags = flags(args).unwrap();
    merge::resolve(Some((Path::new(FILE), json.as_bytes())), &flags.given)
        .map(|resolved| resolved.options)
}

fn load(json: &str) -> Result<Options, ConfigError> {
    load_with(json, &[])
}

/// The options from the file `path` (read as `run` reads it) and `args`.
fn resolve(path: Option<&Path>, args: &[&str]) -> Result<Options, ConfigError> {
    let flags = flags(args).unwrap();
    let bytes = path.map(file::read_capped).transpose()?;
    merge::resolve(path.zip(bytes.as_deref()), &flags.given).map(|resolved| resolved.options)
}

fn error(json: &str) -> String {
    match load(json) {
        Ok(config) => panic!("accepted {json}: {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// `{"resources": {"memoryManagement": {<fields>}}}`.
fn memory_management(fields: &str) -> String {
    format!(r#"{{"resources": {{"memoryManagement": {{{fields}}}}}}}"#)
}

fn outer(config: &str) -> String {
    format!(r#"{{"cluster": {{"enabled": true, "config": {config}}}}}"#)
}

/// A file under the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("xypriss-config-{}-{n}-{name}", std::process::id())))
    }

    fn with(name: &str, contents: &[u8]) -> Self {
        let file = Self::new(name);
        std::fs::write(&file.0, contents).unwrap();
        file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_basic_example_is_the_defaults() {
    let file = TempFile::with("basic.json", BASIC.as_bytes());
    let options = resolve(Some(&file.0), &[]).unwrap();
    assert_eq!(options, Options::default());
    assert_eq!(options.workers, WorkerCount::Auto);
    let config = options.memory;
    assert_eq!(config.max_memory_per_worker, 512 << 20);
    assert_eq!(config.memory_management.max_total_memory, 4 << 30);
    assert_eq!(
        config.memory_management.memory_check_interval,
        Duration::from_secs(30)
    );
    assert_eq!(config.memory_management.memory_reservation, 1 << 30);
}

#[test]
fn the_advanced_example_reads_in_both_shapes() {
    let inner = load(ADVANCED_CONFIG).unwrap();
    let whole = load(&outer(ADVANCED_CONFIG)).unwrap();
    assert_eq!(inner, whole);
    let expected = MemoryConfig {
        max_memory_per_worker: 256 << 20,
        memory_management: MemoryManagement {
            enabled: true,
            max_total_memory: 2 << 30,
            memory_check_interval: Duration::from_secs(15),
            memory_warning_threshold: 70.0,
            memory_critical_threshold: 85.0,
            auto_scale_on_memory: true,
            memory_leak_detection: true,
            garbage_collection_hint: true,
            low_memory_mode: true,
            memory_reservation: 512 << 20,
            swap_usage_limit: 5.0,
        },
        performance_optimization: PerformanceOptimization {
            enabled: true,
            low_memory_mode: true,
            reduced_logging: true,
            compact_metrics: true,
            lazy_worker_init: true,
            worker_pooling: true,
            memory_pooling: true,
            disable_debug_features: true,
            minimal_footprint: true,
            efficient_data_structures: true,
        },
        enforcement: Enforcement {
            enabled: true,
            enforce_hard_limits: false,
            soft_limit_warnings: true,
            graceful_degradation: true,
            resource_throttling: true,
            alert_on_limit_reached: true,
        },
        auto_scaling: AutoScaling {
            enabled: true,
            memory_based_scaling: true,
            aggressive_memory_scaling: true,
            scale_down_threshold: ScaleThreshold {
                memory: 30.0,
                cpu: 30.0,
            },
            scale_up_threshold: ScaleThreshold {
                memory: 80.0,
                cpu: 80.0,
            },
        },
    };
    assert_eq!(
        inner,
        Options {
            workers: WorkerCount::Fixed(4),
            min_workers: 1,
            max_workers: 6,
            memory: expected,
        }
    );
}

#[test]
fn the_low_memory_example_reads() {
    let options = load(LOW_MEMORY).unwrap();
    assert_eq!(options.workers, WorkerCount::Fixed(2));
    let config = options.memory;
    assert_eq!(config.memory_management.max_total_memory, 3 << 29);
    assert_eq!(config.memory_management.memory_warning_threshold, 60.0);
    assert!(config.performance_optimization.minimal_footprint);
    assert!(!config.performance_optimization.worker_pooling);
}

#[test]
fn the_conservative_snippet_is_told_where_its_keys_belong() {
    assert_eq!(
        error(CONSERVATIVE),
        "app.json:2:28: maxMemoryPerWorker: unknown key; `maxMemoryPerWorker` belongs in resources"
    );
}

#[test]
fn an_empty_object_and_an_empty_cluster_are_the_defaults() {
    assert_eq!(load("{}").unwrap(), Options::default());
    assert_eq!(
        load(r#"{"cluster": {"enabled": true}}"#).unwrap(),
        Options::default()
    );
    assert_eq!(load(r#"{"workers": null}"#).unwrap(), Options::default());
}
