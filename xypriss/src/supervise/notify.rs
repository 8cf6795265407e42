//! systemd's notify protocol: a worker tells xypriss it is ready by sending
//! `READY=1` to the Unix datagram socket named in `NOTIFY_SOCKET`.
//!
//! A process that has started is not yet a worker that serves: a runtime may
//! take seconds to load before it accepts, and the protocol is the one
//! servers already speak to systemd (`sd_notify`, and a few lines in any
//! language), so they need nothing xypriss-specific. The socket passes
//! credentials (SO_PASSCRED): the kernel stamps each datagram with the
//! sender's pid, which a worker cannot forge, so xypriss knows who is ready.
//! Which pids it accepts is the caller's business.
//!
//! Only the workers may send: the socket file belongs to the workers' user,
//! mode 0600, so the kernel refuses every other user (root aside), and a
//! datagram whose credentials name another uid is dropped before anything
//! is done for it, with a warning at most every [`WARN_EVERY`] that says how
//! many were. Any local user could otherwise keep the control loop busy:
//! each datagram costs it up to 32 /proc reads to find its worker.
//!
//! Each xypriss names its socket with its pid, and removes it when it ends;
//! one that was SIGKILLed cannot, and no later xypriss would bind that name
//! again. So binding one also removes the dead `*.notify` sockets beside it
//! (those nobody is bound to any more), and the directory does not fill up.

use std::{
    fs::{self, Permissions},
    io::{self, IoSliceMut},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{
            fs::{FileTypeExt as _, PermissionsExt as _, chown},
            net,
        },
    },
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    cmsg_space,
    sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt},
    unistd::geteuid,
};
use tokio::{io::Interest, net::UnixDatagram};

use super::listen::{SocketFile, clear_stale_socket};

/// The longest datagram read, as systemd's NOTIFY_BUFFER_MAX; longer ones are
/// dropped, as systemd does.
const DATAGRAM_MAX: usize = 4096;
/// The most fds one datagram can carry (the kernel's SCM_MAX_FD). None are
/// used, but room for them keeps the credentials readable when a sender
/// passes some; they are closed at once.
const SCM_MAX_FD: usize = 253;

/// One datagram: who sent it, and its `KEY=VALUE` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The sender's pid, from the kernel (SCM_CREDENTIALS); `None` when the
    /// kernel gave none, or the sender is in a pid namespace xypriss cannot see.
    pub pid: Option<u32>,
    pub fields: Vec<(String, String)>,
}

impl Notification {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `READY=1`: the worker has started and serves.
    pub fn ready(&self) -> bool {
        self.has("READY", "1")
    }

    /// `STOPPING=1`: the worker is shutting down.
    pub fn stopping(&self) -> bool {
        self.has("STOPPING", "1")
    }

    /// `STATUS=…`: a one-line state for humans.
    pub fn status(&self) -> Option<&str> {
        self.get("STATUS")
    }

    /// `MAINPID=…`: the pid the worker says is its main process.
    pub fn main_pid(&self) -> Option<u32> {
        self.get("MAINPID")?.parse().ok().filter(|&pid| pid > 0)
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.fields.iter().any(|(k, v)| k == key && v == value)
    }
}

