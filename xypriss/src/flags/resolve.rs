//! `run`'s flags into a [`RunConfig`]: as ripgrep's `hiargs.rs` turns its
//! low-level arguments into the high-level ones, this is where the flags meet
//! the machine (the app in PATH, users and groups, the host's CPUs and
//! memory for `workers: "auto"`), and where what clap cannot check is
//! checked. Everything after trusts the result.

use std::{
    io::IsTerminal as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::unistd::{Group, User};

use super::{ConfigError, RunFlags, file, merge, valid_name};
use crate::{
    output::ndjson::Format,
    settings::{self, Host, ObserverChoice, ReadyMode, RunConfig},
    size::Size,
    supervise::{
        backoff::Policy,
        identity::{self, Account, IdentityError},
        spawn::Identity,
        workers,
    },
};

/// A checked configuration, and what to tell the user about it once logging
/// is set up.
#[derive(Debug)]
pub struct Resolved {
    pub config: RunConfig,
    /// Notices about the configuration, such as the createServer sections
    /// the file has that xypriss ignores.
    pub notices: Vec<String>,
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
    #[error(transparent)]
    Identity(#[from] IdentityError),
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
pub fn resolve(flags: RunFlags) -> Result<Resolved, FlagError> {
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
    let file = match &flags.config.config {
        None => None,
        Some(path) => Some((path.clone(), file::read_capped(path)?)),
    };
    let merge::Resolved { options, ignored } = merge::resolve(
        file.as_ref()
            .map(|(path, bytes)| (path.as_path(), bytes.as_slice())),
        &flags.config.given,
    )?;
    let mut notices = Vec::new();
    if let (Some((path, _)), false) = (&file, ignored.is_empty()) {
        notices.push(format!(
            "--config {}: ignoring `{}`: xypriss reads only `cluster` of the createServer options",
            path.display(),
            ignored.join("`, `")
        ));
    }
    let memory = &options.memory;
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
    let host = Host {
        cpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        available: workers::available_memory(),
    };
    let workers = settings::auto_workers(host, &options);
    let ready = ReadyMode::from(flags.ready);
    if ready == ReadyMode::Socket && flags.listen.is_empty() {
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
    let config = RunConfig {
        workers,
        app,
        args,
        granularity: flags.granularity.0,
        thresholds,
        wakeup_interval: flags.wakeup_interval,
        sample_interval: flags.sample_interval,
        poll_interval: flags.poll_interval,
        kill_timeout: flags.kill_timeout,
        nice: flags.nice,
        realtime: flags.realtime,
        observer,
        bpf_log: flags.bpf_log,
        kernel_fault_counts: flags.kernel_fault_counts,
        ready,
        ready_timeout: flags.ready_timeout.unwrap_or(match ready {
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
        min_workers: options.min_workers,
        max_workers: options.max_workers,
        identity,
        env: flags.env,
        name: check_name(flags.name)?,
        status_addr: flags.status_addr,
        status_read_token: flags.status_read_token,
        format: output_format(flags.pretty, flags.json),
        memory: options.memory,
    };
    Ok(Resolved { config, notices })
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

/// Resolves `--user`, `--group` and `--cwd`.
fn identity(
    user: Option<String>,
    group: Option<String>,
    cwd: Option<PathBuf>,
) -> Result<Identity, FlagError> {
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
    let given_gid = match &group {
        None => None,
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
    // Without --user: see `identity` for who, and why never root silently.
    let sudo = match &user_entry {
        Some(_) => None,
        None => match identity::default_user(
            nix::unistd::geteuid().as_raw(),
            std::env::var_os("SUDO_UID").as_deref(),
            std::env::var_os("SUDO_GID").as_deref(),
        )? {
            identity::DefaultUser::Own => None,
            identity::DefaultUser::Sudo { uid, gid } => Some((uid, gid)),
        },
    };
    let gid = given_gid
        .or(user_entry.as_ref().map(|u| u.gid.as_raw()))
        .or(sudo.map(|(_, gid)| gid));
    let uid = user_entry
        .map(|u| u.uid.as_raw())
        .or(sudo.map(|(uid, _)| uid));
    Ok(Identity {
        account: Account::of(uid.unwrap_or(nix::unistd::geteuid().as_raw())),
        uid,
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
