//! The memory configuration: XyPriss's cluster options, read from a JSON file
//! (`--config FILE`) and flags, merged and checked into one [`MemoryConfig`].
//!
//! Why a file in XyPriss's shape: xypriss's users configured memory in
//! XyPriss's `createServer({ cluster: { config } })` first. They can hand
//! xypriss those options as they are, the whole `createServer` object or just
//! its `cluster.config`, as JSON, and every name means what it meant there.
//! The reference is `xypriss-memory-management.md`; `docs/configuration.md`
//! says what each option does in xypriss.
//!
//! Why so strict: a misspelt key that is silently ignored leaves a memory
//! limit off while the user believes it is on. So an unknown key, a wrong type
//! and an impossible value (thresholds out of order, a pool that cannot fit its
//! memory budget) are each an error that names where the user wrote it: the
//! JSON path in the file, or the flag. A misspelt key gets a "did you mean".
//!
//! Entry points, for the controller:
//! - [`MemoryFlags`]: `#[command(flatten)]` into the run flags; one flag per
//!   option, each `Option` so "not given" keeps the file's value.
//! - [`Overrides`]: the options that `cli.rs` already has flags for.
//! - [`resolve`]: defaults, then the file, then the flags; then checks the
//!   whole and returns the [`MemoryConfig`] the controller trusts.
//!
//! ```text
//! // in cli::RunFlags
//! #[command(flatten)]
//! pub memory: config::MemoryFlags,
//! // in cli::resolve, with the existing flags made Option (a clap default
//! // would always override the file)
//! let memory = config::resolve(flags.memory, config::Overrides {
//!     workers: flags.workers,
//!     max_memory_per_worker: flags.max_memory_per_worker.map(|s| s.0),
//!     warning: flags.memory_warning_threshold,
//!     critical: flags.memory_critical_threshold,
//!     min_workers: flags.min_workers,
//!     max_workers: flags.max_workers,
//! })?;
//! ```
//!
//! The file is refused above [`MAX_FILE_BYTES`] before it is read, must be
//! UTF-8, and serde_json's recursion limit (128 levels) bounds nesting.

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io::{self, Read as _},
    marker::PhantomData,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, builder::BoolishValueParser};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned, MapAccess, Visitor, value::MapAccessDeserializer},
};
use serde_json::Value;
use serde_path_to_error::Segment;
use xypriss_ebpf::MAX_WORKERS;

use crate::{cli::WorkerCount, size::Size};

/// The largest configuration file read: a real one is a few KiB. A larger file
/// is refused from its size before anything is read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The memory options, resolved: every option has a value, sizes are in
/// bytes, durations are [`Duration`]s, percentages are 0–100.
///
/// The fields mirror the JSON (in snake_case), without its `resources` level.
/// [`MemoryConfig::default`] holds the defaults listed in
/// `docs/configuration.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryConfig {
    /// `workers`: the pool's size, or `auto`.
    pub workers: WorkerCount,
    /// `resources.maxMemoryPerWorker`, in bytes.
    pub max_memory_per_worker: u64,
    /// `resources.memoryManagement`.
    pub memory_management: MemoryManagement,
    /// `resources.performanceOptimization`.
    pub performance_optimization: PerformanceOptimization,
    /// `resources.enforcement`.
    pub enforcement: Enforcement,
    /// `autoScaling`.
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
    /// Percent of swap.
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
    pub worker_pooling: bool,
    pub memory_pooling: bool,
    pub disable_debug_features: bool,
    pub minimal_footprint: bool,
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

/// `autoScaling`.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoScaling {
    pub enabled: bool,
    pub min_workers: u32,
    pub max_workers: u32,
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
            workers: WorkerCount::Auto,
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
            // Ours: a fixed pool, bounded as `--min-workers`/`--max-workers`
            // are; the scaling thresholds are the reference's advanced example
            // (memory) and the same for CPU.
            auto_scaling: AutoScaling {
                enabled: false,
                min_workers: 1,
                max_workers: MAX_WORKERS,
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

/// One flag per option that `cli.rs` does not already have; see [`Overrides`]
/// for those. Booleans take a value (`--enforce-hard-limits true`), so a flag
/// can turn an option off as well as on.
#[derive(Args, Clone, Debug, Default)]
#[command(
    next_help_heading = "Memory options (XyPriss's cluster.config; see docs/configuration.md)"
)]
pub struct MemoryFlags {
    /// Read memory options from this JSON file: XyPriss's createServer options or their
    /// cluster.config. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// memoryManagement.enabled: react to the pool's memory as a whole.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub memory_management: Option<bool>,

    /// memoryManagement.maxTotalMemory: the whole pool's memory budget (e.g. 4GB).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_total_memory: Option<Size>,

    /// memoryManagement.memoryCheckInterval: pace of the slow periodic checks (ms, or 30s).
    #[arg(long, value_name = "MS|DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
    pub memory_check_interval: Option<Duration>,

    /// memoryManagement.autoScaleOnMemory: remove a worker when the pool nears its budget.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub auto_scale_on_memory: Option<bool>,

    /// memoryManagement.memoryLeakDetection: report workers whose memory only grows.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub memory_leak_detection: Option<bool>,

    /// memoryManagement.garbageCollectionHint: ask a worker over its warning threshold to collect.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub garbage_collection_hint: Option<bool>,

    /// memoryManagement.lowMemoryMode: start the pool in low-memory mode.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub low_memory_mode: Option<bool>,

    /// memoryManagement.memoryReservation: host memory kept free for the system (e.g. 1GB).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_reservation: Option<Size>,

    /// memoryManagement.swapUsageLimit: the most of the host's swap the pool may use, in percent.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub swap_usage_limit: Option<f64>,

    /// performanceOptimization.enabled: apply the optimizations below.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub performance_optimization: Option<bool>,

    /// performanceOptimization.lowMemoryMode.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub performance_low_memory_mode: Option<bool>,

    /// performanceOptimization.reducedLogging.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub reduced_logging: Option<bool>,

    /// performanceOptimization.compactMetrics.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub compact_metrics: Option<bool>,

    /// performanceOptimization.lazyWorkerInit.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub lazy_worker_init: Option<bool>,

    /// performanceOptimization.workerPooling.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub worker_pooling: Option<bool>,

    /// performanceOptimization.memoryPooling.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub memory_pooling: Option<bool>,

    /// performanceOptimization.disableDebugFeatures.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub disable_debug_features: Option<bool>,

    /// performanceOptimization.minimalFootprint.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub minimal_footprint: Option<bool>,

    /// performanceOptimization.efficientDataStructures.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub efficient_data_structures: Option<bool>,

    /// enforcement.enabled: act on the limits as the options below say.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub enforcement: Option<bool>,

    /// enforcement.enforceHardLimits: a worker over --max-memory-per-worker is stopped and restarted.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub enforce_hard_limits: Option<bool>,

    /// enforcement.softLimitWarnings: log when a worker crosses its warning threshold.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub soft_limit_warnings: Option<bool>,

