//! Every option of XyPriss's cluster configuration, declared once: its path
//! in the file, its flag, where its value goes, its default and its docs.
//!
//! Why one table, as ripgrep's `flags/defs.rs` has one definition per flag:
//! the file's keys, the `run` flags, `--help` (and so the man pages and
//! completions), the errors that name an option and the table in
//! `docs/configuration.md` are all made from it, so they cannot drift.
//! Adding an option is one [`Opt`] here, its field in [`crate::settings`],
//! and `cargo test` tells what the docs table must become.
//!
//! Why over 600 lines: the table of every option is this file's point;
//! split, the options would have two homes again.

use std::time::Duration;

use clap::{Arg, ArgAction};
use serde_json::Value as Json;
use xypriss_ebpf::MAX_WORKERS;

use crate::{
    settings::{Options, WorkerCount},
    size::Size,
};

/// The heading the options have in `xypriss run --help`.
pub const HEADING: &str =
    "XyPriss configuration (the --config file's keys; see docs/configuration.md)";

/// One option.
#[derive(Debug)]
pub struct Opt {
    /// Where it is in `cluster.config`, dotted.
    pub path: &'static str,
    /// Its flag, without the `--`.
    pub flag: &'static str,
    /// Where its value goes, and so its kind.
    pub slot: Slot,
    /// Its default, written as the flag takes it; a test checks that it is
    /// [`Options::default`]'s.
    pub default: &'static str,
    /// Whose default it is: `ref` (the reference's first example),
    /// `XyPriss` (XyPriss's own documented default), `ours`.
    pub default_from: &'static str,
    /// One line for `-h`.
    pub help: &'static str,
    /// What it does in xypriss, in Markdown: the docs' table and `--help`.
    pub doc: &'static str,
}

/// Where an option's value goes in [`Options`], by kind.
#[derive(Clone, Copy, Debug)]
pub enum Slot {
    /// `"auto"` or a number of workers.
    Workers(fn(&mut Options) -> &mut WorkerCount),
    /// A number of workers.
    Count(fn(&mut Options) -> &mut u32),
    /// A size: `"512MB"` or bytes.
    Size(fn(&mut Options) -> &mut u64),
    /// Milliseconds (the file), or a duration with a unit (flags).
    Millis(fn(&mut Options) -> &mut Duration),
    /// A percentage, 0–100.
    Percent(fn(&mut Options) -> &mut f64),
    Bool(fn(&mut Options) -> &mut bool),
}

/// A value of one of the kinds of [`Slot`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Workers(WorkerCount),
    Count(u32),
    Size(u64),
    Millis(Duration),
    Percent(f64),
    Bool(bool),
}

