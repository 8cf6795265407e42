//! Shell completions and man pages, made from the clap definitions in
//! [`crate::flags`], so they can never drift from the flags.
//!
//! The binary makes them itself, through the hidden `__completions` and
//! `__manpages` subcommands that `cargo xtask dist` runs: xtask cannot link
//! this crate, whose build script needs the BPF toolchain that xtask is the
//! one to install, and a packager gets the same files from any built binary.
//! Hidden subcommands are internal and stay out of both: clap_mangen skips
//! them, clap_complete does not, so completions are made from [`visible`].

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::{Command, CommandFactory as _};
use clap_complete::{Generator as _, Shell};

use crate::flags::Flags;

/// The command's name, as typed.
const BIN: &str = "xypriss";

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("cannot write the {shell} completion script: {source}")]
    Completions { shell: Shell, source: io::Error },
    #[error("cannot write the man pages into {}: {source}", dir.display())]
    ManPages { dir: PathBuf, source: io::Error },
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> Result<(), DistError> {
    let mut cmd = visible(&Flags::command());
    cmd.build();
    shell
        .try_generate(&cmd, out)
        .map_err(|source| DistError::Completions { shell, source })
}

/// Writes `xypriss.1` and one page per visible subcommand (`xypriss-run.1`,
/// …) into `dir`, which is created if need be.
pub fn man_pages(dir: &Path) -> Result<(), DistError> {
    let failed = |source| DistError::ManPages {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut cmd = Flags::command().disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the package, not the bare subcommand.
    let source = format!("{BIN} {}", env!("CARGO_PKG_VERSION"));
    for page in std::iter::once(&cmd).chain(cmd.get_subcommands().filter(|sub| !sub.is_hide_set()))
    {
        clap_mangen::Man::new(page.clone())
            .source(source.clone())
            .generate_to(dir)
            .map_err(failed)?;
    }
    Ok(())
}

/// `cmd` with only its visible subcommands, each whole.
fn visible(cmd: &Command) -> Command {
    let mut shown = Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .bin_name(BIN)
        .subcommands(
            cmd.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        );
    if let Some(about) = cmd.get_about() {
        shown = shown.about(about.clone());
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cmd: &Command) -> Vec<&str> {
        cmd.get_subcommands().map(Command::get_name).collect()
    }

    #[test]
    fn visible_drops_hidden_subcommands_only() {
        let full = Flags::command();
        assert!(names(&full).contains(&"__watchdog"));
        let shown = visible(&full);
        let expected: Vec<&str> = full
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(Command::get_name)
            .collect();
        assert!(expected.contains(&"run"));
        assert_eq!(names(&shown), expected);
        assert_eq!(shown.get_name(), full.get_name());
        let run = shown.find_subcommand("run").unwrap();
        assert!(
            run.get_arguments()
                .any(|a| a.get_long() == Some("max-memory-per-worker"))
        );
    }

    #[test]
    fn every_shell_gets_a_script_without_internal_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("max-memory-per-worker"), "{shell}");
            assert!(!script.contains("__watchdog"), "{shell}: {script}");
        }
    }

    #[test]
    fn a_failing_writer_is_an_error_not_a_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = completions(Shell::Bash, &mut Broken).unwrap_err();
        assert!(err.to_string().contains("bash completion script"), "{err}");
    }
}