    /// enforcement.gracefulDegradation: replace a critical worker (new one ready first).
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub graceful_degradation: Option<bool>,

    /// enforcement.resourceThrottling: let the kernel reclaim from a worker at its limit.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub resource_throttling: Option<bool>,

    /// enforcement.alertOnLimitReached: an alert event when a limit is reached.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub alert_on_limit_reached: Option<bool>,

    /// autoScaling.enabled: grow and shrink the pool within --min-workers..--max-workers.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub auto_scaling: Option<bool>,

    /// autoScaling.memoryBasedScaling: scale on memory, not only CPU.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub memory_based_scaling: Option<bool>,

    /// autoScaling.aggressiveMemoryScaling: scale by more than one worker at a time.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new())]
    pub aggressive_memory_scaling: Option<bool>,

    /// autoScaling.scaleDownThreshold.memory: scale down below this memory use, in percent.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub scale_down_memory_threshold: Option<f64>,

    /// autoScaling.scaleDownThreshold.cpu: scale down below this CPU use, in percent.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub scale_down_cpu_threshold: Option<f64>,

    /// autoScaling.scaleUpThreshold.memory: scale up above this memory use, in percent.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub scale_up_memory_threshold: Option<f64>,

    /// autoScaling.scaleUpThreshold.cpu: scale up above this CPU use, in percent.
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub scale_up_cpu_threshold: Option<f64>,
}

/// The options whose flags live in `cli.rs` (same names): pass their values
/// here, `None` when the flag was not given. They override the file as the
/// [`MemoryFlags`] do, and are checked the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `--workers`.
    pub workers: Option<WorkerCount>,
    /// `--max-memory-per-worker`, in bytes.
    pub max_memory_per_worker: Option<u64>,
    /// `--memory-warning-threshold`.
    pub warning: Option<f64>,
    /// `--memory-critical-threshold`.
    pub critical: Option<f64>,
    /// `--min-workers`.
    pub min_workers: Option<u32>,
    /// `--max-workers`.
    pub max_workers: Option<u32>,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    Flag,
    File(PathBuf),
}

/// One option's value, named as the user gave it, for errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The JSON path as written in the file (`cluster.config.…` when the file
    /// is the whole createServer object), or the flag (`--…`).
    pub path: String,
    /// The value, as xypriss understood it.
    pub value: String,
    pub origin: Origin,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            path,
            value,
            origin,
        } = self;
        match origin {
            Origin::Flag => write!(f, "{path} {value}"),
            Origin::File(file) => write!(f, "{path} = {value} (in {})", file.display()),
            Origin::Default => write!(f, "{path} = {value} (the default)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {}: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("--config {}: {}", file.display(), too_large(*len))]
    TooLarge {
        file: PathBuf,
        /// The file's size, when it has one (not a pipe).
        len: Option<u64>,
    },
    #[error(
        "{}:{line}:{column}: the file is not UTF-8 text; save it as UTF-8 JSON",
        file.display()
    )]
    NotUtf8 {
        file: PathBuf,
        line: usize,
        column: usize,
    },
    /// Not JSON: truncated, a syntax error, nested too deeply, or empty.
    #[error("{}:{line}:{column}: {reason}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{}:{line}:{column}: {path}: unknown key; {hint}", file.display())]
    UnknownKey {
        file: PathBuf,
        path: String,
        line: usize,
        column: usize,
        /// "did you mean …", where it belongs, or the keys allowed here.
        hint: String,
    },
    /// A value of the wrong type, or that is not a value of its kind at all.
    #[error("{}:{line}:{column}: {path}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{}: {path}: the file holds both the createServer options (`cluster`) and a cluster.config key; use one shape",
        file.display()
    )]
    MixedShapes { file: PathBuf, path: String },
    /// A value that is impossible on its own.
    #[error("{setting}: {reason}")]
    Value { setting: Setting, reason: String },
    /// Two values in the wrong order.
    #[error("{setting} must be {relation} {other}")]
    Order {
        setting: Setting,
        relation: &'static str,
        /// Boxed, as in `OverTotal`, to keep the error small.
        other: Box<Setting>,
    },
    #[error(
        "{per_worker} times {min_workers} is {}, more than {total}: the smallest pool would not fit",
        Size(per_worker_bytes.saturating_mul(u64::from(*min_workers_count)))
    )]
    OverTotal {
        per_worker: Setting,
        per_worker_bytes: u64,
        min_workers: Box<Setting>,
        min_workers_count: u32,
        total: Box<Setting>,
    },
}

impl ConfigError {
    /// The JSON path or flag the error is about, when it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { path, .. }
            | Self::Invalid { path, .. }
            | Self::MixedShapes { path, .. } => Some(path),
            Self::Value { setting, .. }
            | Self::Order { setting, .. }
            | Self::OverTotal {
                per_worker: setting,
                ..
            } => Some(&setting.path),
            Self::Read { .. }
            | Self::TooLarge { .. }
            | Self::NotUtf8 { .. }
            | Self::Syntax { .. } => None,
        }
    }
}

fn too_large(len: Option<u64>) -> String {
    let cap = Size(MAX_FILE_BYTES);
    match len {
        Some(len) => format!(
            "{} is over the {cap} limit for a configuration file; is it the right file?",
            Size(len)
        ),
        None => {
            format!("more than the {cap} limit for a configuration file; is it the right file?")
        }
    }
}

/// Resolves the memory options: [`MemoryConfig::default`], then the
/// `--config` file if given, then the flags, then checks the whole.
pub fn resolve(flags: MemoryFlags, overrides: Overrides) -> Result<MemoryConfig, ConfigError> {
    let file = match &flags.config {
        None => None,
        Some(path) => Some((path.clone(), read_capped(path)?)),
    };
    resolve_bytes(
        file.as_ref()
            .map(|(path, bytes)| (path.as_path(), bytes.as_slice())),
        flags,
        overrides,
    )
}

/// [`resolve`] with the file's bytes already read.
fn resolve_bytes(
    file: Option<(&Path, &[u8])>,
    flags: MemoryFlags,
    overrides: Overrides,
) -> Result<MemoryConfig, ConfigError> {
    let mut merged = Merged::default();
    if let Some((path, bytes)) = file {
        let parsed = parse(path, bytes)?;
        merged.apply(
            parsed.layer,
            &Source::File {
                file: path,
                prefix: parsed.prefix,
            },
        );
    }
    merged.apply(flags.into_layer(overrides), &Source::Flags);
    merged.check()?;
    Ok(merged.config)
}

/// Reads at most [`MAX_FILE_BYTES`]: a larger file is refused from its size,
/// and a stream (a pipe, /dev/stdin) that goes past it is cut off and refused.
fn read_capped(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_file() && meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            file: path.to_path_buf(),
            len: Some(meta.len()),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            file: path.to_path_buf(),
            len: None,
        });
    }
    Ok(bytes)
}

/// A parsed file: its options, and the path prefix its shape puts before them.
struct Parsed {
    layer: Layer,
    /// `cluster.config.` for the whole createServer object, else empty.
    prefix: &'static str,
}

