//! Command-line flags, in two steps as ripgrep does: clap parses the words
//! into [`Flags`], then [`resolve`] checks what clap cannot (the app exists and
//! is executable, thresholds are ordered, the pool fits the kernel maps) and
//! turns them into a [`RunConfig`] the rest of xypriss trusts.

use std::{
    ffi::OsString,
    io::IsTerminal as _,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use nix::{
    sys::signal::Signal,
    unistd::{Group, User},
};
use xypriss_ebpf::MAX_WORKERS;

use crate::{
    config::{self, ConfigError, MemoryConfig, MemoryFlags, Overrides},
    output::ndjson::Format,
    size::Size,
    supervise::{backoff::Policy, listen::ListenAddr, spawn::Identity, workers},
};

#[derive(Parser, Debug)]
#[command(
    name = "xypriss",
    version,
    about = "Supervises a pool of worker processes and watches their memory from inside the kernel",
    long_about = None,
)]
pub struct Flags {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Spawn a pool of workers and stream their memory as NDJSON on stdout.
    #[command(after_help = "\
Examples:
  sudo xypriss run --workers auto node server.js
  sudo xypriss run --workers 4 --granularity 4MiB -- ./app --port 8080
  xypriss run --workers 2 ./app   # without root: /proc polling, said in an `observer` event")]
    Run(Box<RunFlags>),
    /// Check what `run` needs from this machine, and say how to fix what is missing.
    ///
    /// Checks the kernel, privileges, lockdown, BTF, ring buffers, tracefs and each
    /// tracepoint, the memory cgroup hierarchy and PSI. Exits 0 when `run` would work
    /// fully, 1 when it would degrade (to /proc polling, or to workers without cgroups).
    #[command(after_help = "\
Examples:
  sudo xypriss doctor
  sudo xypriss doctor --json | jq '.checks[] | select(.status != \"ok\")'
  xypriss doctor --tracefs /mnt/tracing --cgroup-root /sys/fs/cgroup")]
    Doctor(crate::doctor::DoctorFlags),
    /// Show a running pool's workers and their memory, as a table or as JSON.
    #[command(after_help = "\
Examples:
  sudo xypriss status
  sudo xypriss status --name api
  sudo xypriss status --json | jq '.workers[] | {id, rssBytes}'")]
    Status {
        #[command(flatten)]
        pool: PoolName,
        /// Print the pool's status as one JSON object (the control socket's reply).
        #[arg(long)]
        json: bool,
    },
    /// Set the number of workers of a running pool, within its --min-workers and --max-workers.
    #[command(after_help = "\
Examples:
  sudo xypriss scale 4
  sudo xypriss scale 1 --name api")]
    Scale {
        /// The new number of workers.
        #[arg(value_name = "N")]
        workers: u32,
        #[command(flatten)]
        pool: PoolName,
    },
    /// Replace a worker, or every worker one at a time, each new process ready before the old one stops.
    #[command(after_help = "\
Examples:
  sudo xypriss restart 0
  sudo xypriss restart all --name api")]
    Restart {
        /// A worker id (its XYPRISS_WORKER_ID), or `all` for a rolling restart.
        #[arg(value_name = "ID|all")]
        target: RestartTarget,
        #[command(flatten)]
        pool: PoolName,
    },
    /// Turn a running pool's low-memory mode on or off.
    #[command(after_help = "\
Examples:
  sudo xypriss low-memory on
  sudo xypriss low-memory off --name api")]
    LowMemory {
        #[arg(value_enum, value_name = "on|off")]
        state: Switch,
        #[command(flatten)]
        pool: PoolName,
    },
    /// Follow a running pool's events: the NDJSON lines of its stdout, from now on.
    #[command(after_help = "\
Examples:
  sudo xypriss events
  sudo xypriss events --name api | jq -c 'select(.event == \"memory_alert\")'")]
    Events {
        #[command(flatten)]
        pool: PoolName,
    },
    /// A live view of a running pool: memory sparklines, fault rates, alerts. q quits.
    #[command(after_help = "\
Examples:
  sudo xypriss top
  sudo xypriss top --name api")]
    Top {
        #[command(flatten)]
        pool: PoolName,
    },
    /// Memory recommendations and the optimal worker count for this host, from a running
    /// pool, or from a short trial of an app (--app).
    #[command(after_help = "\
Examples:
  sudo xypriss recommend
  sudo xypriss recommend --name api --json
  sudo xypriss recommend --trial 60s --workers 4 --app node server.js")]
    Recommend {
        #[command(flatten)]
        pool: PoolName,
        /// Print the recommendations as one JSON object.
        #[arg(long)]
        json: bool,
        /// Run this app (and its arguments: put --app last) in a pool of its own for
        /// --trial, then recommend from what its workers used.
        #[arg(long, value_name = "APP", num_args = 1.., allow_hyphen_values = true)]
        app: Option<Vec<OsString>>,
        /// How long the --app trial runs.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION", requires = "app")]
        trial: Duration,
        /// The trial pool's --workers (default auto).
        #[arg(long, value_name = "N|auto", requires = "app")]
        workers: Option<WorkerCount>,
    },
    /// Internal: started by `run`; when its stdin closes (xypriss ended, however),
    /// kills and removes the cgroups of pools whose xypriss is gone.
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
    /// Internal: print the completion script for SHELL (`cargo xtask dist` runs it).
    #[command(name = "__completions", hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: write the man pages, one per command, into DIR (`cargo xtask dist` runs it).
    #[command(name = "__manpages", hide = true)]
    Manpages { dir: PathBuf },
}

