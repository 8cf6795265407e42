//! Defaults, then the `--config` file, then the flags, into one
//! [`Options`]; then the checks no single value can make, each naming the
//! values as the user wrote them (the JSON path and file, or the flag).

use std::{collections::HashMap, fmt, path::Path, path::PathBuf};

use xypriss_ebpf::MAX_WORKERS;

use super::{
    defs::{self, Opt, Value},
    error::{ConfigError, Origin, Setting},
    file::{self, Parsed},
};
use crate::{
    settings::{Options, WorkerCount},
    size::Size,
};

/// The options, resolved, and what the file held that xypriss ignores.
#[derive(Debug)]
pub struct Resolved {
    pub options: Options,
    /// The createServer sections the file has besides `cluster`.
    pub ignored: Vec<&'static str>,
}

/// Resolves the options: [`Options::default`], then `file` (its path and
/// bytes) if given, then `flags`, then checks the whole.
pub fn resolve(
    file: Option<(&Path, &[u8])>,
    flags: &[(&'static Opt, Value)],
) -> Result<Resolved, ConfigError> {
    let mut merged = Merged::default();
    let mut ignored = Vec::new();
    if let Some((path, bytes)) = file {
        let Parsed {
            entries,
            prefix,
            ignored: sections,
        } = file::parse(path, bytes)?;
        for (opt, value) in entries {
            merged.set(
                opt,
                value,
                Given::File {
                    file: path.to_path_buf(),
                    path: format!("{prefix}{}", opt.path),
                },
            );
        }
        ignored = sections;
    }
    for &(opt, value) in flags {
        merged.set(opt, value, Given::Flag);
    }
    merged.check()?;
    Ok(Resolved {
        options: merged.options,
        ignored,
    })
}

/// Where a set value came from, with the path its source used.
enum Given {
    File { file: PathBuf, path: String },
    Flag,
}

/// The options being merged, and where each value came from (absent: the
/// default), so that an error names what the user wrote.
#[derive(Default)]
struct Merged {
    options: Options,
    from: HashMap<&'static str, Given>,
}

impl Merged {
    fn set(&mut self, opt: &'static Opt, value: Value, given: Given) {
        opt.slot.set(&mut self.options, value);
        self.from.insert(opt.path, given);
    }

    /// `opt`'s value as the user gave it, for an error.
    fn setting(&self, opt: &Opt, value: impl fmt::Display) -> Setting {
        let value = value.to_string();
        match self.from.get(opt.path) {
            Some(Given::File { file, path }) => Setting {
                path: path.clone(),
                value,
                origin: Origin::File(file.clone()),
            },
            Some(Given::Flag) => Setting {
                path: format!("--{}", opt.flag),
                value,
                origin: Origin::Flag,
            },
            None => Setting {
                path: opt.path.into(),
                value,
                origin: Origin::Default,
            },
        }
    }

    fn invalid(
        &self,
        opt: &Opt,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Value {
            setting: self.setting(opt, value),
            reason: reason.into(),
        }
    }

    fn order(&self, high: (&Opt, f64), relation: &'static str, low: (&Opt, f64)) -> ConfigError {
        ConfigError::Order {
            setting: self.setting(high.0, high.1),
            relation,
            other: Box::new(self.setting(low.0, low.1)),
        }
    }

    /// Refuses the impossible values, naming them as the user wrote them.
    fn check(&self) -> Result<(), ConfigError> {
        use defs::{
            CHECK_INTERVAL, CRITICAL, DOWN_CPU, DOWN_MEMORY, MAX_MEMORY_PER_WORKER,
            MAX_TOTAL_MEMORY, MAX_WORKERS_OPT, MIN_WORKERS, SWAP_LIMIT, UP_CPU, UP_MEMORY, WARNING,
            WORKERS,
        };
        let o = &self.options;
        let m = &o.memory.memory_management;
        let a = &o.memory.auto_scaling;
        let pool_bound = |opt: &Opt, n: u32| {
            if (1..=MAX_WORKERS).contains(&n) {
                Ok(())
            } else {
                Err(self.invalid(opt, n, format!("must be from 1 to {MAX_WORKERS} workers")))
            }
        };
        if let WorkerCount::Fixed(n) = o.workers {
            pool_bound(&WORKERS, n)?;
        }
        pool_bound(&MIN_WORKERS, o.min_workers)?;
        pool_bound(&MAX_WORKERS_OPT, o.max_workers)?;
        for (opt, bytes) in [
            (&MAX_MEMORY_PER_WORKER, o.memory.max_memory_per_worker),
            (&MAX_TOTAL_MEMORY, m.max_total_memory),
        ] {
            if bytes < 1 << 20 {
                return Err(self.invalid(opt, Size(bytes), "must be at least 1MiB"));
            }
        }
        if m.memory_check_interval.is_zero() {
            return Err(self.invalid(&CHECK_INTERVAL, "0ms", "must be more than 0 milliseconds"));
        }
        for (opt, value) in [
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
                    opt,
                    value,
                    "must be a percentage above 0 and at most 100",
                ));
            }
        }
        for (low, high) in [
            (
                (&WARNING, m.memory_warning_threshold),
                (&CRITICAL, m.memory_critical_threshold),
            ),
            (
                (&DOWN_MEMORY, a.scale_down_threshold.memory),
                (&UP_MEMORY, a.scale_up_threshold.memory),
            ),
            (
                (&DOWN_CPU, a.scale_down_threshold.cpu),
                (&UP_CPU, a.scale_up_threshold.cpu),
            ),
        ] {
            if high.1 <= low.1 {
                return Err(self.order(high, "above", low));
            }
        }
        if o.min_workers > o.max_workers {
            return Err(ConfigError::Order {
                setting: self.setting(&MIN_WORKERS, o.min_workers),
                relation: "at most",
                other: Box::new(self.setting(&MAX_WORKERS_OPT, o.max_workers)),
            });
        }
        if let WorkerCount::Fixed(n) = o.workers
            && !(o.min_workers..=o.max_workers).contains(&n)
        {
            let (relation, bound, value) = if n < o.min_workers {
                ("at least", &MIN_WORKERS, o.min_workers)
            } else {
                ("at most", &MAX_WORKERS_OPT, o.max_workers)
            };
            return Err(ConfigError::Order {
                setting: self.setting(&WORKERS, n),
                relation,
                other: Box::new(self.setting(bound, value)),
            });
        }
        let per_worker = o.memory.max_memory_per_worker;
        let least = per_worker.saturating_mul(u64::from(o.min_workers));
        if m.enabled && least > m.max_total_memory {
            return Err(ConfigError::OverTotal {
                per_worker: self.setting(&MAX_MEMORY_PER_WORKER, Size(per_worker)),
                per_worker_bytes: per_worker,
                min_workers: Box::new(self.setting(&MIN_WORKERS, o.min_workers)),
                min_workers_count: o.min_workers,
                total: Box::new(self.setting(&MAX_TOTAL_MEMORY, Size(m.max_total_memory))),
            });
        }
        Ok(())
    }
}