const OUTER_PREFIX: &str = "cluster.config.";

/// Parses a configuration file's bytes.
fn parse(file: &Path, bytes: &[u8]) -> Result<Parsed, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(&bytes[..e.valid_up_to()]);
        ConfigError::NotUtf8 {
            file: file.to_path_buf(),
            line,
            column,
        }
    })?;
    // Editors on Windows may start a UTF-8 file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError::Syntax {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            reason: "the file is empty; expected a JSON object".into(),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let root: FileRoot = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(Section(root)) => root,
        Err(e) => return Err(file_error(file, &e)),
    };
    deserializer
        .end()
        .map_err(|e| syntax_error(file, &e, "after the JSON object"))?;
    let FileRoot {
        cluster,
        workers,
        resources,
        auto_scaling,
    } = root;
    let Some(cluster) = cluster else {
        return Ok(Parsed {
            layer: Layer {
                workers,
                resources,
                auto_scaling,
            },
            prefix: "",
        });
    };
    let inner_key = [
        ("workers", workers.is_some()),
        ("resources", resources.is_some()),
        ("autoScaling", auto_scaling.is_some()),
    ]
    .into_iter()
    .find_map(|(key, present)| present.then_some(key));
    if let Some(key) = inner_key {
        return Err(ConfigError::MixedShapes {
            file: file.to_path_buf(),
            path: key.into(),
        });
    }
    if cluster.enabled == Some(false) {
        return Err(ConfigError::Value {
            setting: Setting {
                path: "cluster.enabled".into(),
                value: "false".into(),
                origin: Origin::File(file.to_path_buf()),
            },
            reason: "xypriss always runs a pool of workers; remove the key or set it to true"
                .into(),
        });
    }
    Ok(Parsed {
        layer: cluster.config.unwrap_or_default(),
        prefix: OUTER_PREFIX,
    })
}

/// 1-based line and column of the end of `prefix`.
fn line_column(prefix: &[u8]) -> (usize, usize) {
    let line_start = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + String::from_utf8_lossy(&prefix[line_start..])
        .chars()
        .count();
    (line, column)
}

/// An error from serde_json, with the path serde_path_to_error tracked.
fn file_error(file: &Path, error: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let inner = error.inner();
    if !inner.is_data() {
        return syntax_error(file, inner, "");
    }
    let segments: Vec<&str> = error
        .path()
        .iter()
        .map(|segment| match segment {
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Seq { .. } | Segment::Unknown => "?",
        })
        .collect();
    let path = if segments.is_empty() {
        "the top level".to_string()
    } else {
        segments.join(".")
    };
    if let Some((key, parent)) = segments.split_last()
        && let Some(allowed) = keys_under(parent)
        && !allowed.contains(key)
    {
        return ConfigError::UnknownKey {
            file: file.to_path_buf(),
            path,
            line: inner.line(),
            column: inner.column().max(1),
            hint: unknown_key_hint(key, parent, allowed),
        };
    }
    ConfigError::Invalid {
        file: file.to_path_buf(),
        path,
        line: inner.line(),
        column: inner.column().max(1),
        reason: shorten(message_without_position(inner)),
    }
}

/// Caps a message that quotes the user's value: a value can be a megabyte.
fn shorten(message: String) -> String {
    const MAX_CHARS: usize = 200;
    if message.chars().count() <= MAX_CHARS {
        return message;
    }
    let mut short: String = message.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

fn syntax_error(file: &Path, error: &serde_json::Error, context: &str) -> ConfigError {
    let reason = if error.is_eof() {
        "the file ends in the middle of the JSON: is it truncated?".to_string()
    } else {
        let message = message_without_position(error);
        if message == "recursion limit exceeded" {
            "nested more than 128 levels deep: not a configuration file".to_string()
        } else if context.is_empty() {
            shorten(format!("not valid JSON: {message}"))
        } else {
            shorten(format!("not valid JSON {context}: {message}"))
        }
    };
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line: error.line(),
        column: error.column().max(1),
        reason,
    }
}

/// serde_json's message, whose position the error already gives as
/// `file:line:column`.
fn message_without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    message
        .strip_suffix(&position)
        .map_or_else(|| message.clone(), str::to_string)
}

/// The keys allowed in the object at `parent` (a path in the file), or `None`
/// when `parent` is not an object of ours.
fn keys_under(parent: &[&str]) -> Option<&'static [&'static str]> {
    match parent {
        [] => Some(keys_of::<FileRoot>()),
        ["cluster"] => Some(keys_of::<FileCluster>()),
        ["cluster", "config", rest @ ..] => section_keys(&rest.join(".")),
        _ => section_keys(&parent.join(".")),
    }
}

/// The objects inside `cluster.config`, by their path there, and their keys.
fn sections() -> [(&'static str, &'static [&'static str]); 8] {
    [
        ("", keys_of::<Layer>()),
        ("resources", keys_of::<ResourcesLayer>()),
        ("resources.memoryManagement", keys_of::<MemoryLayer>()),
        (
            "resources.performanceOptimization",
            keys_of::<PerformanceLayer>(),
        ),
        ("resources.enforcement", keys_of::<EnforcementLayer>()),
        ("autoScaling", keys_of::<AutoScalingLayer>()),
        (
            "autoScaling.scaleDownThreshold",
            keys_of::<ThresholdLayer>(),
        ),
        ("autoScaling.scaleUpThreshold", keys_of::<ThresholdLayer>()),
    ]
}

fn section_keys(path: &str) -> Option<&'static [&'static str]> {
    sections()
        .into_iter()
        .find_map(|(section, keys)| (section == path).then_some(keys))
}

/// "did you mean" for a misspelt key (by Jaro-Winkler similarity, as clap
/// does for flags), else where the key belongs if it is a key elsewhere, else
/// the keys allowed here.
fn unknown_key_hint(key: &str, parent: &[&str], allowed: &[&str]) -> String {
    let normalize = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let wanted = normalize(key);
    let best = allowed
        .iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(&wanted, &normalize(candidate)),
                candidate,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, candidate)) = best {
        return format!("did you mean `{candidate}`?");
    }
    let prefix = if parent.first() == Some(&"cluster") {
        OUTER_PREFIX
    } else {
        ""
    };
    let home = sections()
        .into_iter()
        .find(|(_, keys)| keys.contains(&key))
        .map(|(section, _)| format!("{prefix}{section}"));
    match home {
        Some(home) => {
            let home = home.trim_end_matches('.');
            let home = if home.is_empty() {
                "the top level"
            } else {
                home
            };
            format!("`{key}` belongs in {home}")
        }
        None => format!("the keys here are `{}`", allowed.join("`, `")),
    }
}

