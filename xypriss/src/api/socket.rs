//! The control socket: `xypriss status`, `scale`, `restart`, `low-memory`,
//! `events`, `top` and `recommend` reach a running pool through it.
//!
//! Over 600 lines with its unit tests; the socket itself is the first 430.
//!
//! A Unix socket rather than a port, so that the kernel checks who connects:
//! the file is mode 0600 and belongs to the user who started the pool (the
//! one behind sudo, if any), so nobody else on the host can even read the
//! status, and no token is needed. The protocol is newline-delimited JSON,
//! readable with `socat`: each request line gets one reply line, and
//! `{"op":"events"}` turns the connection into the pool's NDJSON stream.
//!
//! The control loop answers the requests, through the [`Handle`]; this module
//! only frames them, and bounds what a client may hold: a line is at most
//! [`MAX_LINE`] bytes, a silent client is let go after [`IDLE`], one that
//! stops reading after [`WRITE_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are
//! served at once, so a stuck client cannot pile up tasks.

use std::{
    ffi::OsString,
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{AT_FDCWD, RenameFlags, renameat2},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        watch,
    },
    task::{JoinHandle, JoinSet},
    time::timeout,
};

use super::{ApiError, Handle, Lost, Reply, Request};
use crate::supervise::listen::{SocketFile, clear_stale_socket};

/// The longest request line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// How long a connection may stay silent between requests.
pub const IDLE: Duration = Duration::from_secs(300);

/// How long a client may leave a line unread before it is let go.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// How long followers get to take the last lines when the pool stops.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One reply line: `{"ok":true,"reply":…}` or `{"ok":false,"error":…}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// Why a request failed: [`ApiError::code`] or one of the socket's own
/// (`bad_request`, `line_too_long`, `too_many_connections`), and a sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
}

impl Response {
    fn answer(result: Result<Reply, ApiError>) -> Self {
        match result {
            Ok(reply) => Self {
                ok: true,
                reply: Some(serde_json::to_value(reply).expect("replies are plain data")),
                error: None,
            },
            Err(err) => Self::error(err.code(), err.to_string()),
        }
    }

    fn error(code: &str, message: String) -> Self {
        Self {
            ok: false,
            reply: None,
            error: Some(WireError {
                code: code.into(),
                message,
            }),
        }
    }

    fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("responses are plain data");
        line.push('\n');
        line
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("a pool named {name} already runs (socket {}); choose another --name", path.display())]
    InUse { name: String, path: PathBuf },
    #[error("the control socket: {source}")]
    Clear { source: io::Error },
    #[error("cannot {action} the control socket {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A pool's control socket, served until [`close`](Self::close); its file is
/// removed when this is dropped, on every exit path.
pub struct ControlSocket {
    closing: watch::Sender<bool>,
    serving: JoinHandle<()>,
    _file: SocketFile,
}

impl ControlSocket {
    /// Binds `<dir>/<name>.sock` and serves `handle` on it.
    pub fn start(dir: &Path, name: &str, handle: Handle) -> Result<Self, SocketError> {
        let (listener, file) = bind(dir, name)?;
        tracing::debug!("control socket at {}", file.path().display());
        let (closing, closed) = watch::channel(false);
        Ok(Self {
            closing,
            serving: tokio::spawn(serve(listener, handle, closed)),
            _file: file,
        })
    }