/// `--name` of the commands that talk to a running pool.
#[derive(Args, Debug)]
pub struct PoolName {
    /// The pool to talk to: the `--name` it was started with.
    #[arg(long, default_value = "default", value_name = "NAME", value_parser = parse_name)]
    pub name: String,
}

/// `xypriss restart`'s target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartTarget {
    Worker(u32),
    All,
}

impl FromStr for RestartTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        s.parse()
            .map(Self::Worker)
            .map_err(|_| format!("`{s}` is neither a worker id nor `all`"))
    }
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Args, Debug)]
pub struct RunFlags {
    /// How many workers: a number, or `auto` (default, unless the config file says).
    #[arg(long, value_name = "N|auto", allow_hyphen_values = true)]
    pub workers: Option<WorkerCount>,

    /// Report a worker's memory when it moved by at least this much (e.g. 1MiB, 512KB).
    #[arg(
        long,
        default_value = "1MiB",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub granularity: Size,

    /// Each worker's memory limit (default 512MB). Warning and critical thresholds are percentages of it.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_memory_per_worker: Option<Size>,

    /// Warning threshold, in percent of --max-memory-per-worker (default 80).
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub memory_warning_threshold: Option<f64>,

    /// Critical threshold, in percent of --max-memory-per-worker (default 95).
    #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
    pub memory_critical_threshold: Option<f64>,

    /// The memory options of XyPriss's configuration, from `--config FILE` and their flags.
    #[command(flatten)]
    pub memory: MemoryFlags,

    /// Samples wake xypriss at most this often; threshold crossings always wake it at once.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub wakeup_interval: Duration,

    /// How often idle workers' fault counts and rates are refreshed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub sample_interval: Duration,

    /// How often /proc is read when eBPF is unavailable.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub poll_interval: Duration,

    /// How long workers get to exit after their stop signal, before SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub kill_timeout: Duration,

    /// Bind ADDR once and hand it to every worker as fd 3, 4, … (systemd socket activation):
    /// host:port, [v6]:port, or a Unix socket path. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// When a worker counts as ready: `delay` (after --ready-timeout, or at READY=1 if sooner),
    /// `notify` (only at READY=1 on NOTIFY_SOCKET), or `socket` (once it waits for connections
    /// on the --listen socket). With notify and socket, none within --ready-timeout is a failed start.
    #[arg(long, value_enum, default_value = "delay", value_name = "MODE")]
    pub ready: ReadyMode,

    /// The readiness delay (`--ready delay`, default 1s) or deadline (`notify`, `socket`: default 60s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub ready_timeout: Option<Duration>,

    /// The signal that asks a worker to stop (e.g. SIGTERM, SIGINT, SIGQUIT, TERM).
    #[arg(long, default_value = "SIGTERM", value_name = "SIGNAL", value_parser = parse_signal)]
    pub stop_signal: Signal,

    /// The first restart delay of a crashed worker.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_delay: Duration,