impl Slot {
    /// What `--help` shows the value as.
    pub fn value_name(self) -> &'static str {
        match self {
            Self::Workers(_) => "N|auto",
            Self::Count(_) => "N",
            Self::Size(_) => "SIZE",
            Self::Millis(_) => "MS|DURATION",
            Self::Percent(_) => "PERCENT",
            Self::Bool(_) => "true|false",
        }
    }

    /// Puts `value` in its place. A value comes from its own option's
    /// parser ([`Opt::arg`], [`Slot::from_json`]), so its kind matches.
    pub fn set(self, options: &mut Options, value: Value) {
        match (self, value) {
            (Self::Workers(slot), Value::Workers(v)) => *slot(options) = v,
            (Self::Count(slot), Value::Count(v)) => *slot(options) = v,
            (Self::Size(slot), Value::Size(v)) => *slot(options) = v,
            (Self::Millis(slot), Value::Millis(v)) => *slot(options) = v,
            (Self::Percent(slot), Value::Percent(v)) => *slot(options) = v,
            (Self::Bool(slot), Value::Bool(v)) => *slot(options) = v,
            (slot, value) => unreachable!("{value:?} parsed for another kind than {slot:?}"),
        }
    }

    /// The value in its place.
    pub fn get(self, options: &Options) -> Value {
        let mut options = options.clone();
        match self {
            Self::Workers(slot) => Value::Workers(*slot(&mut options)),
            Self::Count(slot) => Value::Count(*slot(&mut options)),
            Self::Size(slot) => Value::Size(*slot(&mut options)),
            Self::Millis(slot) => Value::Millis(*slot(&mut options)),
            Self::Percent(slot) => Value::Percent(*slot(&mut options)),
            Self::Bool(slot) => Value::Bool(*slot(&mut options)),
        }
    }

    /// A flag's value, as `--help` documents it.
    pub fn parse_flag(self, text: &str) -> Result<Value, String> {
        Ok(match self {
            Self::Workers(_) => Value::Workers(text.parse()?),
            Self::Count(_) => Value::Count(
                text.parse()
                    .map_err(|_| format!("`{text}` is not a whole number of workers"))?,
            ),
            Self::Size(_) => Value::Size(text.parse::<Size>().map_err(|e| e.to_string())?.0),
            Self::Millis(_) => Value::Millis(parse_interval(text)?),
            Self::Percent(_) => Value::Percent(parse_percent(text)?),
            Self::Bool(_) => Value::Bool(match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => true,
                "false" | "no" | "off" | "0" => false,
                _ => return Err(format!("`{text}` is neither true nor false")),
            }),
        })
    }

    /// A value of the file, in the option's own terms when it is the wrong
    /// kind.
    pub fn from_json(self, value: &Json) -> Result<Value, String> {
        Ok(match self {
            Self::Workers(_) => Value::Workers(match value {
                Json::String(text) if text.eq_ignore_ascii_case("auto") => WorkerCount::Auto,
                _ => WorkerCount::Fixed(whole(value, "\"auto\" or a whole number of workers")?),
            }),
            Self::Count(_) => {
                Value::Count(whole(value, "a number of workers (a whole number from 1)")?)
            }
            Self::Size(_) => Value::Size(size(value)?),
            Self::Millis(_) => Value::Millis(match value.as_u64() {
                Some(ms) => Duration::from_millis(ms),
                None => {
                    return Err(format!(
                        "expected a whole number of milliseconds, such as 30000, found {}",
                        kind(value)
                    ));
                }
            }),
            Self::Percent(_) => Value::Percent(json_percent(value)?),
            Self::Bool(_) => Value::Bool(
                value
                    .as_bool()
                    .ok_or_else(|| format!("expected true or false, found {}", kind(value)))?,
            ),
        })
    }
}

impl Opt {
    /// The option's flag for clap.
    pub fn arg(&'static self) -> Arg {
        let arg = Arg::new(self.flag)
            .long(self.flag)
            .value_name(self.slot.value_name())
            .action(ArgAction::Set)
            .help(plain(self.help))
            .long_help(format!(
                "{}\n\n{}: {} Default: {} ({}).",
                plain(self.help),
                self.path,
                plain(self.doc),
                self.default,
                self.default_from
            ))
            .help_heading(HEADING);
        let slot = self.slot;
        arg.allow_hyphen_values(true)
            .value_parser(move |text: &str| slot.parse_flag(text))
    }

    /// The flag's value, if given, from what clap parsed with [`Opt::arg`].
    pub fn given(&self, matches: &clap::ArgMatches) -> Option<Value> {
        matches.get_one::<Value>(self.flag).copied()
    }

    /// The option's row in `docs/configuration.md`'s table.
    pub fn doc_row(&self) -> String {
        let value_name = self.slot.value_name().replace('|', "\\|");
        let value_name = if value_name == "true\\|false" {
            "BOOL".to_string()
        } else {
            value_name
        };
        format!(
            "| `{}` | `--{} {value_name}` | `{}` ({}) | {} |",
            self.path, self.flag, self.default, self.default_from, self.doc
        )
    }
}

