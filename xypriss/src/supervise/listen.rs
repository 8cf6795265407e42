//! `--listen ADDR`: sockets the supervisor binds once and hands to every
//! worker with systemd's socket-activation protocol.
//!
//! Binding in the supervisor rather than in each worker lets the whole pool
//! share one port without SO_REUSEPORT, keeps the port open while a worker is
//! replaced (connections wait in the kernel's queue until a worker accepts
//! them), and lets a worker that runs unprivileged serve port 80. The
//! protocol is the one server runtimes already speak (`sd_listen_fds`, Go's
//! `activation.Listeners`, Python's `socket.socket(fileno=3)`, Node's
//! `listen({fd: 3})`): the sockets are fds 3, 4, … in `--listen` order,
//! `LISTEN_FDS` says how many, `LISTEN_FDNAMES` names them, and `LISTEN_PID`
//! is the pid they are meant for.
//!
//! `LISTEN_PID` is the worker's own pid, known only in the worker: it is
//! set there ([`super::exec`]), which also moves the sockets into place
//! with [`hand_over`].
//!
//! Over 600 lines: the binding and the hand-over share the socket types,
//! and their unit tests (from line 452) run real servers on real sockets.

use std::{
    fmt, fs, io,
    net::{SocketAddr, ToSocketAddrs as _},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    str::FromStr,
};

use nix::{
    errno::Errno,
    libc,
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, UnixAddr, bind, connect,
        getsockname, listen, setsockopt, sockopt,
    },
};

/// The first fd of the protocol: the sockets follow stdin, stdout and stderr.
pub(super) const LISTEN_FDS_START: RawFd = 3;
/// systemd's longest fd name.
const FDNAME_MAX: usize = 255;
/// The kernel caps it at net.core.somaxconn.
const BACKLOG: Backlog = Backlog::MAXCONN;