    /// Each quick failure in a row multiplies the restart delay by this.
    #[arg(
        long,
        default_value_t = 1.5,
        value_name = "FACTOR",
        allow_hyphen_values = true
    )]
    pub restart_backoff: f64,

    /// The longest restart delay.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_max_delay: Duration,

    /// A worker up this long before it crashed was healthy: its failures count from zero again.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_reset_after: Duration,

    /// After this many quick failures in a row, a worker is marked errored and not restarted.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub max_quick_restarts: u32,

    /// The pool never shrinks below this many workers.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub min_workers: Option<u32>,

    /// The pool never grows above this many workers.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_workers: Option<u32>,

    /// Run workers as this user (name or uid); they then have no capabilities.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run workers with this group (name or gid); default: the --user's primary group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Run workers in this directory.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable for workers (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(OsString, OsString)>,

    /// The pool's name: several pools can run side by side under different names.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub name: String,

    /// Write events as human lines, coloured on a terminal (the default on a terminal).
    #[arg(long, conflicts_with = "json")]
    pub pretty: bool,

    /// Write events as NDJSON even on a terminal (the default on a pipe or file).
    #[arg(long)]
    pub json: bool,

    /// Serve status, metrics and the control API over HTTP on this address: PORT (on
    /// 127.0.0.1) or HOST:PORT. Off by default; any address off loopback is your choice.
    #[arg(long, value_name = "[HOST:]PORT", value_parser = parse_status_addr, allow_hyphen_values = true)]
    pub status_addr: Option<SocketAddr>,

    /// Fail instead of falling back to /proc polling when eBPF cannot be used.
    #[arg(long, conflicts_with = "no_ebpf")]
    pub require_ebpf: bool,

    /// Do not load eBPF: observe by polling /proc.
    #[arg(long)]
    pub no_ebpf: bool,

    /// Log from the BPF programs (forks, exits, OOM victims) to stderr; costs per event.
    #[arg(long)]
    pub bpf_log: bool,

    /// The app to run, and its arguments (everything after the app is passed through untouched).
    #[arg(required = true, trailing_var_arg = true, value_name = "APP")]
    pub command: Vec<OsString>,
}

/// `--ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadyMode {
    /// Ready after `--ready-timeout`, or at `READY=1` if sooner.
    Delay,
    /// Ready at `READY=1` only.
    Notify,
    /// Ready once it waits for connections on a `--listen` socket (or at `READY=1`).
    Socket,
}

/// `--workers`: a count or `auto`.
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
    pub observer: ObserverChoice,
    pub bpf_log: bool,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub listen: Vec<ListenAddr>,
    pub stop_signal: Signal,
    pub restart: Policy,
    pub min_workers: u32,
    pub max_workers: u32,
    pub identity: Identity,
    pub env: Vec<(OsString, OsString)>,
    pub name: String,
    /// `--status-addr`.
    pub status_addr: Option<SocketAddr>,
    /// How events are written on stdout.
    pub format: Format,
    /// Everything the memory options say, checked.
    pub memory: MemoryConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("APP `{app}`: not found in PATH")]
    AppNotFound { app: String },
    #[error("APP `{}`: {reason}", app.display())]
    AppUnusable { app: PathBuf, reason: String },
    #[error("--granularity {value}: must be at least 4KiB (one page)")]
    Granularity { value: Size },
    #[error("--{flag}: must be more than 0")]
    ZeroDuration { flag: &'static str },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--restart-backoff {value}: must be a factor of at least 1")]
    Backoff { value: f64 },
    #[error("--user {user}: {reason}")]
    User { user: String, reason: String },
    #[error("--group {group}: {reason}")]
    Group { group: String, reason: String },
    #[error("--ready socket needs a --listen socket to watch")]
    SocketWithoutListen,
    #[error("--name {name:?}: use 1 to 64 letters, digits, `_` or `-`")]
    Name { name: String },
    #[error("--cwd {}: {reason}", dir.display())]
    Cwd { dir: PathBuf, reason: String },
    #[error(
        "--bpf-log is a debug feature, and performanceOptimization.disableDebugFeatures turns those off"
    )]
    DebugDisabled,
}