/// The field names serde knows for `T`: it lists them when it meets an
/// unknown one, so ask it with a key no struct has.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Fields(&'static [&'static str]);
    impl fmt::Display for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names")
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Fields(&[])
        }
        fn unknown_field(_: &str, expected: &'static [&'static str]) -> Self {
            Fields(expected)
        }
    }
    let probe = de::value::MapDeserializer::<_, Fields>::new(std::iter::once(("\u{0}", ())));
    match T::deserialize(probe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

// The file, as serde reads it: every key optional, no other key allowed.

/// The top level: `{"cluster": …}` (createServer's options), or the
/// `cluster.config` object itself. serde cannot flatten with
/// `deny_unknown_fields`, so the config's keys are repeated here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileRoot {
    #[serde(default, deserialize_with = "section")]
    cluster: Option<FileCluster>,
    #[serde(default, deserialize_with = "workers")]
    workers: Option<WorkerCount>,
    #[serde(default, deserialize_with = "section")]
    resources: Option<ResourcesLayer>,
    #[serde(default, deserialize_with = "section")]
    auto_scaling: Option<AutoScalingLayer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileCluster {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "section")]
    config: Option<Layer>,
}

/// `cluster.config`, from the file or from flags.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Layer {
    #[serde(default, deserialize_with = "workers")]
    workers: Option<WorkerCount>,
    #[serde(default, deserialize_with = "section")]
    resources: Option<ResourcesLayer>,
    #[serde(default, deserialize_with = "section")]
    auto_scaling: Option<AutoScalingLayer>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourcesLayer {
    #[serde(default, deserialize_with = "size")]
    max_memory_per_worker: Option<u64>,
    #[serde(default, deserialize_with = "section")]
    memory_management: Option<MemoryLayer>,
    #[serde(default, deserialize_with = "section")]
    performance_optimization: Option<PerformanceLayer>,
    #[serde(default, deserialize_with = "section")]
    enforcement: Option<EnforcementLayer>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MemoryLayer {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "size")]
    max_total_memory: Option<u64>,
    #[serde(default, deserialize_with = "milliseconds")]
    memory_check_interval: Option<Duration>,
    #[serde(default, deserialize_with = "percent")]
    memory_warning_threshold: Option<f64>,
    #[serde(default, deserialize_with = "percent")]
    memory_critical_threshold: Option<f64>,
    auto_scale_on_memory: Option<bool>,
    memory_leak_detection: Option<bool>,
    garbage_collection_hint: Option<bool>,
    low_memory_mode: Option<bool>,
    #[serde(default, deserialize_with = "size")]
    memory_reservation: Option<u64>,
    #[serde(default, deserialize_with = "percent")]
    swap_usage_limit: Option<f64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PerformanceLayer {
    enabled: Option<bool>,
    low_memory_mode: Option<bool>,
    reduced_logging: Option<bool>,
    compact_metrics: Option<bool>,
    lazy_worker_init: Option<bool>,
    worker_pooling: Option<bool>,
    memory_pooling: Option<bool>,
    disable_debug_features: Option<bool>,
    minimal_footprint: Option<bool>,
    efficient_data_structures: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnforcementLayer {
    enabled: Option<bool>,
    enforce_hard_limits: Option<bool>,
    soft_limit_warnings: Option<bool>,
    graceful_degradation: Option<bool>,
    resource_throttling: Option<bool>,
    alert_on_limit_reached: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AutoScalingLayer {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "count")]
    min_workers: Option<u32>,
    #[serde(default, deserialize_with = "count")]
    max_workers: Option<u32>,
    memory_based_scaling: Option<bool>,
    aggressive_memory_scaling: Option<bool>,
    #[serde(default, deserialize_with = "section")]
    scale_down_threshold: Option<ThresholdLayer>,
    #[serde(default, deserialize_with = "section")]
    scale_up_threshold: Option<ThresholdLayer>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ThresholdLayer {
    #[serde(default, deserialize_with = "percent")]
    memory: Option<f64>,
    #[serde(default, deserialize_with = "percent")]
    cpu: Option<f64>,
}

/// A JSON object, and only that: serde's derived structs also accept an array
/// of their fields in order, which no one writing a config means.
struct Section<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Section<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectOnly(PhantomData))
            .map(Section)
    }
}

fn section<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Section<T>>::deserialize(deserializer)?.map(|Section(t)| t))
}

/// The leaves read a JSON value, so that a wrong type gets a message in the
/// option's own terms. `null` means "not set".
fn leaf<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    convert: impl FnOnce(Value) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(value) => convert(value).map(Some).map_err(de::Error::custom),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    leaf(deserializer, |value| match &value {
        Value::String(text) => text.parse::<Size>().map(|s| s.0).map_err(|e| e.to_string()),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(bytes), _) => Ok(bytes),
            (None, Some(f)) if f < 0.0 => Err(format!("{n} is negative: a size must be 0 or more")),
            (None, Some(f)) if f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
            _ => Err(format!(
                "{n} is not a whole number of bytes; write a fraction with a unit, as in \"1.5GB\""
            )),
        },
        _ => Err(format!(
            "expected a size, as in \"512MB\" or a number of bytes, found {}",
            kind(&value)
        )),
    })
}

fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    leaf(deserializer, |value| match &value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a percentage")),
        _ => Err(format!(
            "expected a percentage, as a number such as 80, found {}",
            kind(&value)
        )),
    })
}

fn milliseconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    leaf(deserializer, |value| match value.as_u64() {
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!(
            "expected a whole number of milliseconds, such as 30000, found {}",
            kind(&value)
        )),
    })
}

/// A worker count: a whole number from 0 up (0 and large counts are refused
/// by [`Merged::check`], with the rest of the impossible values).
fn whole(value: &Value, what: &str) -> Result<u32, String> {
    match value.as_u64() {
        Some(n) => u32::try_from(n)
            .map_err(|_| format!("{n}: at most {MAX_WORKERS} workers are supported")),
        None => Err(format!("expected {what}, found {}", kind(value))),
    }
}

fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    leaf(deserializer, |value| {
        whole(&value, "a number of workers (a whole number from 1)")
    })
}

fn workers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<WorkerCount>, D::Error> {
    leaf(deserializer, |value| match &value {
        Value::String(text) if text.eq_ignore_ascii_case("auto") => Ok(WorkerCount::Auto),
        _ => whole(&value, "\"auto\" or a whole number of workers").map(WorkerCount::Fixed),
    })
}

/// `--memory-check-interval`: milliseconds, as in the file, or a duration with
/// a unit (`30s`, `1m`).
fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration: write milliseconds (30000) or a unit (30s): {e}")
    })
}

