//! The `xypriss` command: parse, resolve, run, and turn the outcome into an
//! exit code. Errors are printed once, on stderr, with their causes.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use xypriss::cli::{self, Command, Flags};

fn main() -> ExitCode {
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

fn run() -> anyhow::Result<ExitCode> {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("XYPRISS_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match flags.command {
        Command::Run(run_flags) => {
            let config = cli::resolve(*run_flags)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(xypriss::controller::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watchdog => {
            xypriss::supervise::watchdog::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            xypriss::dist::completions(shell, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            xypriss::dist::man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