/// Markdown to the plain text of `--help`: links become their text, code
/// spans lose their backquotes.
fn plain(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    let mut rest = markdown;
    while let Some(start) = rest.find('[') {
        text.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.split_once("](") {
            Some((label, target)) if !label.contains('[') && target.contains(')') => {
                text.push_str(label);
                rest = &target[target.find(')').map_or(0, |i| i + 1)..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.replace('`', "")
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

/// A percentage flag: `80`, `80%`, or `0.5%`. A number above 0 and under 1
/// without `%` is refused: it reads as a fraction (0.8 for 80 %) as often as
/// a percentage. The range is checked with the rest of the values.
fn parse_percent(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    if let Some(number) = trimmed.strip_suffix('%') {
        return number
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a percentage, such as 80 or 0.5%"));
    }
    let value: f64 = trimmed
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage, such as 80 or 0.5%"))?;
    not_a_fraction(value, &format!("{value}"))
}

/// Refuses `0 < value < 1` written without `%`, suggesting what it may mean.
fn not_a_fraction(value: f64, written: &str) -> Result<f64, String> {
    if value > 0.0 && value < 1.0 {
        let percent = (value * 100.0 * 1e6).round() / 1e6;
        return Err(format!(
            "{written} looks like a fraction: percentages are from 0 to 100, so write {percent} \
             for {percent}%, or \"{written}%\" if you mean {written}%"
        ));
    }
    Ok(value)
}

/// A percentage in the file: a number (`80`), or a string with `%`
/// (`"0.8%"`), the one way to mean under 1 %.
fn json_percent(value: &Json) -> Result<f64, String> {
    match value {
        Json::Number(n) => {
            let f = n
                .as_f64()
                .ok_or_else(|| format!("{n} is not a percentage"))?;
            not_a_fraction(f, &n.to_string())
        }
        Json::String(text) => match text.trim().strip_suffix('%') {
            Some(number) => number
                .trim()
                .parse()
                .map_err(|_| format!("the string {text:?} is not a percentage such as \"0.5%\"")),
            None => Err(format!(
                "expected a percentage, as a number such as 80 or a string such as \"0.5%\", found {}",
                kind(value)
            )),
        },
        _ => Err(format!(
            "expected a percentage, as a number such as 80 or a string such as \"0.5%\", found {}",
            kind(value)
        )),
    }
}

fn kind(value: &Json) -> String {
    match value {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("`{b}`"),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn size(value: &Json) -> Result<u64, String> {
    match value {
        Json::String(text) => text.parse::<Size>().map(|s| s.0).map_err(|e| e.to_string()),
        Json::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(bytes), _) => Ok(bytes),
            (None, Some(f)) if f < 0.0 => Err(format!("{n} is negative: a size must be 0 or more")),
            (None, Some(f)) if f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
            _ => Err(format!(
                "{n} is not a whole number of bytes; write a fraction with a unit, as in \"1.5GB\""
            )),
        },
        _ => Err(format!(
            "expected a size, as in \"512MB\" or a number of bytes, found {}",
            kind(value)
        )),
    }
}

/// A worker count: a whole number from 0 up (0 and large counts are refused
/// by the checks, with the rest of the impossible values).
fn whole(value: &Json, what: &str) -> Result<u32, String> {
    match value.as_u64() {
        Some(n) => u32::try_from(n)
            .map_err(|_| format!("{n}: at most {MAX_WORKERS} workers are supported")),
        None => Err(format!("expected {what}, found {}", kind(value))),
    }
}

macro_rules! options {
    ($($name:ident { $($field:ident: $value:expr),* $(,)? })*) => {
        $(pub const $name: Opt = Opt { $($field: $value),* };)*
        /// Every option, in the order of the docs' table and of `--help`.
        pub static ALL: &[Opt] = &[$($name),*];
    };
}

options! {
    WORKERS {
        path: "workers",
        flag: "workers",
        slot: Slot::Workers(|o| &mut o.workers),
        default: "auto",
        default_from: "ref",
        help: "How many workers: a number, or `auto`",
        doc: "The pool's size at start. `auto` is one worker per CPU this process may use, no more than fit the memory at `maxMemoryPerWorker` each: `maxTotalMemory`, or the memory available less `memoryReservation` if smaller (with `memoryManagement` on), and always within `minWorkers`..`maxWorkers`.",
    }
    MAX_MEMORY_PER_WORKER {
        path: "resources.maxMemoryPerWorker",
        flag: "max-memory-per-worker",
        slot: Slot::Size(|o| &mut o.memory.max_memory_per_worker),
        default: "512MB",
        default_from: "ref",
        help: "Each worker's memory limit; the warning and critical thresholds are percentages of it",
        doc: "Each worker's memory limit; the kernel programs watch the warning, critical and limit thresholds derived from it.",
    }
    MM_ENABLED {
        path: "resources.memoryManagement.enabled",
        flag: "memory-management",
        slot: Slot::Bool(|o| &mut o.memory.memory_management.enabled),
        default: "true",
        default_from: "ref",
        help: "React to the pool's memory as a whole",
        doc: "Turns on the reactions of this section; off, no thresholds are set and no leak is watched: no alert (`leak_detected` included), restart for memory, scaling on memory or low-memory mode happens.",
    }
    MAX_TOTAL_MEMORY {
        path: "resources.memoryManagement.maxTotalMemory",
        flag: "max-total-memory",
        slot: Slot::Size(|o| &mut o.memory.memory_management.max_total_memory),
        default: "4GB",
        default_from: "ref",
        help: "The whole pool's memory budget (e.g. 4GB)",
        doc: "The whole pool's memory budget: the cluster scope's alerts are its warning and critical percentages and itself; `workers: \"auto\"` and scaling fit the pool in it. `maxMemoryPerWorker × minWorkers` must fit in it.",
    }
    CHECK_INTERVAL {
        path: "resources.memoryManagement.memoryCheckInterval",
        flag: "memory-check-interval",
        slot: Slot::Millis(|o| &mut o.memory.memory_management.memory_check_interval),
        default: "30000",
        default_from: "ref",
        help: "Pace of the slow periodic checks: milliseconds, or a unit (30s)",
        doc: "Paces only the slow periodic checks (host memory, PSI, swap, recommendations); worker memory events never wait for it. In milliseconds; the flag also takes a unit (`30s`).",
    }
    WARNING {
        path: "resources.memoryManagement.memoryWarningThreshold",
        flag: "memory-warning-threshold",
        slot: Slot::Percent(|o| &mut o.memory.memory_management.memory_warning_threshold),
        default: "80",
        default_from: "ref",
        help: "Warning threshold, in percent of each scope's limit",
        doc: "Percent of the limit at which a scope is at warning level: the worker scope against `maxMemoryPerWorker` (the kernel programs wake xypriss at the crossing), the cluster scope against `maxTotalMemory`, the system scope against the host's memory less `memoryReservation`.",
    }
    CRITICAL {
        path: "resources.memoryManagement.memoryCriticalThreshold",
        flag: "memory-critical-threshold",
        slot: Slot::Percent(|o| &mut o.memory.memory_management.memory_critical_threshold),
        default: "95",
        default_from: "ref",
        help: "Critical threshold, in percent of each scope's limit; above the warning one",
        doc: "The same for critical; must be above the warning threshold. Critical is where GC hints, throttling and memory scale-downs act.",
    }
    AUTO_SCALE_ON_MEMORY {
        path: "resources.memoryManagement.autoScaleOnMemory",
        flag: "auto-scale-on-memory",
        slot: Slot::Bool(|o| &mut o.memory.memory_management.auto_scale_on_memory),
        default: "true",
        default_from: "ref",
        help: "Remove a worker when the pool or the host is critical",
        doc: "A critical crossing in the cluster or system scope stops the worker using the most memory, gracefully, one at a time, at most every 30 s (10 s with `aggressiveMemoryScaling`), never below `minWorkers`. Memory also caps every scale-up (see [Scaling](#scaling)).",
    }
    LEAK_DETECTION {
        path: "resources.memoryManagement.memoryLeakDetection",
        flag: "memory-leak-detection",
        slot: Slot::Bool(|o| &mut o.memory.memory_management.memory_leak_detection),
        default: "true",
        default_from: "ref",
        help: "Report workers whose memory only grows",
        doc: "A robust trend test (Theil–Sen slope, Mann–Kendall significance) on each worker's memory, in 1.5 s buckets over a 90 s sliding window, on growth that has risen 9 MiB or lasted 60 s, raises `leak_detected` with the slope, a confidence and the time to the limit; a restart follows when `enforceHardLimits` allows.",
    }
    GC_HINT {
        path: "resources.memoryManagement.garbageCollectionHint",
        flag: "garbage-collection-hint",
        slot: Slot::Bool(|o| &mut o.memory.memory_management.garbage_collection_hint),
        default: "false",
        default_from: "XyPriss",
        help: "Ask a worker that crosses its critical threshold to collect garbage",
        doc: "At a worker's critical crossing, writes a `gc_hint` line on the worker's control channel (`XYPRISS_CONTROL_FD`); it can never kill the worker.",
    }
    MM_LOW_MEMORY_MODE {
        path: "resources.memoryManagement.lowMemoryMode",
        flag: "low-memory-mode",
        slot: Slot::Bool(|o| &mut o.memory.memory_management.low_memory_mode),
        default: "false",
        default_from: "ref",
        help: "Start the pool in low-memory mode",
        doc: "Starts the pool in [low-memory mode](#low-memory-mode) with the configuration's own figures (no cap, no tightening); it ends when an operator turns it off.",
    }
    RESERVATION {
        path: "resources.memoryManagement.memoryReservation",
        flag: "memory-reservation",
        slot: Slot::Size(|o| &mut o.memory.memory_management.memory_reservation),
        default: "1GB",
        default_from: "ref",
        help: "Host memory kept free for the system (e.g. 1GB)",
        doc: "Host memory kept for the system: the system scope's capacity is the host's memory less it, and the pool's budget (at start for `workers: \"auto\"`, then for scaling) is at most what is available less it.",
    }
    SWAP_LIMIT {
        path: "resources.memoryManagement.swapUsageLimit",
        flag: "swap-usage-limit",
        slot: Slot::Percent(|o| &mut o.memory.memory_management.swap_usage_limit),
        default: "10",
        default_from: "XyPriss",
        help: "The host's swap in use, in percent, over which the pool enters low-memory mode (a host signal, not a limit)",
        doc: "A host signal, not a limit: when the host's swap in use (all processes') is over this percent of the host's swap, [low-memory mode](#low-memory-mode) turns on; it may end once swap is 5 points under it. No worker's own swap is limited by it.",
    }
    PO_ENABLED {
        path: "resources.performanceOptimization.enabled",
        flag: "performance-optimization",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.enabled),
        default: "true",
        default_from: "XyPriss",
        help: "Apply the performanceOptimization options that are on",
        doc: "Applies the flags of this section that are on; off, all of them are off.",
    }
    PO_LOW_MEMORY_MODE {
        path: "resources.performanceOptimization.lowMemoryMode",
        flag: "performance-low-memory-mode",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.low_memory_mode),
        default: "false",
        default_from: "ours",
        help: "Start the pool in low-memory mode (as memoryManagement.lowMemoryMode)",
        doc: "The same as `memoryManagement.lowMemoryMode`: the pool starts in low-memory mode, with the configuration's own figures.",
    }
    REDUCED_LOGGING {
        path: "resources.performanceOptimization.reducedLogging",
        flag: "reduced-logging",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.reduced_logging),
        default: "false",
        default_from: "ours",
        help: "Log warnings only, and no periodic memory samples",
        doc: "stderr logs at warning level unless `XYPRISS_LOG` says otherwise, and no periodic (`trigger: interval`) `memory_sample`s: only moves by the granularity, threshold crossings and first samples.",
    }
    COMPACT_METRICS {
        path: "resources.performanceOptimization.compactMetrics",
        flag: "compact-metrics",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.compact_metrics),
        default: "false",
        default_from: "ours",
        help: "Smaller memory_sample events",
        doc: "`memory_sample` events leave out `anonBytes`, `fileBytes`, `shmemBytes`, `swapBytes` and `pageFaults`.",
    }
    LAZY_WORKER_INIT {
        path: "resources.performanceOptimization.lazyWorkerInit",
        flag: "lazy-worker-init",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.lazy_worker_init),
        default: "false",
        default_from: "ours",
        help: "Start minWorkers workers and grow on load",
        doc: "Starts `minWorkers` workers; load (CPU at `scaleUpThreshold.cpu`) grows the pool on demand, up to `workers` (or `maxWorkers` with `autoScaling`).",
    }
    WORKER_POOLING {
        path: "resources.performanceOptimization.workerPooling",
        flag: "worker-pooling",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.worker_pooling),
        default: "false",
        default_from: "ours",
        help: "A hint for the app only: XYPRISS_WORKER_POOLING=1 in its environment",
        doc: "A hint for the app, nothing more: workers get `XYPRISS_WORKER_POOLING=1` (else `0`) and xypriss itself changes nothing; the app (or the Node library) decides what it means.",
    }
    MEMORY_POOLING {
        path: "resources.performanceOptimization.memoryPooling",
        flag: "memory-pooling",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.memory_pooling),
        default: "false",
        default_from: "ours",
        help: "A hint for the app only: XYPRISS_MEMORY_POOLING=1 in its environment",
        doc: "A hint for the app, nothing more: workers get `XYPRISS_MEMORY_POOLING=1` (else `0`) and xypriss itself changes nothing; the app (or the Node library) decides what it means.",
    }
    DISABLE_DEBUG {
        path: "resources.performanceOptimization.disableDebugFeatures",
        flag: "disable-debug-features",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.disable_debug_features),
        default: "false",
        default_from: "ours",
        help: "Refuse --bpf-log and cap logs at info",
        doc: "`--bpf-log` is refused at start, and logs are never more detailed than info, whatever `XYPRISS_LOG` says.",
    }
    MINIMAL_FOOTPRINT {
        path: "resources.performanceOptimization.minimalFootprint",
        flag: "minimal-footprint",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.minimal_footprint),
        default: "false",
        default_from: "ours",
        help: "Keep xypriss's own memory small",
        doc: "xypriss's own memory: at most 4096 NDJSON lines wait for a slow stdout (instead of 65536) before lines are counted as lost.",
    }
    EFFICIENT_DATA {
        path: "resources.performanceOptimization.efficientDataStructures",
        flag: "efficient-data-structures",
        slot: Slot::Bool(|o| &mut o.memory.performance_optimization.efficient_data_structures),
        default: "false",
        default_from: "ours",
        help: "A hint for the app only: XYPRISS_EFFICIENT_DATA_STRUCTURES=1 in its environment",
        doc: "A hint for the app, nothing more: workers get `XYPRISS_EFFICIENT_DATA_STRUCTURES=1` (else `0`) and xypriss itself changes nothing; the app (or the Node library) decides what it means.",
    }
    EN_ENABLED {
        path: "resources.enforcement.enabled",
        flag: "enforcement",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.enabled),
        default: "true",
        default_from: "XyPriss",
        help: "Act on the limits as the enforcement options say",
        doc: "Acts on the limits as this section says; off, limits are observed and reported only.",
    }
    HARD_LIMITS {
        path: "resources.enforcement.enforceHardLimits",
        flag: "enforce-hard-limits",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.enforce_hard_limits),
        default: "false",
        default_from: "ours",
        help: "Replace a worker over --max-memory-per-worker (or leaking), its successor ready first",
        doc: "At `limit_exceeded` (or a leak) the worker is replaced gracefully: its successor is ready before it gets its stop signal. At `limit_exceeded` the old worker is also throttled at once (see [Throttling](#throttling)), and its cgroup has a kernel backstop of the limit + max(10 %, 16 MiB), so that it cannot run away meanwhile.",
    }
    SOFT_WARNINGS {
        path: "resources.enforcement.softLimitWarnings",
        flag: "soft-limit-warnings",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.soft_limit_warnings),
        default: "true",
        default_from: "ours",
        help: "Without hard limits, say a worker's crossing of its limit as an alert",
        doc: "Without `enforceHardLimits`, a worker crossing its limit (`maxMemoryPerWorker`, not the warning threshold) is said as a `limit_exceeded` alert with `action: none`; false keeps it quiet.",
    }
    DEGRADATION {
        path: "resources.enforcement.gracefulDegradation",
        flag: "graceful-degradation",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.graceful_degradation),
        default: "false",
        default_from: "ours",
        help: "Shed one worker per cooldown while the host's memory stays critical",
        doc: "While the system scope (the host's memory) stays critical, one worker less per cooldown (30 s, 10 s aggressive), down to `minWorkers`, on top of [low-memory mode](#low-memory-mode), before the kernel's OOM killer has to act. It never replaces a worker.",
    }
    THROTTLING {
        path: "resources.enforcement.resourceThrottling",
        flag: "resource-throttling",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.resource_throttling),
        default: "false",
        default_from: "ours",
        help: "Have the kernel slow a worker that crosses its critical threshold",
        doc: "At a worker's critical crossing, the kernel is told to slow the worker rather than kill it, and `memory_throttling` says so; lifted when the worker is back under critical less 5 %. See [Throttling](#throttling).",
    }
    ALERT {
        path: "resources.enforcement.alertOnLimitReached",
        flag: "alert-on-limit-reached",
        slot: Slot::Bool(|o| &mut o.memory.enforcement.alert_on_limit_reached),
        default: "true",
        default_from: "ours",
        help: "Say limit crossings as alerts",
        doc: "When false, limit crossings still act but are not said.",
    }
    AS_ENABLED {
        path: "autoScaling.enabled",
        flag: "auto-scaling",
        slot: Slot::Bool(|o| &mut o.memory.auto_scaling.enabled),
        default: "false",
        default_from: "ours",
        help: "Grow and shrink the pool on load within --min-workers..--max-workers",
        doc: "Load-driven scaling between `minWorkers` and `maxWorkers` on the thresholds below; see [Scaling](#scaling).",
    }
    MIN_WORKERS {
        path: "autoScaling.minWorkers",
        flag: "min-workers",
        slot: Slot::Count(|o| &mut o.min_workers),
        default: "1",
        default_from: "ours",
        help: "The pool never shrinks below this many workers",
        doc: "The pool never shrinks below this (scaling, low-memory mode, SIGTTOU, the API); from 1 to 4096.",
    }
    MAX_WORKERS_OPT {
        path: "autoScaling.maxWorkers",
        flag: "max-workers",
        slot: Slot::Count(|o| &mut o.max_workers),
        default: "4096",
        default_from: "ours",
        help: "The pool never grows above this many workers",
        doc: "The pool never grows above this (scaling, SIGTTIN, the API); from 1 to 4096, at least `minWorkers`.",
    }
    MEMORY_BASED {
        path: "autoScaling.memoryBasedScaling",
        flag: "memory-based-scaling",
        slot: Slot::Bool(|o| &mut o.memory.auto_scaling.memory_based_scaling),
        default: "true",
        default_from: "ours",
        help: "Load-driven scaling also asks memory",
        doc: "Memory scales the pool too, and bounds it: see [Scaling](#scaling).",
    }
    AGGRESSIVE {
        path: "autoScaling.aggressiveMemoryScaling",
        flag: "aggressive-memory-scaling",
        slot: Slot::Bool(|o| &mut o.memory.auto_scaling.aggressive_memory_scaling),
        default: "false",
        default_from: "ours",
        help: "Scale two workers a step, every 10 s",
        doc: "Two workers a step instead of one, and 10 s between steps instead of 30 s, for load and memory alike.",
    }
    DOWN_MEMORY {
        path: "autoScaling.scaleDownThreshold.memory",
        flag: "scale-down-memory-threshold",
        slot: Slot::Percent(|o| &mut o.memory.auto_scaling.scale_down_threshold.memory),
        default: "30",
        default_from: "ours, as the reference's advanced example",
        help: "The pool shrinks while its memory and its workers' are at most this percent (of its budget, of their limit)",
        doc: "With `memoryBasedScaling`, the pool shrinks while it is at most this percent of its budget and its workers at most this percent of `maxMemoryPerWorker` (see [Scaling](#scaling)).",
    }
    DOWN_CPU {
        path: "autoScaling.scaleDownThreshold.cpu",
        flag: "scale-down-cpu-threshold",
        slot: Slot::Percent(|o| &mut o.memory.auto_scaling.scale_down_threshold.cpu),
        default: "30",
        default_from: "ours",
        help: "The pool shrinks when its mean CPU is at most this percent",
        doc: "The pool shrinks when its ready workers' mean CPU over 10 s is at most this (100 = one core each); must be below the scale-up CPU threshold.",
    }
    UP_MEMORY {
        path: "autoScaling.scaleUpThreshold.memory",
        flag: "scale-up-memory-threshold",
        slot: Slot::Percent(|o| &mut o.memory.auto_scaling.scale_up_threshold.memory),
        default: "80",
        default_from: "ours, as the reference's advanced example",
        help: "Workers at this percent of their limit add a worker, while the pool stays under this percent of its budget",
        doc: "With `memoryBasedScaling`, workers at this percent of `maxMemoryPerWorker` or more (their mean) add a worker, and any scale-up happens only while one more worker of the observed p95 size keeps the pool under this percent of its budget (see [Scaling](#scaling)); must be above the scale-down one.",
    }
    UP_CPU {
        path: "autoScaling.scaleUpThreshold.cpu",
        flag: "scale-up-cpu-threshold",
        slot: Slot::Percent(|o| &mut o.memory.auto_scaling.scale_up_threshold.cpu),
        default: "80",
        default_from: "ours",
        help: "The pool grows when its mean CPU is at least this percent",
        doc: "The pool grows when its ready workers' mean CPU over 10 s is at least this.",
    }
}

/// The option at `path` (under `cluster.config`).
pub fn at(path: &str) -> Option<&'static Opt> {
    ALL.iter().find(|opt| opt.path == path)
}
