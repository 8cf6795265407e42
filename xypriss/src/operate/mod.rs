//! The commands an operator runs against a live pool: `status`, `scale`,
//! `restart`, `low-memory`, `events`, `top` and `recommend` (which can also
//! start a pool of its own for a short trial: [`trial`]).
//!
//! Each is a short conversation over the pool's control socket
//! ([`crate::api::client`]); the pool does the work and says how it went.
//! What they print is cut from the pool's replies by pure functions
//! ([`table`], [`format`], [`top::model`]), so it is tested without a pool.

pub mod format;
pub mod table;
pub mod top;

use std::io::{self, Write as _};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::api::{
    Request,
    client::{Client, ClientError},
};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Pool(#[from] ClientError),
    #[error("stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("the terminal: {0}")]
    Terminal(#[source] io::Error),
    #[error("the pool's reply to {request}: {reason}")]
    Reply {
        request: &'static str,
        reason: String,
    },
    #[error("recommend --app: cannot start the trial pool: {0}")]
    TrialStart(#[source] io::Error),
    #[error(
        "recommend --app: the trial pool ended early ({status}); run the app with `xypriss run` to see why"
    )]
    TrialEnded { status: std::process::ExitStatus },
}

/// Writes `text` to stdout; a reader that went away (`| head`) is no error.
fn print(text: &str) -> Result<(), CommandError> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(CommandError::Stdout(err)),
        _ => Ok(()),
    }
}

/// Reads a reply of the shape `T`.
fn reply<T: DeserializeOwned>(request: &'static str, value: Value) -> Result<T, CommandError> {
    serde_json::from_value(value).map_err(|e| CommandError::Reply {
        request,
        reason: e.to_string(),
    })
}

/// `xypriss status [--json]`.
pub fn status(name: &str, json: bool) -> Result<(), CommandError> {
    let mut client = Client::connect(name)?;
    if json {
        let status = client.call(&Request::Status)?;
        print(&format!("{status}\n"))
    } else {
        print(&table::status(&client.status()?))
    }
}

/// `xypriss scale N`.
pub fn scale(name: &str, workers: u32) -> Result<(), CommandError> {
    #[derive(Deserialize)]
    struct Scaled {
        from: u32,
        to: u32,
    }
    let Scaled { from, to } = reply(
        "scale",
        Client::connect(name)?.call(&Request::Scale { workers })?,
    )?;
    print(&if from == to {
        format!("pool {name}: already {to} workers\n")
    } else {
        format!("pool {name}: {from} → {to} workers\n")
    })
}

/// `xypriss restart <ID|all>`.
pub fn restart(name: &str, worker: Option<u32>) -> Result<(), CommandError> {
    #[derive(Deserialize)]
    struct Restarting {
        workers: Vec<u32>,
    }
    let Restarting { workers } = reply(
        "restart",
        Client::connect(name)?.call(&Request::Restart { worker })?,
    )?;
    let ids: Vec<String> = workers.iter().map(u32::to_string).collect();
    print(&match ids.len() {
        0 => format!("pool {name}: no worker to restart\n"),
        1 => format!(
            "pool {name}: restarting worker {}; the new process is ready before the old one stops\n",
            ids[0]
        ),
        _ => format!(
            "pool {name}: restarting workers {}, one at a time, each new process ready before its predecessor stops\n",
            ids.join(", ")
        ),
    })
}

/// `xypriss low-memory on|off`.
pub fn low_memory(name: &str, enabled: bool) -> Result<(), CommandError> {
    #[derive(Deserialize)]
    struct LowMemory {
        enabled: bool,
        changed: bool,
    }
    let LowMemory { enabled, changed } = reply(
        "low_memory",
        Client::connect(name)?.call(&Request::LowMemory { enabled })?,
    )?;
    let state = format::on_off(enabled);
    print(&if changed {
        format!("pool {name}: low-memory mode {state}\n")
    } else {
        format!("pool {name}: low-memory mode was already {state}\n")
    })
}

/// `xypriss events`: the pool's NDJSON stream, from now until it stops.
pub fn events(name: &str) -> Result<(), CommandError> {
    let mut stdout = io::stdout().lock();
    for line in Client::connect(name)?.follow()? {
        let written = writeln!(stdout, "{}", line?).and_then(|()| stdout.flush());
        match written {
            Ok(()) => {}
            // The reader had enough (`| head`).
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(CommandError::Stdout(err)),
        }
    }
    Ok(())
}

/// `xypriss recommend [--json]`.
pub fn recommend(name: &str, json: bool) -> Result<(), CommandError> {
    let status = Client::connect(name)?.status()?;
    show_recommendations(&status, json)
}

/// `xypriss recommend --app APP…`: runs APP in a pool of its own (this
/// binary's `run`, `--workers` as given) for `trial`, asks it for its
/// status, stops it, and prints the recommendations from what was observed.
pub fn trial(
    app: &[std::ffi::OsString],
    workers: Option<&str>,
    trial: std::time::Duration,
    json: bool,
) -> Result<(), CommandError> {
    use std::{
        process::{Command, Stdio},
        thread::sleep,
        time::{Duration, Instant},
    };
    let name = format!("recommend-{}", std::process::id());
    let exe = std::env::current_exe().map_err(CommandError::TrialStart)?;
    let mut child = Command::new(exe)
        .args([
            "run",
            "--json",
            "--name",
            &name,
            "--workers",
            workers.unwrap_or("auto"),
        ])
        .arg("--")
        .args(app)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(CommandError::TrialStart)?;
    let stop = |child: &mut std::process::Child| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = child.wait();
    };
    let ends = Instant::now() + trial;
    while Instant::now() < ends {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CommandError::TrialEnded { status });
        }
        sleep(Duration::from_millis(100).min(ends.saturating_duration_since(Instant::now())));
    }
    let status = Client::connect(&name).and_then(|mut client| client.status());
    stop(&mut child);
    show_recommendations(&status?, json)
}

fn show_recommendations(status: &crate::report::Status, json: bool) -> Result<(), CommandError> {
    if json {
        let rss: Vec<u64> = status.workers.iter().map(|w| w.rss_bytes).collect();
        let body = serde_json::json!({
            "pool": status.pool,
            "workers": status.workers.len(),
            "workersDesired": status.workers_desired,
            "minWorkers": status.min_workers,
            "maxWorkers": status.max_workers,
            "workerRssP95Bytes": crate::recommend::p95(&rss),
            "lowMemoryMode": status.low_memory_mode,
            "memory": status.memory,
        });
        print(&format!("{body}\n"))
    } else {
        print(&table::recommend(status))
    }
}