/// Parses a datagram: newline-separated `KEY=VALUE` lines. A line without `=`
/// or with an empty key is skipped; bytes that are not UTF-8 are replaced.
pub fn parse(datagram: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(datagram)
        .split('\n')
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Removes the `*.notify` sockets in `dir` that nothing is bound to any
/// more; returns their paths. Live ones, and anything else, stay.
fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for path in entries.filter_map(|entry| Some(entry.ok()?.path())) {
        let socket = path.extension().is_some_and(|e| e == "notify")
            && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        // A socket still bound is refused, and stays.
        if socket && clear_stale_socket(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// How often, at most, datagrams from another user than the workers' are
/// warned about.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Warnings at most every [`WARN_EVERY`], each with how many events it covers.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    since: u64,
}

impl RateLimit {
    /// One more event at `now`: how many to warn about now, if it is time.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// The socket workers notify, bound at a path and removed on drop.
pub struct NotifySocket {
    socket: UnixDatagram,
    file: SocketFile,
    /// The workers' uid: datagrams from any other are dropped.
    sender: u32,
    refused: Mutex<RateLimit>,
}

impl NotifySocket {
    /// Binds a datagram socket at `path`, replacing a stale socket there,
    /// that only uid `sender` (the workers') may send to. Must be called
    /// within a tokio runtime.
    pub fn bind(path: PathBuf, sender: u32) -> io::Result<Self> {
        clear_stale_socket(&path)?;
        if let Some(dir) = path.parent() {
            for stale in remove_stale(dir) {
                tracing::info!(
                    "removed {}, left by an xypriss that is gone",
                    stale.display()
                );
            }
        }
        let socket = net::UnixDatagram::bind(&path).map_err(|err| {
            io::Error::new(err.kind(), format!("cannot bind {}: {err}", path.display()))
        })?;
        let file = SocketFile::new(path)?;
        let failed = |what: &str, err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("{}: {what}: {err}", file.path().display()),
            )
        };
        setsockopt(&socket, sockopt::PassCred, &true)
            .map_err(|errno| failed("SO_PASSCRED", errno.into()))?;
        fs::set_permissions(file.path(), Permissions::from_mode(0o600))
            .map_err(|err| failed("chmod 600", err))?;
        if sender != geteuid().as_raw() {
            chown(file.path(), Some(sender), None)
                .map_err(|err| failed("give the workers' user", err))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(|err| failed("O_NONBLOCK", err))?;
        let socket = UnixDatagram::from_std(socket).map_err(|err| failed("register", err))?;
        Ok(Self {
            socket,
            file,
            sender,
            refused: Mutex::default(),
        })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The next datagram from the workers' user. Datagrams longer than 4 KiB
    /// are dropped with a warning; those of another user too, with a warning
    /// at most every [`WARN_EVERY`].
    pub async fn recv(&self) -> io::Result<Notification> {
        loop {
            let received = self
                .socket
                .async_io(Interest::READABLE, || self.recv_now())
                .await?;
            if let Some(notification) = received {
                return Ok(notification);
            }
        }
    }

    /// The next datagram if one is already waiting, without waiting.
    pub fn try_recv(&self) -> io::Result<Option<Notification>> {
        loop {
            match self.socket.try_io(Interest::READABLE, || self.recv_now()) {
                Ok(Some(notification)) => return Ok(Some(notification)),
                Ok(None) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads one datagram if there is one; `None` for one that was too long.
    fn recv_now(&self) -> io::Result<Option<Notification>> {
        let mut buf = [0u8; DATAGRAM_MAX];
        let mut cmsg = cmsg_space!(UnixCredentials, [RawFd; SCM_MAX_FD]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let (mut pid, mut uid) = (None, None);
        for message in msg.cmsgs().into_iter().flatten() {
            match message {
                ControlMessageOwned::ScmCredentials(creds) => {
                    pid = u32::try_from(creds.pid()).ok().filter(|&pid| pid > 0);
                    uid = Some(creds.uid());
                }
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: the kernel just gave us this fd; nobody else owns it.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
                _ => {}
            }
        }
        // First, before anything is done for it: is it the workers'?
        if uid != Some(self.sender) {
            let refused = self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .note(Instant::now());
            if let Some(count) = refused {
                tracing::warn!(
                    "dropped {count} notification(s) not from the workers' uid {} (the latest from uid {}, pid {})",
                    self.sender,
                    uid.map_or_else(|| "unknown".into(), |uid| uid.to_string()),
                    pid.map_or_else(|| "unknown".into(), |pid| pid.to_string())
                );
            }
            return Ok(None);
        }
        let (len, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
        if truncated {
            tracing::warn!(
                "dropped a notification longer than {DATAGRAM_MAX} bytes from pid {}",
                pid.map_or_else(|| "unknown".into(), |pid| pid.to_string())
            );
            return Ok(None);
        }
        Ok(Some(Notification {
            pid,
            fields: parse(&buf[..len]),
        }))
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::{
        super::listen::{ListenAddr, Listeners, testing::*},
        *,
    };

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_lines_and_skips_malformed_ones() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=listening on :8080\n"),
            pairs(&[("READY", "1"), ("STATUS", "listening on :8080")])
        );
        assert_eq!(
            parse(b"garbage\n=nokey\n\nA=b=c\nEMPTY=\nREADY=1"),
            pairs(&[("A", "b=c"), ("EMPTY", ""), ("READY", "1")])
        );
        assert_eq!(
            parse(b"STATUS=caf\xe9\n"),
            pairs(&[("STATUS", "caf\u{fffd}")])
        );
        assert_eq!(parse(b""), pairs(&[]));
    }

    #[test]
    fn helpers_read_the_fields_systemd_defines() {
        let n = Notification {
            pid: Some(42),
            fields: parse(b"READY=1\nSTATUS=up\nSTATUS=later\nMAINPID=77"),
        };
        assert!(n.ready());
        assert!(!n.stopping());
        assert_eq!(n.status(), Some("up"));
        assert_eq!(n.main_pid(), Some(77));
        let n = Notification {
            pid: None,
            fields: parse(b"READY=0\nSTOPPING=1\nMAINPID=0"),
        };
        assert!(!n.ready());
        assert!(n.stopping());
        assert_eq!(n.status(), None);
        assert_eq!(n.main_pid(), None);
    }

    #[tokio::test]
    async fn receives_fields_with_the_senders_pid() {
        let dir = TempDir::new("notify-recv");
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(path.clone(), geteuid().as_raw()).unwrap();
        assert_eq!(socket.path(), path);
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let sender = net::UnixDatagram::unbound().unwrap();
        sender.send_to(&[b'x'; DATAGRAM_MAX + 1], &path).unwrap();
        sender
            .send_to(b"STATUS=starting\nREADY=1\n", &path)
            .unwrap();
        let n = timeout(TIMEOUT, socket.recv()).await.unwrap().unwrap();
        assert_eq!(n.pid, Some(std::process::id()));
        assert!(n.ready(), "the long datagram is skipped: {n:?}");
        assert_eq!(n.status(), Some("starting"));

        drop(socket);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn refusals_are_warned_about_at_most_every_ten_seconds() {
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(limit.note(start), Some(1), "the first one at once");
        for ms in 1..1000 {
            assert_eq!(limit.note(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.note(start + WARN_EVERY), Some(1000), "with the count");
        assert_eq!(limit.note(start + WARN_EVERY), None);
    }

    #[tokio::test]
    async fn datagrams_of_another_uid_are_dropped_first() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = TempDir::new("notify-uid");
        let path = dir.path().join("notify");
        // The workers are somebody else: this process (root, or the test's
        // user) is not them, so its datagrams are not theirs.
        let socket = NotifySocket::bind(path.clone(), geteuid().as_raw() + 1).unwrap();
        let sender = net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1\n", &path).unwrap();
        assert!(
            timeout(Duration::from_millis(300), socket.recv())
                .await
                .is_err(),
            "a datagram of another uid came through"
        );
        if geteuid().is_root() {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.uid(), geteuid().as_raw() + 1, "the workers' socket");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_only() {
        let dir = TempDir::new("notify-bind");
        let path = dir.path().join("notify");
        drop(net::UnixDatagram::bind(&path).unwrap());
        let socket = NotifySocket::bind(path.clone(), geteuid().as_raw()).unwrap();
        let err = NotifySocket::bind(path.clone(), geteuid().as_raw())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(socket);

        fs::write(&path, "data").unwrap();
        let err = NotifySocket::bind(path.clone(), geteuid().as_raw())
            .err()
            .unwrap();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "data");
    }

    #[tokio::test]
    async fn bind_removes_the_dead_notify_sockets_beside_it() {
        let dir = TempDir::new("notify-stale");
        let at = |name: &str| dir.path().join(name);
        drop(net::UnixDatagram::bind(at("gone.1.notify")).unwrap());
        let live = net::UnixDatagram::bind(at("live.2.notify")).unwrap();
        fs::write(at("data.3.notify"), "data").unwrap();
        drop(net::UnixDatagram::bind(at("gone.4.sock")).unwrap());
        let socket = NotifySocket::bind(at("new.5.notify"), geteuid().as_raw()).unwrap();
        assert!(!at("gone.1.notify").exists(), "a dead notify socket stays");
        for kept in [
            "live.2.notify",
            "data.3.notify",
            "gone.4.sock",
            "new.5.notify",
        ] {
            assert!(at(kept).exists(), "{kept} was removed");
        }
        drop((live, socket));
    }

    #[tokio::test]
    async fn a_real_worker_says_it_is_ready() {
        let dir = TempDir::new("notify-worker");
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(path.clone(), geteuid().as_raw()).unwrap();
        let addr: ListenAddr = "127.0.0.1:0".parse().unwrap();
        let listeners = Listeners::bind(&[addr]).unwrap();
        let server = spawn_server(&listeners, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);

        let n = timeout(TIMEOUT, socket.recv())
            .await
            .expect("READY=1 within the timeout")
            .unwrap();
        assert!(n.ready(), "{n:?}");
        assert_eq!(n.pid, Some(server.0.id()));
        assert_eq!(n.main_pid(), Some(server.0.id()));
        assert_eq!(n.status(), Some("serving on 1 sockets"));
        drop(server);
        assert!(
            timeout(Duration::from_millis(200), socket.recv())
                .await
                .is_err(),
            "one datagram, not more"
        );
    }
}