impl MemoryFlags {
    /// The flags as a layer over the file.
    fn into_layer(self, overrides: Overrides) -> Layer {
        let threshold = |memory, cpu| Some(ThresholdLayer { memory, cpu });
        Layer {
            workers: overrides.workers,
            resources: Some(ResourcesLayer {
                max_memory_per_worker: overrides.max_memory_per_worker,
                memory_management: Some(MemoryLayer {
                    enabled: self.memory_management,
                    max_total_memory: self.max_total_memory.map(|s| s.0),
                    memory_check_interval: self.memory_check_interval,
                    memory_warning_threshold: overrides.warning,
                    memory_critical_threshold: overrides.critical,
                    auto_scale_on_memory: self.auto_scale_on_memory,
                    memory_leak_detection: self.memory_leak_detection,
                    garbage_collection_hint: self.garbage_collection_hint,
                    low_memory_mode: self.low_memory_mode,
                    memory_reservation: self.memory_reservation.map(|s| s.0),
                    swap_usage_limit: self.swap_usage_limit,
                }),
                performance_optimization: Some(PerformanceLayer {
                    enabled: self.performance_optimization,
                    low_memory_mode: self.performance_low_memory_mode,
                    reduced_logging: self.reduced_logging,
                    compact_metrics: self.compact_metrics,
                    lazy_worker_init: self.lazy_worker_init,
                    worker_pooling: self.worker_pooling,
                    memory_pooling: self.memory_pooling,
                    disable_debug_features: self.disable_debug_features,
                    minimal_footprint: self.minimal_footprint,
                    efficient_data_structures: self.efficient_data_structures,
                }),
                enforcement: Some(EnforcementLayer {
                    enabled: self.enforcement,
                    enforce_hard_limits: self.enforce_hard_limits,
                    soft_limit_warnings: self.soft_limit_warnings,
                    graceful_degradation: self.graceful_degradation,
                    resource_throttling: self.resource_throttling,
                    alert_on_limit_reached: self.alert_on_limit_reached,
                }),
            }),
            auto_scaling: Some(AutoScalingLayer {
                enabled: self.auto_scaling,
                min_workers: overrides.min_workers,
                max_workers: overrides.max_workers,
                memory_based_scaling: self.memory_based_scaling,
                aggressive_memory_scaling: self.aggressive_memory_scaling,
                scale_down_threshold: threshold(
                    self.scale_down_memory_threshold,
                    self.scale_down_cpu_threshold,
                ),
                scale_up_threshold: threshold(
                    self.scale_up_memory_threshold,
                    self.scale_up_cpu_threshold,
                ),
            }),
        }
    }
}

/// An option's place in the file (under `cluster.config`) and its flag.
#[derive(Debug)]
struct Key {
    path: &'static str,
    flag: &'static str,
}

macro_rules! keys {
    ($($name:ident = $path:literal, $flag:literal;)*) => {
        $(const $name: Key = Key { path: $path, flag: $flag };)*
        /// Every option, for the tests that keep the flags and the docs complete.
        #[cfg(test)]
        const ALL_KEYS: &[Key] = &[$($name),*];
    };
}

keys! {
    WORKERS = "workers", "workers";
    MAX_MEMORY_PER_WORKER = "resources.maxMemoryPerWorker", "max-memory-per-worker";
    MM_ENABLED = "resources.memoryManagement.enabled", "memory-management";
    MAX_TOTAL_MEMORY = "resources.memoryManagement.maxTotalMemory", "max-total-memory";
    CHECK_INTERVAL = "resources.memoryManagement.memoryCheckInterval", "memory-check-interval";
    WARNING = "resources.memoryManagement.memoryWarningThreshold", "memory-warning-threshold";
    CRITICAL = "resources.memoryManagement.memoryCriticalThreshold", "memory-critical-threshold";
    AUTO_SCALE_ON_MEMORY = "resources.memoryManagement.autoScaleOnMemory", "auto-scale-on-memory";
    LEAK_DETECTION = "resources.memoryManagement.memoryLeakDetection", "memory-leak-detection";
    GC_HINT = "resources.memoryManagement.garbageCollectionHint", "garbage-collection-hint";
    MM_LOW_MEMORY_MODE = "resources.memoryManagement.lowMemoryMode", "low-memory-mode";
    RESERVATION = "resources.memoryManagement.memoryReservation", "memory-reservation";
    SWAP_LIMIT = "resources.memoryManagement.swapUsageLimit", "swap-usage-limit";
    PO_ENABLED = "resources.performanceOptimization.enabled", "performance-optimization";
    PO_LOW_MEMORY_MODE = "resources.performanceOptimization.lowMemoryMode", "performance-low-memory-mode";
    REDUCED_LOGGING = "resources.performanceOptimization.reducedLogging", "reduced-logging";
    COMPACT_METRICS = "resources.performanceOptimization.compactMetrics", "compact-metrics";
    LAZY_WORKER_INIT = "resources.performanceOptimization.lazyWorkerInit", "lazy-worker-init";
    WORKER_POOLING = "resources.performanceOptimization.workerPooling", "worker-pooling";
    MEMORY_POOLING = "resources.performanceOptimization.memoryPooling", "memory-pooling";
    DISABLE_DEBUG = "resources.performanceOptimization.disableDebugFeatures", "disable-debug-features";
    MINIMAL_FOOTPRINT = "resources.performanceOptimization.minimalFootprint", "minimal-footprint";
    EFFICIENT_DATA = "resources.performanceOptimization.efficientDataStructures", "efficient-data-structures";
    EN_ENABLED = "resources.enforcement.enabled", "enforcement";
    HARD_LIMITS = "resources.enforcement.enforceHardLimits", "enforce-hard-limits";
    SOFT_WARNINGS = "resources.enforcement.softLimitWarnings", "soft-limit-warnings";
    DEGRADATION = "resources.enforcement.gracefulDegradation", "graceful-degradation";
    THROTTLING = "resources.enforcement.resourceThrottling", "resource-throttling";
    ALERT = "resources.enforcement.alertOnLimitReached", "alert-on-limit-reached";
    AS_ENABLED = "autoScaling.enabled", "auto-scaling";
    MIN_WORKERS = "autoScaling.minWorkers", "min-workers";
    MAX_WORKERS_KEY = "autoScaling.maxWorkers", "max-workers";
    MEMORY_BASED = "autoScaling.memoryBasedScaling", "memory-based-scaling";
    AGGRESSIVE = "autoScaling.aggressiveMemoryScaling", "aggressive-memory-scaling";
    DOWN_MEMORY = "autoScaling.scaleDownThreshold.memory", "scale-down-memory-threshold";
    DOWN_CPU = "autoScaling.scaleDownThreshold.cpu", "scale-down-cpu-threshold";
    UP_MEMORY = "autoScaling.scaleUpThreshold.memory", "scale-up-memory-threshold";
    UP_CPU = "autoScaling.scaleUpThreshold.cpu", "scale-up-cpu-threshold";
}

/// Where a layer comes from.
enum Source<'a> {
    File {
        file: &'a Path,
        prefix: &'static str,
    },
    Flags,
}

/// Where a set value came from, with the path its source used.
enum Given {
    File { file: PathBuf, path: String },
    Flag,
}

/// The configuration being merged, and where each value came from (absent:
/// the default), so that an error names what the user wrote.
#[derive(Default)]
struct Merged {
    config: MemoryConfig,
    from: HashMap<&'static str, Given>,
}

impl Merged {
    fn set<T>(&mut self, key: &Key, value: Option<T>, source: &Source, slot: Slot<T>) {
        let Some(value) = value else { return };
        *slot(&mut self.config) = value;
        let from = match source {
            Source::File { file, prefix } => Given::File {
                file: file.to_path_buf(),
                path: format!("{prefix}{}", key.path),
            },
            Source::Flags => Given::Flag,
        };
        self.from.insert(key.path, from);
    }

