//! The `xypriss` command: parse, resolve, run, and turn the outcome into an
//! exit code. Errors are printed once, on stderr, with their causes.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::{
    EnvFilter, filter::LevelFilter, fmt::writer::BoxMakeWriter, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};
use xypriss::{
    flags::{self, Command, Flags, RestartTarget, Switch},
    operate,
    settings::WorkerCount,
    supervise::exec,
};

fn main() -> ExitCode {
    // A worker's first moments, in a process of its own (see supervise::exec):
    // not a command of the CLI.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == exec::ARG)
    {
        return exec::main();
    }
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xypriss: {}", message(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: most of our errors already
/// quote their source in their own message.
fn message(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Logs go to stderr, at `XYPRISS_LOG`'s levels (else `default`), never
/// more detailed than `max`; `queued` for the pool, whose loop a stalled
/// reader of stderr must not stall (see `output::stderr`).
fn init_tracing(default: &str, max: LevelFilter, queued: bool) {
    let writer = if queued {
        BoxMakeWriter::new(xypriss::output::stderr::Logs)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let filter = EnvFilter::try_from_env("XYPRISS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .with(max)
        .init();
}

fn run() -> anyhow::Result<ExitCode> {
    let flags = Flags::parse();
    if !matches!(flags.command, Command::Run(_)) {
        init_tracing("info", LevelFilter::TRACE, false);
    }
    match flags.command {
        Command::Run(run_flags) => {
            let flags::Resolved { config, notices } = flags::resolve(*run_flags)?;
            init_tracing(config.log_level(), config.max_log_level(), true);
            for notice in notices {
                tracing::warn!("{notice}");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Its blocking tasks (removing cgroups, sending to workers) are
                // started from the loop's thread, whose priority is above the rest.
                .on_thread_start(|| {
                    if let Err(err) = xypriss::supervise::priority::ordinary_this_thread() {
                        tracing::warn!("a blocking task keeps the loop's priority: {err}");
                    }
                })
                .build()?;
            let ran = runtime.block_on(xypriss::pool::run(config));
            // The last logs, before the process ends.
            xypriss::output::stderr::flush(std::time::Duration::from_secs(1));
            ran?;
        }
        Command::Doctor(doctor_flags) => return Ok(xypriss::doctor::run(&doctor_flags)?),
        Command::Watchdog => xypriss::supervise::watchdog::run()?,
        Command::Completions { shell } => {
            xypriss::dist::completions(shell, &mut std::io::stdout().lock())?;
        }
        Command::Manpages { dir } => xypriss::dist::man_pages(&dir)?,
        Command::Status { pool, json } => operate::status(&pool.name, json)?,
        Command::Scale { workers, pool } => operate::scale(&pool.name, workers)?,
        Command::Restart { target, pool } => {
            let worker = match target {
                RestartTarget::Worker(id) => Some(id),
                RestartTarget::All => None,
            };
            operate::restart(&pool.name, worker)?;
        }
        Command::LowMemory { state, pool } => {
            operate::low_memory(&pool.name, state == Switch::On)?;
        }
        Command::Events { pool } => operate::events(&pool.name)?,
        Command::Top { pool } => operate::top::run(&pool.name)?,
        Command::Recommend {
            pool,
            json,
            app,
            trial,
            workers,
        } => match app {
            Some(app) => {
                let workers = workers.map(|w| match w {
                    WorkerCount::Auto => "auto".to_owned(),
                    WorkerCount::Fixed(n) => n.to_string(),
                });
                operate::trial(&app, workers.as_deref(), trial, json)?;
            }
            None => operate::recommend(&pool.name, json)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}