/// A `--listen` value: a TCP address or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenAddrError {
    #[error(
        "`{value}` is not a listen address: expected HOST:PORT (127.0.0.1:8080, [::1]:8080, localhost:8080), a socket path starting with / or ./, or unix:PATH"
    )]
    Form { value: String },
    #[error(
        "`{value}` has no host: write 0.0.0.0{value} to listen on every IPv4 address, or 127.0.0.1{value} for this machine only"
    )]
    MissingHost { value: String },
    #[error("`{value}`: `{port}` is not a port (0 to 65535)")]
    Port { value: String, port: String },
    #[error("`{value}`: cannot resolve `{host}`: {reason}")]
    Resolve {
        value: String,
        host: String,
        reason: String,
    },
    #[error("`{value}`: the socket path is empty")]
    EmptyPath { value: String },
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(value: &str) -> Result<Self, ListenAddrError> {
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenAddrError::EmptyPath {
                    value: value.into(),
                });
            }
            return Ok(Self::Unix(path.into()));
        }
        if value.starts_with('/') || value.starts_with("./") || value.starts_with("../") {
            return Ok(Self::Unix(value.into()));
        }
        if let Ok(addr) = value.parse() {
            return Ok(Self::Tcp(addr));
        }
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(ListenAddrError::Form {
                value: value.into(),
            });
        };
        if host.is_empty() {
            return Err(ListenAddrError::MissingHost {
                value: value.into(),
            });
        }
        let port_number: u16 = port.parse().map_err(|_| ListenAddrError::Port {
            value: value.into(),
            port: port.into(),
        })?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner,
            // An IPv6 address without brackets is ambiguous: `::1:8080` is an address too.
            None if host.contains(':') => {
                return Err(ListenAddrError::Form {
                    value: value.into(),
                });
            }
            None => host,
        };
        let resolve_error = |reason: String| ListenAddrError::Resolve {
            value: value.into(),
            host: host.into(),
            reason,
        };
        (host, port_number)
            .to_socket_addrs()
            .map_err(|err| resolve_error(err.to_string()))?
            .next()
            .map(Self::Tcp)
            .ok_or_else(|| resolve_error("it has no address".into()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--listen {addr}: {step}: {source}")]
    Socket {
        addr: ListenAddr,
        step: &'static str,
        source: Errno,
    },
    #[error("--listen {addr}: {source}")]
    SocketPath { addr: ListenAddr, source: io::Error },
}

/// The bound listening sockets, in `--listen` order.
pub struct Listeners {
    /// Where each socket is bound: a TCP port 0 is replaced by the port the
    /// kernel chose.
    bound: Vec<ListenAddr>,
    /// The sockets, in the same order.
    fds: Vec<OwnedFd>,
    /// The Unix socket files bound here, removed on drop.
    _files: Vec<SocketFile>,
}

impl Listeners {
    /// Binds and listens on every address, with CLOEXEC fds. On an error,
    /// what was already bound is closed and its socket files removed.
    pub fn bind(addrs: &[ListenAddr]) -> Result<Self, ListenError> {
        let mut bound = Vec::with_capacity(addrs.len());
        let mut fds = Vec::with_capacity(addrs.len());
        let mut files = Vec::new();
        for addr in addrs {
            let (fd, local) = bind_one(addr, &mut files)?;
            fds.push(fd);
            bound.push(local);
        }
        Ok(Self {
            bound,
            fds,
            _files: files,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The port of the first TCP listener, as bound.
    pub fn port(&self) -> Option<u16> {
        self.bound.iter().find_map(|addr| match addr {
            ListenAddr::Tcp(tcp) => Some(tcp.port()),
            ListenAddr::Unix(_) => None,
        })
    }

    /// The sockets' inode numbers, by which `--ready socket` finds them in a worker.
    pub fn inodes(&self) -> std::collections::BTreeSet<u64> {
        self.fds
            .iter()
            .filter_map(|fd| nix::sys::stat::fstat(fd).ok())
            .map(|st| st.st_ino)
            .collect()
    }

    /// Where each socket is bound, in fd order (fd 3 first).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.bound
    }

    /// The sockets' fds, in fd order, to hand a worker.
    pub(crate) fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().map(|fd| fd.as_raw_fd())
    }

    /// `LISTEN_FDS`, `LISTEN_FDNAMES`, and `PORT` when a socket is TCP; none
    /// when there is no socket. `LISTEN_PID` is set in the worker.
    pub fn env(&self) -> Vec<(String, String)> {
        if self.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = self.bound.iter().map(fd_name).collect();
        let mut env = vec![
            ("LISTEN_FDS".to_owned(), self.fds.len().to_string()),
            ("LISTEN_FDNAMES".to_owned(), names.join(":")),
        ];
        if let Some(port) = self.port() {
            env.push(("PORT".to_owned(), port.to_string()));
        }
        env
    }
}

/// Binds one listener; a Unix socket file it creates goes to `files`.
fn bind_one(
    addr: &ListenAddr,
    files: &mut Vec<SocketFile>,
) -> Result<(OwnedFd, ListenAddr), ListenError> {
    let failed = |step| {
        move |source| ListenError::Socket {
            addr: addr.clone(),
            step,
            source,
        }
    };
    let fd = match addr {
        ListenAddr::Tcp(tcp) => {
            let family = if tcp.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family).map_err(failed("socket"))?;
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(failed("SO_REUSEADDR"))?;
            bind(fd.as_raw_fd(), &SockaddrStorage::from(*tcp)).map_err(failed("bind"))?;
            fd
        }
        ListenAddr::Unix(path) => {
            let path_failed = |source| ListenError::SocketPath {
                addr: addr.clone(),
                source,
            };
            clear_stale_socket(path).map_err(path_failed)?;
            let fd = socket(AddressFamily::Unix).map_err(failed("socket"))?;
            let unix = UnixAddr::new(path.as_path()).map_err(failed("socket path"))?;
            bind(fd.as_raw_fd(), &unix).map_err(failed("bind"))?;
            files.push(SocketFile::new(path.clone()).map_err(path_failed)?);
            fd
        }
    };
    listen(&fd, BACKLOG).map_err(failed("listen"))?;
    let local = match addr {
        ListenAddr::Tcp(tcp) => {
            let local: SockaddrStorage =
                getsockname(fd.as_raw_fd()).map_err(failed("getsockname"))?;
            let port = local
                .as_sockaddr_in()
                .map(|a| a.port())
                .or_else(|| local.as_sockaddr_in6().map(|a| a.port()))
                .unwrap_or(tcp.port());
            ListenAddr::Tcp(SocketAddr::new(tcp.ip(), port))
        }
        ListenAddr::Unix(_) => addr.clone(),
    };
    Ok((fd, local))
}

fn socket(family: AddressFamily) -> nix::Result<OwnedFd> {
    nix::sys::socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
}

/// The name `LISTEN_FDNAMES` gives a socket: `tcp-127.0.0.1-8080`,
/// `unix-run-app.sock`. systemd's rule: printable ASCII, no `:`, at most 255
/// characters; here only letters, digits, `.`, `_` and `-` are kept.
fn fd_name(addr: &ListenAddr) -> String {
    let raw = match addr {
        ListenAddr::Tcp(tcp) => format!("tcp-{}-{}", tcp.ip(), tcp.port()),
        ListenAddr::Unix(path) => {
            let path = path.to_string_lossy();
            let path = path.strip_prefix("./").unwrap_or(&path);
            format!("unix-{}", path.trim_start_matches('/'))
        }
    };
    raw.chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .take(FDNAME_MAX)
        .collect()
}

/// Moves the i-th source fd to fd 3 + i, without FD_CLOEXEC (dup2 never
/// copies it). Each source is first copied above the targets, so a source that
/// sits on another one's target is read before it is overwritten.
/// Async-signal-safe: system calls only, and writes into `scratch` (one slot
/// per source).
pub(super) fn hand_over(
    sources: impl Iterator<Item = RawFd>,
    scratch: &mut [RawFd],
) -> io::Result<()> {
    let above = LISTEN_FDS_START + scratch.len() as RawFd;
    for (source, copy) in sources.zip(scratch.iter_mut()) {
        // SAFETY: fcntl on an fd number; a bad one is an error, not UB.
        *copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if *copy < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (target, &copy) in (LISTEN_FDS_START..).zip(scratch.iter()) {
        // SAFETY: `copy` is ours, and the child owns every target number.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `copy` is ours and no longer needed.
        unsafe { libc::close(copy) };
    }
    Ok(())
}

/// Marks every fd from `first` on CLOEXEC (`close_range`, Linux 5.11).
/// Async-signal-safe: one system call.
pub(super) fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with the flag its man page documents; it only
    // changes fd flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes way for a socket at `path`. Nothing there is fine, and so is a socket
/// nobody listens on any more (left by a crash), which is removed. A file that
/// is not a socket, or a socket something still listens on, is refused.
pub(crate) fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(annotate(err, "cannot inspect", path)),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            ),
        ));
    }
    let in_use = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "something is listening on {}; stop it or choose another path",
                path.display()
            ),
        )
    };
    // A non-blocking probe: a live listener with a full queue answers EAGAIN.
    let probe = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|errno| annotate(errno.into(), "cannot probe", path))?;
    let unix = UnixAddr::new(path).map_err(|errno| annotate(errno.into(), "cannot probe", path))?;
    match connect(probe.as_raw_fd(), &unix) {
        // EPROTOTYPE: a live socket of another type.
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS | Errno::EPROTOTYPE) => Err(in_use()),
        Err(Errno::ECONNREFUSED) => match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(annotate(err, "cannot remove the stale socket", path))
            }
            _ => Ok(()),
        },
        Err(errno) => Err(annotate(errno.into(), "cannot probe", path)),
    }
}