    fn apply(&mut self, layer: Layer, source: &Source) {
        let r = layer.resources.unwrap_or_default();
        let m = r.memory_management.unwrap_or_default();
        let p = r.performance_optimization.unwrap_or_default();
        let e = r.enforcement.unwrap_or_default();
        let a = layer.auto_scaling.unwrap_or_default();
        let down = a.scale_down_threshold.unwrap_or_default();
        let up = a.scale_up_threshold.unwrap_or_default();
        self.set(&WORKERS, layer.workers, source, |c| &mut c.workers);
        let sizes: [(&Key, Option<u64>, Slot<u64>); 3] = [
            (&MAX_MEMORY_PER_WORKER, r.max_memory_per_worker, |c| {
                &mut c.max_memory_per_worker
            }),
            (&MAX_TOTAL_MEMORY, m.max_total_memory, |c| {
                &mut c.memory_management.max_total_memory
            }),
            (&RESERVATION, m.memory_reservation, |c| {
                &mut c.memory_management.memory_reservation
            }),
        ];
        for (key, value, slot) in sizes {
            self.set(key, value, source, slot);
        }
        self.set(&CHECK_INTERVAL, m.memory_check_interval, source, |c| {
            &mut c.memory_management.memory_check_interval
        });
        let percentages: [(&Key, Option<f64>, Slot<f64>); 7] = [
            (&WARNING, m.memory_warning_threshold, |c| {
                &mut c.memory_management.memory_warning_threshold
            }),
            (&CRITICAL, m.memory_critical_threshold, |c| {
                &mut c.memory_management.memory_critical_threshold
            }),
            (&SWAP_LIMIT, m.swap_usage_limit, |c| {
                &mut c.memory_management.swap_usage_limit
            }),
            (&DOWN_MEMORY, down.memory, |c| {
                &mut c.auto_scaling.scale_down_threshold.memory
            }),
            (&DOWN_CPU, down.cpu, |c| {
                &mut c.auto_scaling.scale_down_threshold.cpu
            }),
            (&UP_MEMORY, up.memory, |c| {
                &mut c.auto_scaling.scale_up_threshold.memory
            }),
            (&UP_CPU, up.cpu, |c| {
                &mut c.auto_scaling.scale_up_threshold.cpu
            }),
        ];
        for (key, value, slot) in percentages {
            self.set(key, value, source, slot);
        }
        let counts: [(&Key, Option<u32>, Slot<u32>); 2] = [
            (&MIN_WORKERS, a.min_workers, |c| {
                &mut c.auto_scaling.min_workers
            }),
            (&MAX_WORKERS_KEY, a.max_workers, |c| {
                &mut c.auto_scaling.max_workers
            }),
        ];
        for (key, value, slot) in counts {
            self.set(key, value, source, slot);
        }
        let booleans: [(&Key, Option<bool>, Slot<bool>); 24] = [
            (&MM_ENABLED, m.enabled, |c| &mut c.memory_management.enabled),
            (&AUTO_SCALE_ON_MEMORY, m.auto_scale_on_memory, |c| {
                &mut c.memory_management.auto_scale_on_memory
            }),
            (&LEAK_DETECTION, m.memory_leak_detection, |c| {
                &mut c.memory_management.memory_leak_detection
            }),
            (&GC_HINT, m.garbage_collection_hint, |c| {
                &mut c.memory_management.garbage_collection_hint
            }),
            (&MM_LOW_MEMORY_MODE, m.low_memory_mode, |c| {
                &mut c.memory_management.low_memory_mode
            }),
            (&PO_ENABLED, p.enabled, |c| {
                &mut c.performance_optimization.enabled
            }),
            (&PO_LOW_MEMORY_MODE, p.low_memory_mode, |c| {
                &mut c.performance_optimization.low_memory_mode
            }),
            (&REDUCED_LOGGING, p.reduced_logging, |c| {
                &mut c.performance_optimization.reduced_logging
            }),
            (&COMPACT_METRICS, p.compact_metrics, |c| {
                &mut c.performance_optimization.compact_metrics
            }),
            (&LAZY_WORKER_INIT, p.lazy_worker_init, |c| {
                &mut c.performance_optimization.lazy_worker_init
            }),
            (&WORKER_POOLING, p.worker_pooling, |c| {
                &mut c.performance_optimization.worker_pooling
            }),
            (&MEMORY_POOLING, p.memory_pooling, |c| {
                &mut c.performance_optimization.memory_pooling
            }),
            (&DISABLE_DEBUG, p.disable_debug_features, |c| {
                &mut c.performance_optimization.disable_debug_features
            }),
            (&MINIMAL_FOOTPRINT, p.minimal_footprint, |c| {
                &mut c.performance_optimization.minimal_footprint
            }),
            (&EFFICIENT_DATA, p.efficient_data_structures, |c| {
                &mut c.performance_optimization.efficient_data_structures
            }),
            (&EN_ENABLED, e.enabled, |c| &mut c.enforcement.enabled),
            (&HARD_LIMITS, e.enforce_hard_limits, |c| {
                &mut c.enforcement.enforce_hard_limits
            }),
            (&SOFT_WARNINGS, e.soft_limit_warnings, |c| {
                &mut c.enforcement.soft_limit_warnings
            }),
            (&DEGRADATION, e.graceful_degradation, |c| {
                &mut c.enforcement.graceful_degradation
            }),
            (&THROTTLING, e.resource_throttling, |c| {
                &mut c.enforcement.resource_throttling
            }),
            (&ALERT, e.alert_on_limit_reached, |c| {
                &mut c.enforcement.alert_on_limit_reached
            }),
            (&AS_ENABLED, a.enabled, |c| &mut c.auto_scaling.enabled),
            (&MEMORY_BASED, a.memory_based_scaling, |c| {
                &mut c.auto_scaling.memory_based_scaling
            }),
            (&AGGRESSIVE, a.aggressive_memory_scaling, |c| {
                &mut c.auto_scaling.aggressive_memory_scaling
            }),
        ];
        for (key, value, slot) in booleans {
            self.set(key, value, source, slot);
        }
    }

    /// `key`'s value as the user gave it, for an error.
    fn setting(&self, key: &Key, value: impl fmt::Display) -> Setting {
        let value = value.to_string();
        match self.from.get(key.path) {
            Some(Given::File { file, path }) => Setting {
                path: path.clone(),
                value,
                origin: Origin::File(file.clone()),
            },
            Some(Given::Flag) => Setting {
                path: format!("--{}", key.flag),
                value,
                origin: Origin::Flag,
            },
            None => Setting {
                path: key.path.into(),
                value,
                origin: Origin::Default,
            },
        }
    }

    fn invalid(
        &self,
        key: &Key,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Value {
            setting: self.setting(key, value),
            reason: reason.into(),
        }
    }

