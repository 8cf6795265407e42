//! The control socket's client, for the CLI: a request line out, a reply line
//! back; or, after `{"op":"events"}`, the pool's event lines as they come.
//!
//! Blocking, on purpose: each command asks one thing at a time, and `top`
//! polls from its own loop. The errors say what an operator can do about
//! them: which pool is not running and where it was looked for, or that the
//! pool belongs to another user and sudo is needed.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::socket::{getsockopt, sockopt},
    unistd::geteuid,
};
use serde_json::Value;

use super::{Request, Status, socket::Response};
use crate::runtime_dir;

/// How long a request may wait for its reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pool named {name} is running (no socket at {})", list(searched))]
    NotRunning {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("no pool named {name} is running ({} was left by one that ended)", path.display())]
    Stale { name: String, path: PathBuf },
    #[error(
        "cannot connect to {}: {source}; the pool belongs to another user: run this with sudo",
        path.display()
    )]
    PermissionDenied { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is served by uid {uid}, neither you nor root: not a pool of yours, not asked",
        path.display()
    )]
    Impostor { path: PathBuf, uid: u32 },
    #[error("{}: no answer within {}", path.display(), humantime::format_duration(CALL_TIMEOUT))]
    Timeout { path: PathBuf },
    #[error("{}: the pool closed the connection (is it stopping?)", path.display())]
    Closed { path: PathBuf },
    #[error("{}: not a reply of the control socket: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
    /// The pool refused the request; `code` as in `docs/api.md`.
    #[error("{message}")]
    Api { code: String, message: String },
}

/// Whoever listens on the socket must be this user or root: a socket put in
/// a runtime directory by somebody else would otherwise be asked, and
/// believed, and given requests.
fn check_peer(stream: &UnixStream, path: &Path) -> Result<(), ClientError> {
    let peer = getsockopt(stream, sockopt::PeerCredentials).map_err(|errno| ClientError::Io {
        path: path.into(),
        source: errno.into(),
    })?;
    let uid = peer.uid();
    if uid == 0 || uid == geteuid().as_raw() {
        Ok(())
    } else {
        Err(ClientError::Impostor {
            path: path.into(),
            uid,
        })
    }
}

fn list(paths: &[PathBuf]) -> String {
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    paths.join(" or ")
}

/// A connection to a pool's control socket.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the pool `name`, looking where [`runtime_dir::search_path`] says.
    pub fn connect(name: &str) -> Result<Self, ClientError> {
        Self::connect_in(&runtime_dir::search_path(), name)
    }

    fn connect_in(dirs: &[PathBuf], name: &str) -> Result<Self, ClientError> {
        // A pool found further on wins over a socket here that refuses us.
        let (mut searched, mut denied, mut stale) = (Vec::new(), None, None);
        for dir in dirs {
            let path = dir.join(format!("{name}.sock"));
            match UnixStream::connect(&path) {
                Ok(stream) => {
                    check_peer(&stream, &path)?;
                    return Self::over(stream, path);
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => searched.push(path),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    stale.get_or_insert(path);
                }
                Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                    denied.get_or_insert(ClientError::PermissionDenied { path, source });
                }
                Err(source) => return Err(ClientError::Io { path, source }),
            }
        }
        Err(match (denied, stale) {
            (Some(denied), _) => denied,
            (None, Some(path)) => ClientError::Stale {
                name: name.into(),
                path,
            },
            (None, None) => ClientError::NotRunning {
                name: name.into(),
                searched,
            },
        })
    }

    fn over(stream: UnixStream, path: PathBuf) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            path,
        })
    }

    /// Sends `request`; the pool's reply, or its refusal as [`ClientError::Api`].
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let mut line = serde_json::to_string(request).expect("requests are plain data");
        line.push('\n');
        self.send(&line)?;
        let line = self.read_line()?.ok_or_else(|| ClientError::Closed {
            path: self.path.clone(),
        })?;
        let protocol = |reason: String| ClientError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let response: Response =
            serde_json::from_str(&line).map_err(|e| protocol(format!("{e}: {line}")))?;
        match response {
            Response {
                ok: true,
                reply: Some(reply),
                ..
            } => Ok(reply),
            Response {
                error: Some(error), ..
            } => Err(ClientError::Api {
                code: error.code,
                message: error.message,
            }),
            _ => Err(protocol(format!("neither a reply nor an error: {line}"))),
        }
    }

    /// The pool's status.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        let reply = self.call(&Request::Status)?;
        serde_json::from_value(reply).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            reason: format!("not a status: {e}"),
        })
    }

    /// Turns the connection into the pool's event stream, from now on.
    pub fn follow(mut self) -> Result<Events, ClientError> {
        self.send("{\"op\":\"events\"}\n")?;
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(Events { client: self })
    }

    fn send(&mut self, line: &str) -> Result<(), ClientError> {
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// One line, without its newline; `None` at the end of the stream.
    fn read_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                line.truncate(line.trim_end_matches(['\n', '\r']).len());
                Ok(Some(line))
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout {
                    path: self.path.clone(),
                })
            }
            Err(source) => Err(ClientError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// The pool's NDJSON lines, without their newlines, until the pool stops.
pub struct Events {
    client: Client,
}

impl Iterator for Events {
    type Item = Result<String, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.client.read_line().transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::net::UnixListener};

    use super::*;

    #[test]
    fn a_missing_pool_names_where_it_was_looked_for() {
        let dir = std::env::temp_dir().join(format!("xypriss-client-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let other = dir.join("other");
        let err = Client::connect_in(&[dir.clone(), other.clone()], "web")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "no pool named web is running (no socket at {} or {})",
                dir.join("web.sock").display(),
                other.join("web.sock").display()
            )
        );
        // A socket nobody listens on: a pool that ended without removing it.
        drop(UnixListener::bind(dir.join("web.sock")).unwrap());
        let err = Client::connect_in(std::slice::from_ref(&dir), "web")
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Stale { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