/// Checks `flags` and fills in what they leave to the machine.
pub fn resolve(flags: RunFlags) -> Result<RunConfig, FlagError> {
    let mut command = flags.command.into_iter();
    let app = command.next().unwrap_or_default();
    let app = find_app(&app)?;
    let args = command.collect();

    if flags.granularity.0 < 4096 {
        return Err(FlagError::Granularity {
            value: flags.granularity,
        });
    }
    for (flag, value) in [
        ("wakeup-interval", flags.wakeup_interval),
        ("sample-interval", flags.sample_interval),
        ("poll-interval", flags.poll_interval),
    ] {
        if value.is_zero() {
            return Err(FlagError::ZeroDuration { flag });
        }
    }
    if !(flags.restart_backoff >= 1.0 && flags.restart_backoff.is_finite()) {
        return Err(FlagError::Backoff {
            value: flags.restart_backoff,
        });
    }
    let memory = config::resolve(
        flags.memory,
        Overrides {
            workers: flags.workers,
            max_memory_per_worker: flags.max_memory_per_worker.map(|s| s.0),
            warning: flags.memory_warning_threshold,
            critical: flags.memory_critical_threshold,
            min_workers: flags.min_workers,
            max_workers: flags.max_workers,
        },
    )?;
    let management = &memory.memory_management;
    let thresholds = if management.enabled {
        let limit = memory.max_memory_per_worker;
        let pct = |p: f64| (limit as f64 * p / 100.0) as u64;
        [
            pct(management.memory_warning_threshold),
            pct(management.memory_critical_threshold),
            limit,
        ]
    } else {
        [0; 3]
    };
    let (min_workers, max_workers) = (
        memory.auto_scaling.min_workers,
        memory.auto_scaling.max_workers,
    );
    let workers = match memory.workers {
        WorkerCount::Fixed(n) => n,
        WorkerCount::Auto => {
            workers::auto(Some(memory.max_memory_per_worker)).clamp(min_workers, max_workers)
        }
    };
    if flags.ready == ReadyMode::Socket && flags.listen.is_empty() {
        return Err(FlagError::SocketWithoutListen);
    }
    let optimization = &memory.performance_optimization;
    if flags.bpf_log && optimization.enabled && optimization.disable_debug_features {
        return Err(FlagError::DebugDisabled);
    }
    let identity = identity(flags.user, flags.group, flags.cwd)?;
    let observer = match (flags.require_ebpf, flags.no_ebpf) {
        (true, _) => ObserverChoice::Require,
        (false, true) => ObserverChoice::Procfs,
        (false, false) => ObserverChoice::Prefer,
    };
    Ok(RunConfig {
        workers,
        app,
        args,
        granularity: flags.granularity.0,
        thresholds,
        wakeup_interval: flags.wakeup_interval,
        sample_interval: flags.sample_interval,
        poll_interval: flags.poll_interval,
        kill_timeout: flags.kill_timeout,
        observer,
        bpf_log: flags.bpf_log,
        ready: flags.ready,
        ready_timeout: flags.ready_timeout.unwrap_or(match flags.ready {
            ReadyMode::Delay => Duration::from_secs(1),
            ReadyMode::Notify | ReadyMode::Socket => Duration::from_secs(60),
        }),
        listen: flags.listen,
        stop_signal: flags.stop_signal,
        restart: Policy {
            initial: flags.restart_delay,
            factor: flags.restart_backoff,
            max: flags.restart_max_delay,
            reset_after: flags.restart_reset_after,
            max_quick_failures: flags.max_quick_restarts,
        },
        min_workers,
        max_workers,
        identity,
        env: flags.env,
        name: check_name(flags.name)?,
        status_addr: flags.status_addr,
        format: output_format(flags.pretty, flags.json),
        memory,
    })
}

impl RunConfig {
    /// Whether `performanceOptimization` turns `flag` on.
    pub fn optimizes(
        &self,
        flag: impl Fn(&crate::config::PerformanceOptimization) -> bool,
    ) -> bool {
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

/// `--pretty`, `--json`, or what stdout is: human lines on a terminal,
/// NDJSON on a pipe or a file. Colours only on a terminal, and not when
/// `NO_COLOR` is set.
fn output_format(pretty: bool, json: bool) -> Format {
    let terminal = std::io::stdout().is_terminal();
    if json || !(pretty || terminal) {
        return Format::Json;
    }
    Format::Pretty {
        colour: terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// `--status-addr`: a port alone means loopback.
fn parse_status_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is neither a port nor HOST:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)")
    })
}

/// Resolves `--user`, `--group` and `--cwd`.
fn identity(
    user: Option<String>,
    group: Option<String>,
    cwd: Option<PathBuf>,
) -> Result<Identity, FlagError> {
    let user_entry = match &user {
        None => None,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(uid.into()),
                Err(_) => User::from_name(name),
            };
            let reason = |r: String| FlagError::User {
                user: name.clone(),
                reason: r,
            };
            Some(
                found
                    .map_err(|e| reason(e.to_string()))?
                    .ok_or_else(|| reason("no such user".into()))?,
            )
        }
    };
    let gid = match &group {
        None => user_entry.as_ref().map(|u| u.gid.as_raw()),
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(gid.into()),
                Err(_) => Group::from_name(name),
            };
            let reason = |r: String| FlagError::Group {
                group: name.clone(),
                reason: r,
            };
            Some(
                found
                    .map_err(|e| reason(e.to_string()))?
                    .ok_or_else(|| reason("no such group".into()))?
                    .gid
                    .as_raw(),
            )
        }
    };
    if let Some(dir) = &cwd {
        let unusable = |reason: &str| FlagError::Cwd {
            dir: dir.clone(),
            reason: reason.into(),
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(unusable("not a directory")),
            Err(e) => return Err(unusable(&e.to_string())),
        }
    }
    Ok(Identity {
        uid: user_entry.map(|u| u.uid.as_raw()),
        gid,
        cwd,
    })
}