    /// Refuses the impossible values, naming them as the user wrote them.
    fn check(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let m = &c.memory_management;
        let a = &c.auto_scaling;
        let pool_bound = |key: &Key, n: u32| {
            if (1..=MAX_WORKERS).contains(&n) {
                Ok(())
            } else {
                Err(self.invalid(key, n, format!("must be from 1 to {MAX_WORKERS} workers")))
            }
        };
        if let WorkerCount::Fixed(n) = c.workers {
            pool_bound(&WORKERS, n)?;
        }
        pool_bound(&MIN_WORKERS, a.min_workers)?;
        pool_bound(&MAX_WORKERS_KEY, a.max_workers)?;
        for (key, bytes) in [
            (&MAX_MEMORY_PER_WORKER, c.max_memory_per_worker),
            (&MAX_TOTAL_MEMORY, m.max_total_memory),
        ] {
            if bytes < 1 << 20 {
                return Err(self.invalid(key, Size(bytes), "must be at least 1MiB"));
            }
        }
        if m.memory_check_interval.is_zero() {
            return Err(self.invalid(&CHECK_INTERVAL, "0ms", "must be more than 0 milliseconds"));
        }
        for (key, value) in [
            (&WARNING, m.memory_warning_threshold),
            (&CRITICAL, m.memory_critical_threshold),
            (&SWAP_LIMIT, m.swap_usage_limit),
            (&DOWN_MEMORY, a.scale_down_threshold.memory),
            (&DOWN_CPU, a.scale_down_threshold.cpu),
            (&UP_MEMORY, a.scale_up_threshold.memory),
            (&UP_CPU, a.scale_up_threshold.cpu),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                return Err(self.invalid(
                    key,
                    value,
                    "must be a percentage above 0 and at most 100",
                ));
            }
        }
        for (low, low_value, high, high_value) in [
            (
                &WARNING,
                m.memory_warning_threshold,
                &CRITICAL,
                m.memory_critical_threshold,
            ),
            (
                &DOWN_MEMORY,
                a.scale_down_threshold.memory,
                &UP_MEMORY,
                a.scale_up_threshold.memory,
            ),
            (
                &DOWN_CPU,
                a.scale_down_threshold.cpu,
                &UP_CPU,
                a.scale_up_threshold.cpu,
            ),
        ] {
            if high_value <= low_value {
                return Err(ConfigError::Order {
                    setting: self.setting(high, high_value),
                    relation: "above",
                    other: Box::new(self.setting(low, low_value)),
                });
            }
        }
        if a.min_workers > a.max_workers {
            return Err(ConfigError::Order {
                setting: self.setting(&MIN_WORKERS, a.min_workers),
                relation: "at most",
                other: Box::new(self.setting(&MAX_WORKERS_KEY, a.max_workers)),
            });
        }
        if let WorkerCount::Fixed(n) = c.workers
            && !(a.min_workers..=a.max_workers).contains(&n)
        {
            let (relation, bound, value) = if n < a.min_workers {
                ("at least", &MIN_WORKERS, a.min_workers)
            } else {
                ("at most", &MAX_WORKERS_KEY, a.max_workers)
            };
            return Err(ConfigError::Order {
                setting: self.setting(&WORKERS, n),
                relation,
                other: Box::new(self.setting(bound, value)),
            });
        }
        let least = c
            .max_memory_per_worker
            .saturating_mul(u64::from(a.min_workers));
        if m.enabled && least > m.max_total_memory {
            return Err(ConfigError::OverTotal {
                per_worker: self.setting(&MAX_MEMORY_PER_WORKER, Size(c.max_memory_per_worker)),
                per_worker_bytes: c.max_memory_per_worker,
                min_workers: Box::new(self.setting(&MIN_WORKERS, a.min_workers)),
                min_workers_count: a.min_workers,
                total: Box::new(self.setting(&MAX_TOTAL_MEMORY, Size(m.max_total_memory))),
            });
        }
        Ok(())
    }
}

/// Where in the [`MemoryConfig`] an option's value goes.
type Slot<T> = fn(&mut MemoryConfig) -> &mut T;