fn annotate(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// A socket file this process bound, removed on drop if it is still that file
/// and not one put there since.
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Remembers the file just bound at `path`.
    pub(crate) fn new(path: PathBuf) -> io::Result<Self> {
        let meta =
            fs::symlink_metadata(&path).map_err(|err| annotate(err, "cannot stat", &path))?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            path,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours && let Err(err) = fs::remove_file(&self.path) {
            tracing::warn!("could not remove socket {}: {err}", self.path.display());
        }
    }
}

/// What the tests of `listen` and `notify` share: real children running
/// tests/apps/fd_http_server.py, and HTTP requests to them.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        io::{Read, Write},
        os::unix::process::CommandExt as _,
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::{LISTEN_FDS_START, Listeners, RawFd, cloexec_from, hand_over};

    pub const FD_HTTP_SERVER: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/apps/fd_http_server.py"
    );
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    /// A child that is killed and reaped on drop, whatever the test did.
    pub struct Reaped(pub Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A fresh directory, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("xypriss-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).expect("create the test directory");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The command for the test server, as worker 7, with `listeners`'
    /// environment; a shell sets `LISTEN_PID` to its own pid, which the
    /// server keeps (`exec`), as a worker's start does.
    pub fn server_command(listeners: &Listeners, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec python3 \"$0\"", FD_HTTP_SERVER])
            .env("XYPRISS_WORKER_ID", "7")
            .envs(listeners.env())
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the test server on `listeners`, handed over as a worker's start
    /// hands them: fds 3, 4, …, and nothing else inherited.
    pub fn spawn_server(listeners: &Listeners, env: &[(&str, &str)]) -> Reaped {
        let mut cmd = server_command(listeners, env);
        let sources: Vec<RawFd> = listeners.raw_fds().collect();
        let mut scratch = vec![-1; sources.len()];
        let hand_over_all = move || {
            hand_over(sources.iter().copied(), &mut scratch)?;
            cloexec_from(LISTEN_FDS_START + scratch.len() as RawFd)
        };
        // SAFETY: the closure makes system calls only, into memory it owns.
        unsafe {
            cmd.pre_exec(hand_over_all);
        }
        Reaped(cmd.spawn().expect("sh starts"))
    }

    /// `GET /` over `stream`: the JSON body the test server answers.
    pub fn get(mut stream: impl Read + Write) -> serde_json::Value {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        assert!(head.starts_with("HTTP/1.0 200"), "status: {head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, TcpListener, TcpStream},
        os::unix::{
            net::{UnixListener, UnixStream},
            process::CommandExt as _,
        },
    };

    use serde_json::json;

    use super::{testing::*, *};

    fn parse(value: &str) -> Result<ListenAddr, ListenAddrError> {
        value.parse()
    }

    fn tcp(value: &str) -> ListenAddr {
        ListenAddr::Tcp(value.parse().unwrap())
    }

    fn unix(path: impl Into<PathBuf>) -> ListenAddr {
        ListenAddr::Unix(path.into())
    }

    #[test]
    fn parses_tcp_and_unix_forms() {
        assert_eq!(parse("127.0.0.1:8080"), Ok(tcp("127.0.0.1:8080")));
        assert_eq!(parse("0.0.0.0:0"), Ok(tcp("0.0.0.0:0")));
        assert_eq!(parse("[::1]:8080"), Ok(tcp("[::1]:8080")));
        assert_eq!(parse("unix:/run/app.sock"), Ok(unix("/run/app.sock")));
        assert_eq!(parse("unix:app.sock"), Ok(unix("app.sock")));
        assert_eq!(parse("/run/app.sock"), Ok(unix("/run/app.sock")));
        assert_eq!(parse("./app.sock"), Ok(unix("./app.sock")));
        let Ok(ListenAddr::Tcp(local)) = parse("localhost:8080") else {
            panic!("localhost resolves to a TCP address");
        };
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 8080);
    }

    #[test]
    fn rejects_what_is_not_an_address_and_says_what_is_expected() {
        let err = parse(":8080").unwrap_err();
        assert_eq!(
            err,
            ListenAddrError::MissingHost {
                value: ":8080".into()
            }
        );
        assert!(err.to_string().contains("0.0.0.0:8080"), "{err}");
        for value in ["8080", "localhost", "", "::1:8080"] {
            let err = parse(value).unwrap_err();
            assert!(
                matches!(err, ListenAddrError::Form { .. }),
                "{value}: {err:?}"
            );
            assert!(err.to_string().contains("HOST:PORT"), "{err}");
        }
        for (value, port) in [("127.0.0.1:99999", "99999"), ("[::1]:http", "http")] {
            assert_eq!(
                parse(value),
                Err(ListenAddrError::Port {
                    value: value.into(),
                    port: port.into()
                })
            );
        }
        assert!(matches!(
            parse("unix:"),
            Err(ListenAddrError::EmptyPath { .. })
        ));
    }

    #[test]
    fn display_parses_back() {
        for value in [
            "127.0.0.1:8080",
            "[::1]:443",
            "unix:/run/app.sock",
            "./a.sock",
        ] {
            let addr = parse(value).unwrap();
            assert_eq!(parse(&addr.to_string()), Ok(addr));
        }
        assert_eq!(unix("/run/app.sock").to_string(), "unix:/run/app.sock");
    }

    #[test]
    fn fd_names_follow_systemds_rule() {
        assert_eq!(fd_name(&tcp("127.0.0.1:8080")), "tcp-127.0.0.1-8080");
        assert_eq!(fd_name(&tcp("[::1]:8080")), "tcp-__1-8080");
        assert_eq!(fd_name(&unix("/run/app.sock")), "unix-run-app.sock");
        assert_eq!(fd_name(&unix("./my app:1.sock")), "unix-my_app_1.sock");
        let long = fd_name(&unix(format!("/{}", "a".repeat(400))));
        assert_eq!(long.len(), FDNAME_MAX);
    }

    #[test]
    fn env_describes_the_sockets_and_leaves_listen_pid_to_the_child() {
        let dir = TempDir::new("listen-env");
        let path = dir.path().join("app.sock");
        let listeners = Listeners::bind(&[tcp("127.0.0.1:0"), unix(&path)]).unwrap();
        let port = listeners.port().unwrap();
        assert_ne!(port, 0, "the kernel's port is reported, not 0");
        assert_eq!(
            listeners.local_addrs(),
            [
                ListenAddr::Tcp((Ipv4Addr::LOCALHOST, port).into()),
                unix(&path)
            ]
        );
        let names = format!(
            "tcp-127.0.0.1-{port}:unix-{}",
            path.to_str()
                .unwrap()
                .trim_start_matches('/')
                .replace('/', "-")
        );
        let env = listeners.env();
        assert_eq!(
            env,
            [
                ("LISTEN_FDS".to_owned(), "2".to_owned()),
                ("LISTEN_FDNAMES".to_owned(), names),
                ("PORT".to_owned(), port.to_string()),
            ]
        );
        for fd in listeners.fds.iter() {
            // SAFETY: F_GETFD on an fd we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "CLOEXEC");
        }
        TcpStream::connect(("127.0.0.1", port)).expect("the TCP socket listens");
        UnixStream::connect(&path).expect("the Unix socket listens");

        let none = Listeners::bind(&[]).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.env(), []);
        assert_eq!(none.port(), None);
    }

    #[test]
    fn unix_sockets_replace_stale_files_only_and_are_removed_on_drop() {
        let dir = TempDir::new("listen-unix");
        let path = dir.path().join("app.sock");

        // A socket file left behind by a process that is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listeners = Listeners::bind(&[unix(&path)]).unwrap();
        UnixStream::connect(&path).expect("our socket replaced the stale one");

        let err = Listeners::bind(&[unix(&path)]).err().unwrap();
        assert!(err.to_string().contains("something is listening"), "{err}");
        drop(listeners);
        assert!(!path.exists(), "the socket file is removed on drop");

        std::fs::write(&path, "data").unwrap();
        let err = Listeners::bind(&[unix(&path)]).err().unwrap();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        std::fs::remove_file(&path).unwrap();

        // A file put in place of ours is not ours to remove.
        let listeners = Listeners::bind(&[unix(&path)]).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "theirs").unwrap();
        drop(listeners);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs");
    }

    #[test]
    fn a_failed_bind_names_the_address_and_undoes_the_others() {
        let dir = TempDir::new("listen-fail");
        let path = dir.path().join("first.sock");
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ListenAddr::Tcp(taken.local_addr().unwrap());
        let err = Listeners::bind(&[unix(&path), addr.clone()]).err().unwrap();
        assert!(
            matches!(&err, ListenError::Socket { addr: a, step: "bind", source: Errno::EADDRINUSE } if *a == addr),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("--listen {addr}: bind"))
        );
        assert!(!path.exists(), "the socket bound first is removed");

        let missing = dir.path().join("no/such/dir.sock");
        let err = Listeners::bind(&[unix(&missing)]).err().unwrap();
        assert!(err.to_string().contains("no/such/dir.sock"), "{err}");
    }

    #[test]
    fn a_worker_gets_the_socket_as_fd_3_with_its_own_listen_pid() {
        let listeners = Listeners::bind(&[tcp("127.0.0.1:0")]).unwrap();
        let port = listeners.port().unwrap();
        let server = spawn_server(&listeners, &[]);
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reply = get(stream);
        assert_eq!(reply["pid"], server.0.id());
        assert_eq!(reply["listenPid"], server.0.id().to_string());
        assert_eq!(reply["listenPidMatched"], true);
        assert_eq!(reply["workerId"], "7");
        assert_eq!(reply["port"], port.to_string());
        assert_eq!(
            reply["fds"],
            json!([{"fd": 3, "family": "AF_INET", "address": format!("127.0.0.1:{port}")}])
        );
        assert_eq!(reply["fdNames"], json!([format!("tcp-127.0.0.1-{port}")]));
    }

    fn assert_tcp_then_unix(reply: &serde_json::Value, port: u16, path: &Path) {
        assert_eq!(reply["listenPidMatched"], true);
        assert_eq!(
            reply["fds"],
            json!([
                {"fd": 3, "family": "AF_INET", "address": format!("127.0.0.1:{port}")},
                {"fd": 4, "family": "AF_UNIX", "address": path.to_str().unwrap()},
            ])
        );
    }

    #[test]
    fn two_sockets_arrive_as_fds_3_and_4_in_listen_order() {
        let dir = TempDir::new("listen-two");
        let path = dir.path().join("app.sock");
        let listeners = Listeners::bind(&[tcp("127.0.0.1:0"), unix(&path)]).unwrap();
        let port = listeners.port().unwrap();
        let server = spawn_server(&listeners, &[]);

        let stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let over_unix = get(stream);
        assert_eq!(over_unix["pid"], server.0.id());
        assert_tcp_then_unix(&over_unix, port, &path);

        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert_eq!(get(stream)["pid"], server.0.id());
    }

    #[test]
    fn sources_sitting_on_each_others_targets_are_not_overwritten() {
        let dir = TempDir::new("listen-swap");
        let path = dir.path().join("app.sock");
        let listeners = Listeners::bind(&[tcp("127.0.0.1:0"), unix(&path)]).unwrap();
        let port = listeners.port().unwrap();
        let (tcp_fd, unix_fd) = (listeners.fds[0].as_raw_fd(), listeners.fds[1].as_raw_fd());
        let mut cmd = server_command(&listeners, &[]);
        let mut scratch = [0; 2];
        // In the child, the TCP socket (for fd 3) is put on fd 4 and the Unix
        // one (for fd 4) on fd 3: moving them one by one would lose one.
        let swap_then_hand_over = move || {
            // SAFETY: fcntl and dup2 on fds the child owns.
            unsafe {
                let high_tcp = libc::fcntl(tcp_fd, libc::F_DUPFD_CLOEXEC, 100);
                let high_unix = libc::fcntl(unix_fd, libc::F_DUPFD_CLOEXEC, 100);
                if high_tcp < 0
                    || high_unix < 0
                    || libc::dup2(high_unix, 3) < 0
                    || libc::dup2(high_tcp, 4) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            hand_over([4, 3].into_iter(), &mut scratch)
        };
        // SAFETY: the closure makes system calls only.
        unsafe {
            cmd.pre_exec(swap_then_hand_over);
        }
        let server = Reaped(cmd.spawn().unwrap());

        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reply = get(stream);
        assert_eq!(reply["pid"], server.0.id());
        assert_tcp_then_unix(&reply, port, &path);
    }
}
