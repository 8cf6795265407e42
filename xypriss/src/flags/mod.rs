//! The command line, in ripgrep's manner: clap parses the words into
//! [`Flags`] (one struct per command), then [`resolve`] checks what clap
//! cannot and turns `run`'s flags into the [`crate::settings`] the rest of
//! xypriss trusts. The arrow points one way: `flags` knows the settings,
//! nothing downstream knows `flags`.
//!
//! - [`defs`]: every option of XyPriss's configuration, declared once (its
//!   file key, flag, default and docs).
//! - [`file`]: the `--config` file, read into those options' values.
//! - [`merge`]: defaults, file and flags into one [`crate::settings::Options`],
//!   checked.
//! - [`run`]: `xypriss run`'s flags.
//! - [`resolve`]: `run`'s flags into a [`crate::settings::RunConfig`], with
//!   what needs the machine (the app, users, the host's size).

pub mod defs;
pub mod error;
pub mod file;
pub mod merge;
pub mod resolve;
pub mod run;
#[cfg(test)]
mod tests;

use std::{ffi::OsString, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use error::{ConfigError, Origin, Setting};
pub use resolve::{FlagError, Resolved, resolve};
pub use run::{ConfigFlags, Ready, RunFlags};

use crate::settings::WorkerCount;

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
    /// Checks the kernel, privileges, lockdown, ring buffers, BTF and each
    /// tracepoint, the memory cgroup hierarchy and PSI. Exits 0 when `run` would work
    /// fully, 1 when it would degrade (to /proc polling, or to workers without cgroups).
    #[command(after_help = "\
Examples:
  sudo xypriss doctor
  sudo xypriss doctor --json | jq '.checks[] | select(.status != \"ok\")'
  xypriss doctor --btf /tmp/vmlinux --cgroup-root /sys/fs/cgroup")]
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

/// A pool's name: it names the pool's cgroup and its control socket.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `--name` of the commands that talk to a pool: as `run` checks it.
fn parse_name(name: &str) -> Result<String, String> {
    if valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err("use 1 to 64 letters, digits, `_` or `-`".into())
    }
}
