//! What a `run` was asked to do, resolved: plain data, no clap and no I/O.
//!
//! Why a module of its own: every stage downstream (observe, the pool, the
//! memory policy) reads its settings from here, so none of them depends on
//! how a setting was written. [`crate::flags`] turns the command line and the
//! XyPriss configuration file into these types; nothing here points back.
//!
//! - [`RunConfig`]: everything `run` does, checked.
//! - [`Options`]: the XyPriss configuration's options (the file's keys and
//!   their flags), resolved: the pool's bounds and the [`MemoryConfig`].
//! - [`auto_workers`]: what `workers: "auto"` means on a host, from figures
//!   the caller read.

mod memory;
mod pool;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

pub use memory::{
    AutoScaling, Enforcement, MemoryConfig, MemoryManagement, PerformanceOptimization,
    ScaleThreshold,
};
use nix::sys::signal::Signal;
pub use pool::{Host, Options, auto_workers};
use xypriss_ebpf::MAX_WORKERS;

use crate::{
    output::ndjson::Format,
    supervise::{
        backoff::Policy,
        listen::ListenAddr,
        priority::{Nice, Realtime},
        spawn::Identity,
    },
};

/// `--ready`: when a worker counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyMode {
    /// Ready after `--ready-timeout`, or at `READY=1` if sooner.
    Delay,
    /// Ready at `READY=1` only.
    Notify,
    /// Ready once it waits for connections on a `--listen` socket (or at `READY=1`).
    Socket,
}

/// `workers`: a count or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerCount {
    Auto,
    Fixed(u32),
}

impl FromStr for WorkerCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let n: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is neither a whole number nor `auto`"))?;
        match n {
            0 => Err("a pool needs at least 1 worker".into()),
            n if n > MAX_WORKERS => Err(format!("at most {MAX_WORKERS} workers are supported")),
            n => Ok(Self::Fixed(n)),
        }
    }
}

/// How the pool is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObserverChoice {
    /// eBPF, or /proc polling when eBPF cannot be used.
    Prefer,
    /// eBPF or nothing.
    Require,
    /// /proc polling only.
    Procfs,
}

/// A checked `run` configuration.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The pool's size at start: `workers`, with `auto` resolved.
    pub workers: u32,
    pub app: PathBuf,
    pub args: Vec<OsString>,
    pub granularity: u64,
    /// Warning, critical and limit thresholds in bytes, ascending; 0 = unset.
    pub thresholds: [u64; 3],
    pub wakeup_interval: Duration,
    pub sample_interval: Duration,
    pub poll_interval: Duration,
    pub kill_timeout: Duration,
    /// `--nice`: xypriss's own scheduling priority.
    pub nice: Nice,
    /// `--realtime`; `None`: its default, where allowed.
    pub realtime: Option<Realtime>,
    pub observer: ObserverChoice,
    pub bpf_log: bool,
    /// `--kernel-fault-counts`.
    pub kernel_fault_counts: bool,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub listen: Vec<ListenAddr>,
    pub stop_signal: Signal,
    pub restart: Policy,
    /// `autoScaling.minWorkers`: the pool's one lower bound.
    pub min_workers: u32,
    /// `autoScaling.maxWorkers`: the pool's one upper bound.
    pub max_workers: u32,
    pub identity: Identity,
    pub env: Vec<(OsString, OsString)>,
    pub name: String,
    /// `--status-addr`.
    pub status_addr: Option<SocketAddr>,
    /// `--status-read-token`: GETs take the token too.
    pub status_read_token: bool,
    /// How events are written on stdout.
    pub format: Format,
    /// Everything the memory options say, checked.
    pub memory: MemoryConfig,
}

impl RunConfig {
    /// Whether `performanceOptimization` turns `flag` on.
    pub fn optimizes(&self, flag: impl Fn(&PerformanceOptimization) -> bool) -> bool {
        let optimization = &self.memory.performance_optimization;
        optimization.enabled && flag(optimization)
    }

    /// The log level on stderr unless `XYPRISS_LOG` says: `warn` with
    /// `reducedLogging`.
    pub fn log_level(&self) -> &'static str {
        if self.optimizes(|o| o.reduced_logging) {
            "warn"
        } else {
            "info"
        }
    }

    /// The most detailed log level allowed: `info` with `disableDebugFeatures`.
    pub fn max_log_level(&self) -> tracing::level_filters::LevelFilter {
        if self.optimizes(|o| o.disable_debug_features) {
            tracing::level_filters::LevelFilter::INFO
        } else {
            tracing::level_filters::LevelFilter::TRACE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_count_parses_auto_and_bounds() {
        assert_eq!("auto".parse(), Ok(WorkerCount::Auto));
        assert_eq!("AUTO".parse(), Ok(WorkerCount::Auto));
        assert_eq!("4".parse(), Ok(WorkerCount::Fixed(4)));
        assert!(
            "0".parse::<WorkerCount>()
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            "100000"
                .parse::<WorkerCount>()
                .unwrap_err()
                .contains("at most")
        );
        assert!("-2".parse::<WorkerCount>().is_err());
        assert!("".parse::<WorkerCount>().is_err());
    }
}