    /// Takes no more connections and gives followers the lines already sent
    /// (`cluster_stopped` among them), for at most [`CLOSE_GRACE`].
    pub async fn close(mut self) {
        let _ = self.closing.send(true);
        let _ = timeout(CLOSE_GRACE, &mut self.serving).await;
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Binds `<dir>/<name>.sock`, mode 0600, owned by the invoking user.
///
/// A socket already there is a pool of that name if something answers on it,
/// which is refused; else it was left by a killed xypriss, and is replaced.
/// The socket is bound in a private directory and moved into place once its
/// mode and owner are set, so nobody can connect in between.
fn bind(dir: &Path, name: &str) -> Result<(UnixListener, SocketFile), SocketError> {
    let path = dir.join(format!("{name}.sock"));
    match clear_stale_socket(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            return Err(SocketError::InUse {
                name: name.into(),
                path,
            });
        }
        Err(source) => return Err(SocketError::Clear { source }),
    }
    let staging = dir.join(format!(".{name}.{}", std::process::id()));
    // Left by a killed xypriss whose pid came round again.
    let _ = fs::remove_dir_all(&staging);
    let bound = DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|source| SocketError::Io {
            action: "make a private directory for",
            path: path.clone(),
            source,
        })
        .and_then(|()| bind_privately(&staging.join("sock"), &path, name));
    let _ = fs::remove_dir_all(&staging);
    let listener = bound?;
    let file = SocketFile::new(path.clone()).map_err(|source| SocketError::Io {
        action: "find",
        path,
        source,
    })?;
    Ok((listener, file))
}

/// Binds at `inside`, a private path, sets the mode and owner, and moves the
/// socket to `path`, which must not exist: else pool `name` runs already.
fn bind_privately(inside: &Path, path: &Path, name: &str) -> Result<UnixListener, SocketError> {
    let failed = |action| {
        move |source| SocketError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let listener = UnixListener::bind(inside).map_err(failed("bind"))?;
    fs::set_permissions(inside, Permissions::from_mode(0o600))
        .map_err(failed("set the mode of"))?;
    if nix::unistd::geteuid().is_root()
        && let Some((uid, gid)) =
            sudo_owner(std::env::var_os("SUDO_UID"), std::env::var_os("SUDO_GID"))
    {
        std::os::unix::fs::chown(inside, Some(uid), Some(gid))
            .map_err(failed("give the sudo user"))?;
    }
    // Never over another pool's socket: two starts of one name may both have
    // found the place free, and the second must fail, not take it.
    renameat2(
        AT_FDCWD,
        inside,
        AT_FDCWD,
        path,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|errno| match errno {
        Errno::EEXIST => SocketError::InUse {
            name: name.into(),
            path: path.to_owned(),
        },
        errno => failed("move into place")(errno.into()),
    })?;
    Ok(listener)
}

/// The user behind sudo, from `SUDO_UID` and `SUDO_GID`: both, or nobody.
fn sudo_owner(uid: Option<OsString>, gid: Option<OsString>) -> Option<(u32, u32)> {
    let id = |v: Option<OsString>| v?.to_str()?.parse::<u32>().ok();
    Some((id(uid)?, id(gid)?))
}

/// Serves connections on `listener` until `closing` turns true, then waits for
/// them to end.
async fn serve(listener: UnixListener, handle: Handle, mut closing: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    // Each connection watches a receiver of its own.
    let for_connections = closing.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => {
                    let busy = Response::error(
                        "too_many_connections",
                        format!("the pool serves {MAX_CONNECTIONS} connections at most; try again later"),
                    );
                    // Best effort: the client is turned away either way.
                    let _ = stream.try_write(busy.to_line().as_bytes());
                }
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, handle.clone(), for_connections.clone()));
                }
                Err(err) => {
                    // Out of descriptors, most likely: wait for some to free up.
                    tracing::warn!("control socket: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = closed(&mut closing) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once the pool stops (`closing` turns true, or its sender is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|&closing| closing).await;
}

/// What a request line asks.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// An empty line: nothing.
    Blank,
    /// `{"op":"events"}`.
    Events,
    Call(Request),
    /// Why the line is not a request.
    Bad(String),
}

fn parse(line: &[u8]) -> Parsed {
    let text = line.trim_ascii();
    if text.is_empty() {
        return Parsed::Blank;
    }
    let value: Value = match serde_json::from_slice(text) {
        Ok(value) => value,
        Err(err) => return Parsed::Bad(format!("not JSON: {err}")),
    };
    if value.get("op").and_then(Value::as_str) == Some("events") {
        return match value.as_object().map(serde_json::Map::len) {
            Some(1) => Parsed::Events,
            _ => Parsed::Bad("`events` takes no other field".into()),
        };
    }
    match serde_json::from_value(value) {
        Ok(request) => Parsed::Call(request),
        Err(err) => Parsed::Bad(err.to_string()),
    }
}

