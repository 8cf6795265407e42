//! Over 600 lines: it is the specification of the file format
//! and its errors, read top to bottom; the code it tests is split by stage.
//!
//! The configuration's tests: the reference's examples, every error's
//! wording and place, the flags beside the file, and the docs' table.

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

#[test]
fn sizes_take_every_documented_form() {
    for (written, bytes) in [
        (r#""512MB""#, 512u64 << 20),
        (r#""1.5GB""#, 3 << 29),
        (r#""512 MB""#, 512 << 20),
        (r#""256MiB""#, 256 << 20),
        (r#""2TB""#, 2 << 40),
        (r#""4096kb""#, 4 << 20),
        ("1048576", 1 << 20),
        ("2097152.0", 2 << 20),
    ] {
        let config = load(&memory_management(&format!(
            r#""memoryReservation": {written}"#
        )))
        .unwrap_or_else(|e| panic!("{written}: {e}"));
        assert_eq!(
            config.memory.memory_management.memory_reservation, bytes,
            "{written}"
        );
    }
}

#[test]
fn bad_sizes_say_why_at_their_path() {
    let at = |value: &str| error(&memory_management(&format!(r#""maxTotalMemory": {value}"#)));
    assert_eq!(
        at(r#""-1MB""#),
        "app.json:1:61: resources.memoryManagement.maxTotalMemory: `-1MB` is negative: a size must be 0 or more"
    );
    assert!(at(r#""12 parsecs""#).ends_with(
        "resources.memoryManagement.maxTotalMemory: `parsecs` is not a size unit: use B, KB, MB, GB, TB (×1024) or KiB, MiB, GiB, TiB"
    ));
    assert!(at("-5").ends_with("-5 is negative: a size must be 0 or more"));
    assert!(at("1.5").ends_with(
        "1.5 is not a whole number of bytes; write a fraction with a unit, as in \"1.5GB\""
    ));
    assert!(at("true").ends_with(
        "resources.memoryManagement.maxTotalMemory: expected a size, as in \"512MB\" or a number of bytes, found `true`"
    ));
    assert!(at("1e400").contains("number out of range"));
}

#[test]
fn a_typo_gets_did_you_mean_with_its_path() {
    let json = outer(&memory_management(r#""memoryWarningTreshold": 70"#));
    let e = load(&json).unwrap_err();
    assert_eq!(
        e.path(),
        Some("cluster.config.resources.memoryManagement.memoryWarningTreshold")
    );
    assert_eq!(
        e.to_string(),
        "app.json:1:99: cluster.config.resources.memoryManagement.memoryWarningTreshold: \
         unknown key; did you mean `memoryWarningThreshold`?"
    );
    assert!(
        error(r#"{"autoScaling": {"max_workers": 4}}"#)
            .ends_with("autoScaling.max_workers: unknown key; did you mean `maxWorkers`?")
    );
}

#[test]
fn a_key_of_another_section_says_where_it_belongs() {
    assert!(
        error(r#"{"cluster": {"workers": 4}}"#)
            .ends_with("cluster.workers: unknown key; `workers` belongs in cluster.config")
    );
    assert!(error(r#"{"resources": {"swapUsageLimit": 4}}"#).ends_with(
        "resources.swapUsageLimit: unknown key; `swapUsageLimit` belongs in resources.memoryManagement"
    ));
}

#[test]
fn an_unknown_key_with_no_near_match_lists_the_keys() {
    assert_eq!(
        error(r#"{"autoScaling": {"scaleUpThreshold": {"disk": 90}}}"#),
        "app.json:1:44: autoScaling.scaleUpThreshold.disk: unknown key; the keys here are `memory`, `cpu`"
    );
    assert!(error(r#"{"database": {"port": 3000}}"#).ends_with(
        "database: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`"
    ));
}

/// Checks that `json` is refused, naming `path`, and ends with `message`.
#[track_caller]
fn refused(json: &str, path: &str, message: &str) {
    let e = load(json).unwrap_err();
    assert_eq!(e.path(), Some(path), "{e}");
    assert_eq!(e.to_string(), message);
}

#[test]
fn impossible_values_are_named_by_their_path() {
    let mm = "cluster.config.resources.memoryManagement";
    refused(
        &outer(&memory_management(
            r#""memoryWarningThreshold": 90, "memoryCriticalThreshold": 90"#,
        )),
        &format!("{mm}.memoryCriticalThreshold"),
        &format!(
            "{mm}.memoryCriticalThreshold = 90 (in app.json) must be above \
             {mm}.memoryWarningThreshold = 90 (in app.json)"
        ),
    );
    refused(
        &memory_management(r#""memoryWarningThreshold": 96"#),
        "resources.memoryManagement.memoryCriticalThreshold",
        "resources.memoryManagement.memoryCriticalThreshold = 95 (the default) must be above \
         resources.memoryManagement.memoryWarningThreshold = 96 (in app.json)",
    );
    for bad in ["0", "-5", "100.5", "1000"] {
        refused(
            &memory_management(&format!(r#""swapUsageLimit": {bad}"#)),
            "resources.memoryManagement.swapUsageLimit",
            &format!(
                "resources.memoryManagement.swapUsageLimit = {bad} (in app.json): \
                 must be a percentage above 0 and at most 100"
            ),
        );
    }
    refused(
        r#"{"autoScaling": {"scaleUpThreshold": {"cpu": 0}}}"#,
        "autoScaling.scaleUpThreshold.cpu",
        "autoScaling.scaleUpThreshold.cpu = 0 (in app.json): must be a percentage above 0 and at most 100",
    );
    refused(
        r#"{"autoScaling": {"scaleDownThreshold": {"memory": 90}}}"#,
        "autoScaling.scaleUpThreshold.memory",
        "autoScaling.scaleUpThreshold.memory = 80 (the default) must be above \
         autoScaling.scaleDownThreshold.memory = 90 (in app.json)",
    );
    refused(
        r#"{"autoScaling": {"minWorkers": 4, "maxWorkers": 2}}"#,
        "autoScaling.minWorkers",
        "autoScaling.minWorkers = 4 (in app.json) must be at most autoScaling.maxWorkers = 2 (in app.json)",
    );
    refused(
        r#"{"autoScaling": {"minWorkers": 0}}"#,
        "autoScaling.minWorkers",
        "autoScaling.minWorkers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        &outer(r#"{"autoScaling": {"maxWorkers": 0}}"#),
        "cluster.config.autoScaling.maxWorkers",
        "cluster.config.autoScaling.maxWorkers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        r#"{"workers": 0}"#,
        "workers",
        "workers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        r#"{"workers": 8, "autoScaling": {"maxWorkers": 6}}"#,
        "workers",
        "workers = 8 (in app.json) must be at most autoScaling.maxWorkers = 6 (in app.json)",
    );
    refused(
        r#"{"resources": {"maxMemoryPerWorker": "1GB", "memoryManagement": {"maxTotalMemory": "2GB"}},
            "autoScaling": {"minWorkers": 3}}"#,
        "resources.maxMemoryPerWorker",
        "resources.maxMemoryPerWorker = 1GiB (in app.json) times autoScaling.minWorkers = 3 (in app.json) \
         is 3GiB, more than resources.memoryManagement.maxTotalMemory = 2GiB (in app.json): \
         the smallest pool would not fit",
    );
    refused(
        &memory_management(r#""memoryCheckInterval": 0"#),
        "resources.memoryManagement.memoryCheckInterval",
        "resources.memoryManagement.memoryCheckInterval = 0ms (in app.json): must be more than 0 milliseconds",
    );
    refused(
        r#"{"resources": {"maxMemoryPerWorker": 1000}}"#,
        "resources.maxMemoryPerWorker",
        "resources.maxMemoryPerWorker = 1000B (in app.json): must be at least 1MiB",
    );
    refused(
        r#"{"cluster": {"enabled": false}}"#,
        "cluster.enabled",
        "cluster.enabled = false (in app.json): xypriss always runs a pool of workers; \
         remove the key or set it to true",
    );
    refused(
        r#"{"cluster": {"enabled": true}, "workers": 4}"#,
        "workers",
        "app.json: workers: the file holds both the createServer options (`cluster`) \
         and a cluster.config key; use one shape",
    );
}

#[test]
fn the_budget_check_follows_memory_management() {
    let json = r#"{"resources": {"maxMemoryPerWorker": "1GB", "memoryManagement": {"enabled": false, "maxTotalMemory": "2GB"}},
                   "autoScaling": {"minWorkers": 3}}"#;
    assert_eq!(load(json).unwrap().min_workers, 3);
}

#[test]
fn wrong_types_are_named_by_their_path() {
    for (json, message) in [
        (
            r#"{"workers": true}"#.to_string(),
            "app.json:1:17: workers: expected \"auto\" or a whole number of workers, found `true`",
        ),
        (
            r#"{"workers": -2}"#.to_string(),
            "app.json:1:15: workers: expected \"auto\" or a whole number of workers, found the number -2",
        ),
        (
            outer(&memory_management(r#""memoryCheckInterval": "30s""#)),
            "app.json:1:105: cluster.config.resources.memoryManagement.memoryCheckInterval: \
             expected a whole number of milliseconds, such as 30000, found the string \"30s\"",
        ),
        (
            memory_management(r#""enabled": "yes""#),
            "app.json:1:52: resources.memoryManagement.enabled: invalid type: string \"yes\", expected a boolean",
        ),
        (
            memory_management(r#""memoryWarningThreshold": "80 percent""#),
            "app.json:1:75: resources.memoryManagement.memoryWarningThreshold: \
             expected a percentage, as a number such as 80 or a string such as \"0.5%\", \
             found the string \"80 percent\"",
        ),
        (
            r#"{"resources": [1, 2]}"#.to_string(),
            "app.json:1:14: resources: invalid type: sequence, expected an object",
        ),
        (
            r#"{"autoScaling": {"minWorkers": 1.5}}"#.to_string(),
            "app.json:1:35: autoScaling.minWorkers: expected a number of workers (a whole number from 1), found the number 1.5",
        ),
        (
            r#"[{"workers": 4}]"#.to_string(),
            "app.json:1:1: the top level: invalid type: sequence, expected an object",
        ),
        (
            r#""auto""#.to_string(),
            "app.json:1:6: the top level: invalid type: string \"auto\", expected an object",
        ),
    ] {
        assert_eq!(error(&json), message, "{json}");
    }
}

#[test]
fn broken_files_get_a_clear_error() {
    let cut = &BASIC[..BASIC.len() / 2];
    assert_eq!(
        error(cut),
        "app.json:12:1: the file ends in the middle of the JSON: is it truncated?"
    );
    assert_eq!(
        error("{\"workers\": 4,}"),
        "app.json:1:15: not valid JSON: trailing comma"
    );
    assert_eq!(
        error("{\"workers\": 4} {}"),
        "app.json:1:16: not valid JSON after the JSON object: trailing characters"
    );
    assert_eq!(
        error(" \n "),
        "app.json:1:1: the file is empty; expected a JSON object"
    );
    assert_eq!(
        load("\u{feff}{\"workers\": 3}").unwrap().workers,
        WorkerCount::Fixed(3)
    );
}

#[test]
fn non_utf8_bytes_are_refused_with_their_place() {
    let bytes = b"{\n  \"workers\": \"au\xfftomatic\"\n}";
    let e = merge::resolve(Some((Path::new(FILE), bytes)), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "app.json:2:17: the file is not UTF-8 text; save it as UTF-8 JSON"
    );
}

#[test]
fn deeply_nested_junk_is_refused() {
    let deep = |open: &str, close: &str| format!("{}{}", open.repeat(10_000), close.repeat(10_000));
    assert_eq!(
        error(&deep("[", "]")),
        "app.json:1:1: the top level: invalid type: sequence, expected an object"
    );
    assert!(
        error(&format!(r#"{{"workers": {}}}"#, deep("[", "]")))
            .ends_with("nested more than 128 levels deep: not a configuration file")
    );
    assert!(
        error(&format!(
            r#"{{"resources": {{"maxMemoryPerWorker": {}}}}}"#,
            deep("{\"a\":", "}")
        ))
        .ends_with("nested more than 128 levels deep: not a configuration file")
    );
    assert!(
        error(&format!(r#"{{"junk": {}}}"#, deep("[", "]"))).ends_with(
            "junk: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`"
        )
    );
}

#[test]
fn a_huge_value_makes_a_short_error() {
    let huge = "x".repeat(100_000);
    for json in [
        memory_management(&format!(r#""enabled": "{huge}""#)),
        memory_management(&format!(r#""maxTotalMemory": "{huge}""#)),
    ] {
        let e = error(&json);
        assert!(e.chars().count() < 300 && e.ends_with("xxx…"), "{e}");
        assert!(e.contains("resources.memoryManagement."), "{e}");
    }
}

#[test]
fn a_file_over_the_cap_is_refused_unread() {
    let file = TempFile::new("huge.json");
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&file.0)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let e = resolve(Some(&file.0), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { len: Some(len), .. } if len == 100 << 20));
    assert_eq!(
        e.to_string(),
        format!(
            "--config {}: 100MiB is over the 1MiB limit for a configuration file; is it the right file?",
            file.0.display()
        )
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = resolve(Some(Path::new("/nonexistent/app.json")), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--config /nonexistent/app.json: No such file or directory (os error 2)"
    );
}

#[test]
fn flags_override_the_file() {
    let file = TempFile::with("advanced.json", outer(ADVANCED_CONFIG).as_bytes());
    let options = resolve(
        Some(&file.0),
        &[
            "--swap-usage-limit",
            "20",
            "--enforce-hard-limits",
            "true",
            "--auto-scaling",
            "false",
            "--memory-check-interval",
            "5s",
            "--workers",
            "6",
            "--memory-critical-threshold",
            "90",
            "--max-workers",
            "8",
        ],
    )
    .unwrap();
    let config = &options.memory;
    assert_eq!(config.memory_management.swap_usage_limit, 20.0);
    assert!(config.enforcement.enforce_hard_limits);
    assert!(!config.auto_scaling.enabled);
    assert_eq!(
        config.memory_management.memory_check_interval,
        Duration::from_secs(5)
    );
    assert_eq!(options.workers, WorkerCount::Fixed(6));
    assert_eq!(config.memory_management.memory_critical_threshold, 90.0);
    assert_eq!(options.max_workers, 8);
    // Untouched by flags: the file's.
    assert_eq!(config.memory_management.memory_warning_threshold, 70.0);
    assert_eq!(config.max_memory_per_worker, 256 << 20);
    assert!(config.performance_optimization.memory_pooling);
}

#[test]
fn a_flag_is_named_by_its_flag() {
    let json = outer(&memory_management(r#""memoryWarningThreshold": 80"#));
    let e = load_with(&json, &["--memory-critical-threshold", "70"]).unwrap_err();
    assert_eq!(e.path(), Some("--memory-critical-threshold"));
    assert_eq!(
        e.to_string(),
        "--memory-critical-threshold 70 must be above \
         cluster.config.resources.memoryManagement.memoryWarningThreshold = 80 (in app.json)"
    );
    assert_eq!(
        resolve(None, &["--max-total-memory", "1GB", "--min-workers", "4"])
            .unwrap_err()
            .to_string(),
        "resources.maxMemoryPerWorker = 512MiB (the default) times --min-workers 4 is 2GiB, \
         more than --max-total-memory 1GiB: the smallest pool would not fit"
    );
}

/// The run flags, which hold the memory flags.
#[derive(Parser, Debug)]
struct WithRun {
    #[command(flatten)]
    run: RunFlags,
}

#[derive(Parser, Debug)]
struct Alone {
    #[command(flatten)]
    config: ConfigFlags,
}

fn flags(args: &[&str]) -> Result<ConfigFlags, clap::Error> {
    Alone::try_parse_from(std::iter::once("xypriss").chain(args.iter().copied())).map(|a| a.config)
}

#[test]
fn flags_parse_and_negative_numbers_reach_the_checks() {
    let parsed = flags(&[
        "--enforce-hard-limits",
        "false",
        "--low-memory-mode",
        "yes",
        "--memory-check-interval",
        "15000",
        "--max-total-memory",
        "8 GB",
        "--scale-up-cpu-threshold",
        "90",
    ])
    .unwrap();
    assert_eq!(parsed.get(&defs::HARD_LIMITS), Some(Value::Bool(false)));
    assert_eq!(
        parsed.get(&defs::MM_LOW_MEMORY_MODE),
        Some(Value::Bool(true))
    );
    assert_eq!(
        parsed.get(&defs::CHECK_INTERVAL),
        Some(Value::Millis(Duration::from_secs(15)))
    );
    assert_eq!(
        parsed.get(&defs::MAX_TOTAL_MEMORY),
        Some(Value::Size(8 << 30))
    );
    assert_eq!(parsed.get(&defs::UP_CPU), Some(Value::Percent(90.0)));
    assert_eq!(parsed.get(&defs::AS_ENABLED), None);
    assert_eq!(
        flags(&["--memory-check-interval", "30s"])
            .unwrap()
            .get(&defs::CHECK_INTERVAL),
        Some(Value::Millis(Duration::from_secs(30)))
    );

    assert_eq!(
        resolve(None, &["--swap-usage-limit", "-5"])
            .unwrap_err()
            .to_string(),
        "--swap-usage-limit -5: must be a percentage above 0 and at most 100"
    );
    assert_eq!(
        resolve(None, &["--memory-check-interval", "0"])
            .unwrap_err()
            .to_string(),
        "--memory-check-interval 0ms: must be more than 0 milliseconds"
    );
    let e = flags(&["--max-total-memory", "-1MB"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--max-total-memory") && e.contains("is negative"),
        "{e}"
    );
    let e = flags(&["--memory-check-interval", "-5"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--memory-check-interval") && e.contains("not a duration"),
        "{e}"
    );
    let e = flags(&["--enforce-hard-limits"]).unwrap_err().to_string();
    assert!(e.contains("--enforce-hard-limits"), "{e}");
}

#[test]
fn memory_flags_sit_beside_the_run_flags() {
    WithRun::command().debug_assert();
    let parsed = WithRun::try_parse_from([
        "xypriss",
        "--config",
        "app.json",
        "--low-memory-mode",
        "true",
        "node",
        "app.js",
    ])
    .unwrap();
    assert_eq!(parsed.run.config.config, Some(PathBuf::from("app.json")));
    assert_eq!(
        parsed.run.config.get(&defs::MM_LOW_MEMORY_MODE),
        Some(Value::Bool(true))
    );
    assert_eq!(parsed.run.command, ["node", "app.js"]);
}

#[test]
fn every_option_has_one_flag_and_its_row_in_the_docs() {
    let run = WithRun::command();
    for opt in defs::ALL {
        assert_eq!(
            run.get_arguments()
                .filter(|a| a.get_long() == Some(opt.flag))
                .count(),
            1,
            "--{}",
            opt.flag
        );
        assert_eq!(
            defs::ALL.iter().filter(|o| o.path == opt.path).count(),
            1,
            "{} is declared twice",
            opt.path
        );
    }
    // The table in docs/configuration.md is made from the definitions:
    // between its markers, one row per option, in their order.
    let docs = include_str!("../../../docs/configuration.md");
    let table = docs
        .split_once(TABLE_START)
        .and_then(|(_, rest)| rest.split_once(TABLE_END))
        .map(|(table, _)| table.trim())
        .expect("docs/configuration.md has the table's markers");
    let rows: Vec<String> = defs::ALL.iter().map(defs::Opt::doc_row).collect();
    let expected = format!("{TABLE_HEAD}\n{}", rows.join("\n"));
    assert!(
        table == expected,
        "docs/configuration.md's table is not the definitions'; put this between its markers:\n{expected}"
    );
}

const TABLE_START: &str = "<!-- options: made from xypriss/src/flags/defs.rs; the test every_option_has_one_flag_and_its_row_in_the_docs checks it -->";
const TABLE_END: &str = "<!-- end of options -->";
const TABLE_HEAD: &str =
    "| JSON path | Flag | Default | What it does in xypriss |\n| --- | --- | --- | --- |";

#[test]
fn the_documented_defaults_are_the_defaults() {
    let defaults = Options::default();
    for opt in defs::ALL {
        assert_eq!(
            opt.slot.parse_flag(opt.default),
            Ok(opt.slot.get(&defaults)),
            "{}",
            opt.path
        );
    }
}

/// JSON values shaped like configs: the real keys (and a few others) at
/// every level, any kind of value.
fn config_like() -> impl Strategy<Value = Json> {
    let mut keys: Vec<&'static str> = sections()
        .iter()
        .flat_map(|section| section.keys.iter().copied())
        .collect();
    keys.extend([
        "cluster",
        "config",
        "memoryManagement",
        "memoryWarningTreshold",
        "junk",
    ]);
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (0u64..200).prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        (-200.0f64..200.0).prop_map(Json::from),
        prop::sample::select(vec![
            "auto", "512MB", "1.5GB", "-1MB", "80%", "", "1e400 TB"
        ])
        .prop_map(Json::from),
        ".{0,6}".prop_map(Json::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
            prop::collection::vec((prop::sample::select(keys.clone()), inner), 0..5).prop_map(
                |entries| Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect()
                )
            ),
        ]
    })
}

/// Either a config whose checked invariants hold, or an error that names
/// the file and, when it has one, the path.
fn assert_sound(result: Result<Options, ConfigError>) {
    match result {
        Ok(o) => {
            let m = &o.memory.memory_management;
            assert!(m.memory_warning_threshold > 0.0 && m.memory_critical_threshold <= 100.0);
            assert!(m.memory_warning_threshold < m.memory_critical_threshold);
            assert!(!m.memory_check_interval.is_zero());
            assert!((1..=o.max_workers).contains(&o.min_workers));
            assert!(o.max_workers <= MAX_WORKERS);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(FILE), "{message}");
            if let Some(path) = e.path() {
                assert!(message.contains(path), "{message}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        assert_sound(merge::resolve(Some((Path::new(FILE), &bytes)), &[]).map(|r| r.options));
    }

    #[test]
    fn damaged_examples_never_panic(cut in 0..ADVANCED_CONFIG.len(), at in 0..ADVANCED_CONFIG.len(), byte in any::<u8>()) {
        let mut bytes = ADVANCED_CONFIG.as_bytes()[..cut].to_vec();
        if let Some(b) = bytes.get_mut(at) {
            *b = byte;
        }
        assert_sound(merge::resolve(Some((Path::new(FILE), &bytes)), &[]).map(|r| r.options));
    }

    #[test]
    fn arbitrary_json_never_panics(value in config_like(), wrap in any::<bool>()) {
        let json = if wrap { outer(&value.to_string()) } else { value.to_string() };
        assert_sound(load(&json));
    }
}

#[test]
fn a_fraction_for_a_percentage_is_refused_with_what_it_may_mean() {
    let e = error(&memory_management(r#""memoryWarningThreshold": 0.8"#));
    assert!(
        e.starts_with("app.json:1:66: resources.memoryManagement.memoryWarningThreshold: ")
            && e.contains("write 80 for 80%")
            && e.contains(r#""0.8%""#),
        "{e}"
    );
    let options = load(&memory_management(r#""memoryWarningThreshold": "0.8%""#)).unwrap();
    assert_eq!(
        options.memory.memory_management.memory_warning_threshold,
        0.8
    );
    let options = load(&memory_management(r#""swapUsageLimit": "5%""#)).unwrap();
    assert_eq!(options.memory.memory_management.swap_usage_limit, 5.0);
    // 1 and over are percentages as they are.
    assert_eq!(
        load(&memory_management(r#""swapUsageLimit": 1"#))
            .unwrap()
            .memory
            .memory_management
            .swap_usage_limit,
        1.0
    );
    let e = flags(&["--memory-warning-threshold", "0.8"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--memory-warning-threshold") && e.contains("write 80 for 80%"),
        "{e}"
    );
    assert_eq!(
        flags(&["--scale-down-cpu-threshold", "0.5%"])
            .unwrap()
            .get(&defs::DOWN_CPU),
        Some(Value::Percent(0.5))
    );
}

/// A real XyPriss server's options: `cluster` beside XyPriss's own sections.
const SERVER: &str = r#"{
    "env": "production",
    "server": { "port": 3000, "host": "0.0.0.0", "autoPortSwitch": { "enabled": true } },
    "security": { "enabled": true, "cors": true },
    "cache": { "strategy": "memory", "maxSize": 104857600 },
    "logging": { "level": "info" },
    "cluster": {
        "enabled": true,
        "config": { "workers": 2, "resources": { "maxMemoryPerWorker": "256MB" } }
    }
}"#;

#[test]
fn the_other_sections_of_a_server_config_are_ignored_and_named() {
    let resolved = merge::resolve(Some((Path::new(FILE), SERVER.as_bytes())), &[]).unwrap();
    assert_eq!(
        resolved.ignored,
        ["env", "server", "security", "cache", "logging"]
    );
    assert_eq!(resolved.options.workers, WorkerCount::Fixed(2));
    assert_eq!(resolved.options.memory.max_memory_per_worker, 256 << 20);
    // Inside `cluster`, an unknown key is still refused.
    assert_eq!(
        error(r#"{"server": {}, "cluster": {"enabled": true, "strategy": "round-robin"}}"#),
        "app.json:1:54: cluster.strategy: unknown key; the keys here are `enabled`, `config`"
    );
    // So is a misspelt section.
    assert!(
        error(r#"{"servr": {"port": 3000}}"#)
            .ends_with("servr: unknown key; did you mean `server`?")
    );
}