/// `--name`: it names the pool's cgroup and its control socket.
fn check_name(name: String) -> Result<String, FlagError> {
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(FlagError::Name { name })
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `--name` of the commands that talk to a pool: as `run` checks it.
fn parse_name(name: &str) -> Result<String, String> {
    check_name(name.to_owned()).map_err(|_| "use 1 to 64 letters, digits, `_` or `-`".into())
}

/// `--stop-signal`: a signal name, with or without `SIG`, any case.
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("`{text}` is not a signal name (e.g. SIGTERM, INT, SIGQUIT)"))
}

/// `--env KEY=VALUE`.
fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') => {
            Ok((key.into(), value.into()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Resolves the app like a shell would: a path if it has a slash, else through PATH.
fn find_app(app: &std::ffi::OsStr) -> Result<PathBuf, FlagError> {
    let display = app.to_string_lossy().into_owned();
    if app.is_empty() {
        return Err(FlagError::AppNotFound { app: display });
    }
    let path = if display.contains('/') {
        PathBuf::from(app)
    } else {
        which::which(app).map_err(|_| FlagError::AppNotFound { app: display })?
    };
    check_executable(&path)?;
    Ok(path)
}

fn check_executable(path: &Path) -> Result<(), FlagError> {
    let unusable = |reason: String| FlagError::AppUnusable {
        app: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?;
    if meta.is_dir() {
        return Err(unusable("is a directory".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(unusable("is not executable (no x permission bit)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_addr_is_a_port_on_loopback_or_an_address() {
        assert_eq!(
            parse_status_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_status_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        for bad in ["", "-1", "70000", "localhost:80", "0.0.0.0"] {
            assert!(
                parse_status_addr(bad).unwrap_err().contains("neither"),
                "{bad}"
            );
        }
    }

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

    #[test]
    fn trailing_app_arguments_pass_through_untouched() {
        let flags = Flags::try_parse_from([
            "xypriss",
            "run",
            "--workers",
            "2",
            "node",
            "app.js",
            "--workers",
            "9",
            "--",
            "-x",
        ])
        .unwrap();
        let Command::Run(run) = flags.command else {
            panic!("not run");
        };
        assert_eq!(run.workers, Some(WorkerCount::Fixed(2)));
        assert_eq!(
            run.command,
            ["node", "app.js", "--workers", "9", "--", "-x"]
        );
    }

    #[test]
    fn signals_and_env_parse() {
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn pool_commands_parse_their_arguments() {
        let parse = |args: &[&str]| Flags::try_parse_from(args).map(|f| f.command);
        let Ok(Command::Restart { target, pool }) = parse(&["xypriss", "restart", "ALL"]) else {
            panic!("restart all");
        };
        assert_eq!(
            (target, pool.name.as_str()),
            (RestartTarget::All, "default")
        );
        let Ok(Command::Restart { target, .. }) = parse(&["xypriss", "restart", "3"]) else {
            panic!("restart 3");
        };
        assert_eq!(target, RestartTarget::Worker(3));
        assert!(parse(&["xypriss", "restart", "-1"]).is_err());
        assert!(parse(&["xypriss", "scale", "many"]).is_err());
        assert!(parse(&["xypriss", "low-memory", "maybe"]).is_err());
        let err = parse(&["xypriss", "status", "--name", "../etc"]).unwrap_err();
        assert!(err.to_string().contains("--name"), "{err}");
        let Ok(Command::LowMemory { state, pool }) =
            parse(&["xypriss", "low-memory", "on", "--name", "api"])
        else {
            panic!("low-memory on");
        };
        assert_eq!((state, pool.name.as_str()), (Switch::On, "api"));
    }

    #[test]
    fn double_dash_form_works_too() {
        let flags =
            Flags::try_parse_from(["xypriss", "run", "--", "./app", "--port", "1"]).unwrap();
        let Command::Run(run) = flags.command else {
            panic!("not run");
        };
        assert_eq!(run.command, ["./app", "--port", "1"]);
    }
}