/// What reading one line gave.
#[derive(Debug, PartialEq)]
enum Read {
    Line,
    TooLong,
    End,
}

/// Reads one line into `line`, at most [`MAX_LINE`] bytes of it.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> io::Result<Read> {
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    Ok(if n == 0 {
        Read::End
    } else if line.ends_with(b"\n") || line.len() <= MAX_LINE {
        Read::Line
    } else {
        Read::TooLong
    })
}

async fn send(write: &mut OwnedWriteHalf, line: &str) -> bool {
    matches!(
        timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// One client: requests and replies, until it leaves, falls silent, asks for
/// the events, or the pool stops.
async fn connection(stream: UnixStream, handle: Handle, mut closing: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let got = tokio::select! {
            got = timeout(IDLE, read_line(&mut read, &mut line)) => got,
            () = closed(&mut closing) => return,
        };
        let response = match got {
            Ok(Ok(Read::Line)) => match parse(&line) {
                Parsed::Blank => continue,
                Parsed::Events => {
                    return follow(read, write, handle.follow(), handle.losses(), closing).await;
                }
                Parsed::Call(request) => Response::answer(handle.call(request).await),
                Parsed::Bad(why) => Response::error("bad_request", why),
            },
            Ok(Ok(Read::TooLong)) => {
                let too_long = Response::error(
                    "line_too_long",
                    format!("a request line has at most {MAX_LINE} bytes"),
                );
                send(&mut write, &too_long.to_line()).await;
                return;
            }
            Ok(Ok(Read::End) | Err(_)) | Err(_) => return,
        };
        if !send(&mut write, &response.to_line()).await {
            return;
        }
    }
}

/// Streams the pool's NDJSON lines to a follower until it leaves or the pool
/// stops; a follower that fell behind is told how many lines it lost.
async fn follow<R: AsyncRead + Unpin>(
    mut read: BufReader<R>,
    mut write: OwnedWriteHalf,
    mut events: broadcast::Receiver<Arc<str>>,
    mut lost: Lost,
    mut closing: watch::Receiver<bool>,
) {
    let mut scratch = [0; 512];
    loop {
        let next = tokio::select! {
            next = events.recv() => next,
            // Anything the follower sends is ignored; its end is noticed.
            n = read.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            () = closed(&mut closing) => break,
        };
        let line = match next {
            Ok(line) => line,
            Err(RecvError::Lagged(n)) => lost.line(n),
            Err(RecvError::Closed) => return,
        };
        if !send(&mut write, &line).await {
            return;
        }
    }
    // The pool stops: what was sent before, its last lines, still goes out.
    loop {
        let line = match events.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Lagged(n)) => lost.line(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        };
        if !send(&mut write, &line).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use proptest::prelude::*;

    use super::*;
    use crate::api::{self, Calls};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a client sends, a line is one of the four answers, never a panic.
        #[test]
        fn any_bytes_parse_to_an_answer(line in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&line);
        }

        /// Lines shaped like requests, with any values, are parsed or refused
        /// with a reason, and good ones come back as what was sent.
        #[test]
        fn request_shaped_lines_parse_or_say_why(
            op in "(status|scale|low_memory|restart|reload|events|[a-z_]{0,12})",
            key in "(workers|worker|enabled|[a-z]{0,8})",
            value in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                Just("null".to_owned()),
                Just("[1,2]".to_owned()),
            ],
        ) {
            let line = format!(r#"{{"op":{},"{key}":{value}}}"#, serde_json::to_string(&op).unwrap());
            match parse(line.as_bytes()) {
                Parsed::Bad(why) => prop_assert!(!why.is_empty()),
                Parsed::Call(request) => {
                    let back = serde_json::to_value(&request).unwrap();
                    prop_assert_eq!(back["op"].as_str(), Some(op.as_str()));
                }
                Parsed::Events | Parsed::Blank => prop_assert!(false, "{line} is neither"),
            }
        }
    }

    fn scratch_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xypriss-socket-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A control loop that answers status with an error and scale with a
    /// scale, as the real one would.
    fn fake_loop(mut calls: Calls) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let answer = match call.request {
                    Request::Scale { workers } if workers <= 4 => Ok(Reply::Scaled {
                        from: 2,
                        to: workers,
                    }),
                    Request::Scale { workers } => Err(ApiError::OutOfRange {
                        requested: workers,
                        min: 1,
                        max: 4,
                    }),
                    _ => Err(ApiError::UnknownWorker { id: 7 }),
                };
                let _ = call.reply.send(answer);
            }
        })
    }

    struct Client {
        lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
        write: OwnedWriteHalf,
    }

    impl Client {
        async fn connect(path: &Path) -> Self {
            let (read, write) = UnixStream::connect(path).await.unwrap().into_split();
            Self {
                lines: BufReader::new(read).lines(),
                write,
            }
        }

        async fn ask(&mut self, line: &str) -> Response {
            self.write.write_all(line.as_bytes()).await.unwrap();
            self.write.write_all(b"\n").await.unwrap();
            let reply = self.lines.next_line().await.unwrap().expect("a reply line");
            serde_json::from_str(&reply).unwrap()
        }
    }

    #[test]
    fn request_lines_parse_or_say_why_not() {
        assert_eq!(parse(b"  \r\n"), Parsed::Blank);
        assert_eq!(parse(b"{\"op\":\"events\"}\n"), Parsed::Events);
        assert_eq!(
            parse(b"{\"op\":\"scale\",\"workers\":3}"),
            Parsed::Call(Request::Scale { workers: 3 })
        );
        let Parsed::Bad(why) = parse(b"{\"op\":\"events\",\"x\":1}") else {
            panic!("extra field accepted");
        };
        assert!(why.contains("events"), "{why}");
        let Parsed::Bad(why) = parse(b"scale 3") else {
            panic!("not JSON accepted");
        };
        assert!(why.starts_with("not JSON"), "{why}");
        let Parsed::Bad(why) = parse(b"{\"op\":\"explode\"}") else {
            panic!("unknown op accepted");
        };
        assert!(why.contains("explode"), "{why}");
    }

    #[test]
    fn sudo_owner_needs_both_ids() {
        assert_eq!(
            sudo_owner(Some("1000".into()), Some("100".into())),
            Some((1000, 100))
        );
        assert_eq!(sudo_owner(Some("1000".into()), None), None);
        assert_eq!(sudo_owner(Some("me".into()), Some("100".into())), None);
        assert_eq!(sudo_owner(None, None), None);
    }

    #[tokio::test]
    async fn requests_get_one_reply_line_each_and_bad_lines_an_error() {
        let dir = scratch_dir("requests");
        let (handle, calls) = api::channel();
        let _loop = fake_loop(calls);
        let socket = ControlSocket::start(&dir, "t", handle).unwrap();
        let path = dir.join("t.sock");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        let mut client = Client::connect(&path).await;
        let scaled = client.ask(r#"{"op":"scale","workers":3}"#).await;
        assert!(scaled.ok);
        assert_eq!(scaled.reply.unwrap()["to"], 3);
        let refused = client.ask(r#"{"op":"scale","workers":9}"#).await;
        assert_eq!(refused.error.unwrap().code, "out_of_range");
        let bad = client.ask("{not json").await;
        assert_eq!(bad.error.unwrap().code, "bad_request");
        // The connection still serves after a bad line.
        assert!(client.ask(r#"{"op":"scale","workers":1}"#).await.ok);

        let mut long = Client::connect(&path).await;
        let too_long = long.ask(&"x".repeat(MAX_LINE + 10)).await;
        assert_eq!(too_long.error.unwrap().code, "line_too_long");
        assert_eq!(long.lines.next_line().await.unwrap(), None, "closed after");

        socket.close().await;
        assert!(!path.exists(), "the socket file is removed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_turned_away() {
        let dir = scratch_dir("limit");
        let (handle, calls) = api::channel();
        let _loop = fake_loop(calls);
        let _socket = ControlSocket::start(&dir, "l", handle).unwrap();
        let path = dir.join("l.sock");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut client = Client::connect(&path).await;
            // Answered: it is being served.
            assert!(client.ask(r#"{"op":"scale","workers":1}"#).await.ok);
            held.push(client);
        }
        let mut one_more = Client::connect(&path).await;
        let busy = timeout(Duration::from_secs(5), one_more.lines.next_line())
            .await
            .expect("the connection past the limit is answered at once")
            .unwrap()
            .unwrap();
        let busy: Response = serde_json::from_str(&busy).unwrap();
        assert_eq!(busy.error.unwrap().code, "too_many_connections");
        assert_eq!(one_more.lines.next_line().await.unwrap(), None);
        // One leaves: there is room again.
        drop(held.pop());
        // Time for the server to see it go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut again = Client::connect(&path).await;
        assert!(again.ask(r#"{"op":"scale","workers":1}"#).await.ok);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn of_two_starts_that_both_found_the_name_free_the_second_fails() {
        let dir = scratch_dir("race");
        let path = dir.join("p.sock");
        for staging in [".a", ".b"] {
            fs::create_dir(dir.join(staging)).unwrap();
        }
        // Both passed the check for a live socket; now each moves its own in.
        let first = bind_privately(&dir.join(".a/sock"), &path, "p").unwrap();
        let second = bind_privately(&dir.join(".b/sock"), &path, "p");
        assert!(
            matches!(second, Err(SocketError::InUse { .. })),
            "the second start took the first one's socket"
        );
        // The first pool still answers at its path.
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        timeout(Duration::from_secs(5), first.accept())
            .await
            .expect("the first pool's listener gets the connection")
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = scratch_dir("stale");
        let (handle, _calls) = api::channel();
        let first = ControlSocket::start(&dir, "p", handle.clone()).unwrap();
        let err = ControlSocket::start(&dir, "p", handle.clone())
            .err()
            .expect("a second pool of the same name is refused");
        assert!(
            err.to_string().starts_with("a pool named p already runs"),
            "{err}"
        );
        assert!(
            dir.join("p.sock").exists(),
            "the first pool keeps its socket"
        );
        drop(first);
        assert!(!dir.join("p.sock").exists());

        // What a SIGKILLed xypriss leaves: a socket file nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(dir.join("p.sock")).unwrap());
        let _again = ControlSocket::start(&dir, "p", handle).unwrap();
        UnixStream::connect(dir.join("p.sock")).await.unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn followers_get_the_lines_and_are_told_what_they_lost() {
        let dir = scratch_dir("follow");
        let (handle, _calls) = api::channel();
        let events = handle.event_sender();
        let socket = ControlSocket::start(&dir, "f", handle).unwrap();
        let mut client = Client::connect(&dir.join("f.sock")).await;
        client
            .write
            .write_all(b"{\"op\":\"events\"}\n")
            .await
            .unwrap();
        // Wait until the follower is subscribed.
        while events.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        events.send("{\"event\":\"a\"}\n".into()).unwrap();
        assert_eq!(
            client.lines.next_line().await.unwrap().unwrap(),
            "{\"event\":\"a\"}"
        );
        // More than the follower may fall behind, sent while it cannot run.
        for i in 0..api::FOLLOW_LINES + 5 {
            events
                .send(format!("{{\"event\":\"n{i}\"}}\n").into())
                .unwrap();
        }
        events.send("{\"event\":\"last\"}\n".into()).unwrap();
        let lost: Value =
            serde_json::from_str(&client.lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(lost["event"], "events_lost");
        assert_eq!(lost["stage"], "follower");
        assert_eq!(lost["count"], 6);
        // The pool stops: what was sent before still arrives, then the end.
        let mut lines = client.lines;
        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                rest.push(line);
            }
            rest
        });
        socket.close().await;
        let rest = reader.await.unwrap();
        assert_eq!(
            rest.last().map(String::as_str),
            Some("{\"event\":\"last\"}")
        );
        assert_eq!(rest.len(), api::FOLLOW_LINES);
        fs::remove_dir_all(&dir).unwrap();
    }
}