#[cfg(test)]
mod tests {
    use std::{
        fs::OpenOptions,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use clap::{CommandFactory as _, Parser};
    use proptest::prelude::*;

    use super::*;
    use crate::cli::RunFlags;

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

    fn load_with(
        json: &str,
        flags: MemoryFlags,
        overrides: Overrides,
    ) -> Result<MemoryConfig, ConfigError> {
        resolve_bytes(Some((Path::new(FILE), json.as_bytes())), flags, overrides)
    }

    fn load(json: &str) -> Result<MemoryConfig, ConfigError> {
        load_with(json, MemoryFlags::default(), Overrides::default())
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
            Self(
                std::env::temp_dir()
                    .join(format!("xypriss-config-{}-{n}-{name}", std::process::id())),
            )
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

    fn with_config(path: &Path) -> MemoryFlags {
        MemoryFlags {
            config: Some(path.to_path_buf()),
            ..MemoryFlags::default()
        }
    }

    #[test]
    fn the_basic_example_is_the_defaults() {
        let file = TempFile::with("basic.json", BASIC.as_bytes());
        let config = resolve(with_config(&file.0), Overrides::default()).unwrap();
        assert_eq!(config, MemoryConfig::default());
        assert_eq!(config.workers, WorkerCount::Auto);
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
            workers: WorkerCount::Fixed(4),
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
                min_workers: 1,
                max_workers: 6,
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
        assert_eq!(inner, expected);
    }

    #[test]
    fn the_low_memory_example_reads() {
        let config = load(LOW_MEMORY).unwrap();
        assert_eq!(config.workers, WorkerCount::Fixed(2));
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
        assert_eq!(load("{}").unwrap(), MemoryConfig::default());
        assert_eq!(
            load(r#"{"cluster": {"enabled": true}}"#).unwrap(),
            MemoryConfig::default()
        );
        assert_eq!(
            load(r#"{"workers": null}"#).unwrap(),
            MemoryConfig::default()
        );
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
                config.memory_management.memory_reservation, bytes,
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
        assert!(
            error(r#"{"server": {"port": 3000}}"#).ends_with(
                "server: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`"
            )
        );
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
        assert_eq!(load(json).unwrap().auto_scaling.min_workers, 3);
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
                memory_management(r#""memoryWarningThreshold": "80%""#),
                "app.json:1:68: resources.memoryManagement.memoryWarningThreshold: \
                 expected a percentage, as a number such as 80, found the string \"80%\"",
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
        let e = resolve_bytes(
            Some((Path::new(FILE), bytes)),
            MemoryFlags::default(),
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "app.json:2:17: the file is not UTF-8 text; save it as UTF-8 JSON"
        );
    }

    #[test]
    fn deeply_nested_junk_is_refused() {
        let deep =
            |open: &str, close: &str| format!("{}{}", open.repeat(10_000), close.repeat(10_000));
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
            error(&format!(r#"{{"junk": {}}}"#, deep("[", "]")))
                .ends_with("junk: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`")
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
        let e = resolve(with_config(&file.0), Overrides::default()).unwrap_err();
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
        let e = resolve(
            with_config(Path::new("/nonexistent/app.json")),
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--config /nonexistent/app.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = TempFile::with("advanced.json", outer(ADVANCED_CONFIG).as_bytes());
        let flags = MemoryFlags {
            swap_usage_limit: Some(20.0),
            enforce_hard_limits: Some(true),
            auto_scaling: Some(false),
            memory_check_interval: Some(Duration::from_secs(5)),
            ..with_config(&file.0)
        };
        let overrides = Overrides {
            workers: Some(WorkerCount::Fixed(6)),
            critical: Some(90.0),
            max_workers: Some(8),
            ..Overrides::default()
        };
        let config = resolve(flags, overrides).unwrap();
        assert_eq!(config.memory_management.swap_usage_limit, 20.0);
        assert!(config.enforcement.enforce_hard_limits);
        assert!(!config.auto_scaling.enabled);
        assert_eq!(
            config.memory_management.memory_check_interval,
            Duration::from_secs(5)
        );
        assert_eq!(config.workers, WorkerCount::Fixed(6));
        assert_eq!(config.memory_management.memory_critical_threshold, 90.0);
        assert_eq!(config.auto_scaling.max_workers, 8);
        // Untouched by flags: the file's.
        assert_eq!(config.memory_management.memory_warning_threshold, 70.0);
        assert_eq!(config.max_memory_per_worker, 256 << 20);
        assert!(config.performance_optimization.memory_pooling);
    }

    #[test]
    fn a_flag_is_named_by_its_flag() {
        let json = outer(&memory_management(r#""memoryWarningThreshold": 80"#));
        let overrides = Overrides {
            critical: Some(70.0),
            ..Overrides::default()
        };
        let e = load_with(&json, MemoryFlags::default(), overrides).unwrap_err();
        assert_eq!(e.path(), Some("--memory-critical-threshold"));
        assert_eq!(
            e.to_string(),
            "--memory-critical-threshold 70 must be above \
             cluster.config.resources.memoryManagement.memoryWarningThreshold = 80 (in app.json)"
        );
        let flags = MemoryFlags {
            max_total_memory: Some(Size(1 << 30)),
            ..MemoryFlags::default()
        };
        let overrides = Overrides {
            min_workers: Some(4),
            ..Overrides::default()
        };
        assert_eq!(
            resolve(flags, overrides).unwrap_err().to_string(),
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
        memory: MemoryFlags,
    }

    fn flags(args: &[&str]) -> Result<MemoryFlags, clap::Error> {
        Alone::try_parse_from(std::iter::once("xypriss").chain(args.iter().copied()))
            .map(|a| a.memory)
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
        assert_eq!(parsed.enforce_hard_limits, Some(false));
        assert_eq!(parsed.low_memory_mode, Some(true));
        assert_eq!(parsed.memory_check_interval, Some(Duration::from_secs(15)));
        assert_eq!(parsed.max_total_memory, Some(Size(8 << 30)));
        assert_eq!(parsed.scale_up_cpu_threshold, Some(90.0));
        assert_eq!(parsed.auto_scaling, None);
        assert_eq!(
            flags(&["--memory-check-interval", "30s"])
                .unwrap()
                .memory_check_interval,
            Some(Duration::from_secs(30))
        );

        let negative = flags(&["--swap-usage-limit", "-5"]).unwrap();
        assert_eq!(
            resolve(negative, Overrides::default())
                .unwrap_err()
                .to_string(),
            "--swap-usage-limit -5: must be a percentage above 0 and at most 100"
        );
        let zero = flags(&["--memory-check-interval", "0"]).unwrap();
        assert_eq!(
            resolve(zero, Overrides::default()).unwrap_err().to_string(),
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
        assert_eq!(parsed.run.memory.config, Some(PathBuf::from("app.json")));
        assert_eq!(parsed.run.memory.low_memory_mode, Some(true));
        assert_eq!(parsed.run.command, ["node", "app.js"]);
    }

    #[test]
    fn every_option_has_a_flag_and_a_line_in_the_docs() {
        let memory = Alone::command();
        let run = WithRun::command();
        let docs = include_str!("../../docs/configuration.md");
        for key in ALL_KEYS {
            assert!(
                run.get_arguments().any(|a| a.get_long() == Some(key.flag)),
                "--{} is not a flag",
                key.flag
            );
            assert!(
                docs.contains(&format!("`{}`", key.path))
                    && docs.contains(&format!("`--{}", key.flag)),
                "docs/configuration.md does not list {} / --{}",
                key.path,
                key.flag
            );
        }
        // Every flag of ours is an option (or --config).
        for arg in memory.get_arguments().filter_map(|a| a.get_long()) {
            assert!(
                arg == "config" || ALL_KEYS.iter().any(|k| k.flag == arg),
                "--{arg} is no option"
            );
        }
        // Every key of every section is an option.
        for (section, keys) in sections() {
            for key in keys {
                let path = if section.is_empty() {
                    (*key).to_string()
                } else {
                    format!("{section}.{key}")
                };
                let is_section = sections().iter().any(|(s, _)| *s == path);
                assert!(
                    is_section || ALL_KEYS.iter().any(|k| k.path == path),
                    "{path} has no Key"
                );
            }
        }
    }

    /// JSON values shaped like configs: the real keys (and a few others) at
    /// every level, any kind of value.
    fn config_like() -> impl Strategy<Value = Value> {
        let mut keys: Vec<&'static str> = sections()
            .iter()
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect();
        keys.extend([
            "cluster",
            "config",
            "memoryManagement",
            "memoryWarningTreshold",
            "junk",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0u64..200).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-200.0f64..200.0).prop_map(Value::from),
            prop::sample::select(vec![
                "auto", "512MB", "1.5GB", "-1MB", "80%", "", "1e400 TB"
            ])
            .prop_map(Value::from),
            ".{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(keys.clone()), inner), 0..5).prop_map(
                    |entries| Value::Object(
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
    fn assert_sound(result: Result<MemoryConfig, ConfigError>) {
        match result {
            Ok(c) => {
                let m = &c.memory_management;
                assert!(m.memory_warning_threshold > 0.0 && m.memory_critical_threshold <= 100.0);
                assert!(m.memory_warning_threshold < m.memory_critical_threshold);
                assert!(!m.memory_check_interval.is_zero());
                assert!((1..=c.auto_scaling.max_workers).contains(&c.auto_scaling.min_workers));
                assert!(c.auto_scaling.max_workers <= MAX_WORKERS);
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
            assert_sound(resolve_bytes(Some((Path::new(FILE), &bytes)), MemoryFlags::default(), Overrides::default()));
        }

        #[test]
        fn damaged_examples_never_panic(cut in 0..ADVANCED_CONFIG.len(), at in 0..ADVANCED_CONFIG.len(), byte in any::<u8>()) {
            let mut bytes = ADVANCED_CONFIG.as_bytes()[..cut].to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b = byte;
            }
            assert_sound(resolve_bytes(Some((Path::new(FILE), &bytes)), MemoryFlags::default(), Overrides::default()));
        }

        #[test]
        fn arbitrary_json_never_panics(value in config_like(), wrap in any::<bool>()) {
            let json = if wrap { outer(&value.to_string()) } else { value.to_string() };
            assert_sound(load(&json));
        }
    }
}
