//! The errors of the configuration: each names where the user wrote the
//! value, the file's JSON path (with its line and column) or the flag.

use std::{fmt, io, path::PathBuf};

use crate::size::Size;

use super::file::MAX_FILE_BYTES;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    Flag,
    File(PathBuf),
}

/// One option's value, named as the user gave it, for errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The JSON path as written in the file (`cluster.config.…` when the file
    /// is the whole createServer object), or the flag (`--…`).
    pub path: String,
    /// The value, as xypriss understood it.
    pub value: String,
    pub origin: Origin,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            path,
            value,
            origin,
        } = self;
        match origin {
            Origin::Flag => write!(f, "{path} {value}"),
            Origin::File(file) => write!(f, "{path} = {value} (in {})", file.display()),
            Origin::Default => write!(f, "{path} = {value} (the default)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {}: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("--config {}: {}", file.display(), too_large(*len))]
    TooLarge {
        file: PathBuf,
        /// The file's size, when it has one (not a pipe).
        len: Option<u64>,
    },
    #[error(
        "{}:{line}:{column}: the file is not UTF-8 text; save it as UTF-8 JSON",
        file.display()
    )]
    NotUtf8 {
        file: PathBuf,
        line: usize,
        column: usize,
    },
    /// Not JSON: truncated, a syntax error, nested too deeply, or empty.
    #[error("{}:{line}:{column}: {reason}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{}:{line}:{column}: {path}: unknown key; {hint}", file.display())]
    UnknownKey {
        file: PathBuf,
        path: String,
        line: usize,
        column: usize,
        /// "did you mean …", where it belongs, or the keys allowed here.
        hint: String,
    },
    /// A value of the wrong type, or that is not a value of its kind at all.
    #[error("{}:{line}:{column}: {path}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{}: {path}: the file holds both the createServer options (`cluster`) and a cluster.config key; use one shape",
        file.display()
    )]
    MixedShapes { file: PathBuf, path: String },
    /// A value that is impossible on its own.
    #[error("{setting}: {reason}")]
    Value { setting: Setting, reason: String },
    /// Two values in the wrong order.
    #[error("{setting} must be {relation} {other}")]
    Order {
        setting: Setting,
        relation: &'static str,
        /// Boxed, as in `OverTotal`, to keep the error small.
        other: Box<Setting>,
    },
    #[error(
        "{per_worker} times {min_workers} is {}, more than {total}: the smallest pool would not fit",
        Size(per_worker_bytes.saturating_mul(u64::from(*min_workers_count)))
    )]
    OverTotal {
        per_worker: Setting,
        per_worker_bytes: u64,
        min_workers: Box<Setting>,
        min_workers_count: u32,
        total: Box<Setting>,
    },
}

impl ConfigError {
    /// The JSON path or flag the error is about, when it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { path, .. }
            | Self::Invalid { path, .. }
            | Self::MixedShapes { path, .. } => Some(path),
            Self::Value { setting, .. }
            | Self::Order { setting, .. }
            | Self::OverTotal {
                per_worker: setting,
                ..
            } => Some(&setting.path),
            Self::Read { .. }
            | Self::TooLarge { .. }
            | Self::NotUtf8 { .. }
            | Self::Syntax { .. } => None,
        }
    }
}

fn too_large(len: Option<u64>) -> String {
    let cap = Size(MAX_FILE_BYTES);
    match len {
        Some(len) => format!(
            "{} is over the {cap} limit for a configuration file; is it the right file?",
            Size(len)
        ),
        None => {
            format!("more than the {cap} limit for a configuration file; is it the right file?")
        }
    }
}
