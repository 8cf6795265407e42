//! Starting a worker process, and signalling its process group.
//!
//! Each worker gets its own process group, so that a stop signal reaches
//! everything it started, and a parent-death signal, so that it dies with
//! xypriss even when xypriss is SIGKILLed. It never keeps a capability, nor
//! can it get one back: xypriss runs as root for eBPF, its workers need not.
//! Every worker loses the bounding and ambient sets, root's supplementary
//! groups, and gets `PR_SET_NO_NEW_PRIVS`; as another user (`--user`) the
//! kernel clears the rest; as root (`--user root`), they are dropped for good
//! (securebits) before exec. Who it runs as by default is
//! [`identity`]'s choice. It inherits only the fds it is handed, and an
//! allow-listed environment ([`identity::passes`]). Nor does it keep
//! xypriss's shield from the OOM killer ([`oom_score_adj`]), whether
//! xypriss set it itself or a service manager did (the systemd unit's
//! `OOMScoreAdjust=`), nor xypriss's raised priority ([`priority`]): it
//! runs at the nice value xypriss was started with. Its stdout and stderr are prefixed and forwarded to
//! xypriss's stderr: stdout is the NDJSON stream, and stays pure.
//!
//! Processes are spawned with std, not tokio: xypriss reaps every child
//! itself (it is a subreaper, so orphaned descendants of workers come to it
//! too), with one `waitpid(-1)` loop on SIGCHLD.

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{OwnedFd, RawFd},
        unix::{ffi::OsStringExt as _, process::CommandExt as _},
    },
    path::PathBuf,
    process::{Command, Stdio},
};

use super::{
    cgroup::WorkerCgroup,
    identity::{self, Account},
    listen::Listeners,
    oom_score_adj, priority,
};
use crate::{observe::ebpf::Registration, output::stderr};
use nix::{
    fcntl::{OFlag, open},
    sys::{
        prctl,
        signal::{Signal, killpg},
        stat::Mode,
    },
    unistd::{Gid, Pid, Uid, chdir, geteuid, getppid, setgid, setgroups, setuid, write},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    net::unix::pipe,
};

/// Who workers run as, and where.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// Their user; `None` keeps xypriss's own.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Where they start, entered once they are that user.
    pub cwd: Option<PathBuf>,
    /// `HOME`, `USER`, `LOGNAME` and `SHELL` for them: the account they run
    /// as, not xypriss's.
    pub account: Option<Account>,
}

/// One worker process to start.
pub struct Spec<'a> {
    pub app: &'a std::path::Path,
    pub args: &'a [OsString],
    pub id: u32,
    pub generation: u32,
    pub identity: &'a Identity,
    /// `XYPRISS_*` and the user's `--env`, in that order, on top of the
    /// variables of xypriss's own environment that [`identity::passes`] lets
    /// through.
    pub env: Vec<(OsString, OsString)>,
    /// The worker's cgroup: the child moves itself in, in each hierarchy,
    /// before exec, so everything it ever starts is born inside.
    pub cgroup: Option<&'a WorkerCgroup>,
    /// Registers the child with the kernel programs before exec.
    pub registration: Option<Registration>,
    /// Sockets to hand over as fds 3, 4, … (systemd socket activation).
    pub listeners: Option<&'a Listeners>,
    /// The worker's end of its control channel, handed over with the
    /// sockets, right after them: fd 3 + the number of sockets.
    pub control: Option<RawFd>,
}

/// Spawns `spec`; returns its pid. The caller reaps it.
pub fn spawn(spec: Spec<'_>) -> io::Result<u32> {
    let supervisor = Pid::this();
    let root = geteuid().is_root();
    let cgroup_procs = spec
        .cgroup
        .map(WorkerCgroup::procs_files)
        .unwrap_or_default()
        .into_iter()
        .map(|p| CString::new(p.into_os_string().into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let cwd = spec
        .identity
        .cwd
        .as_ref()
        .map(|dir| CString::new(dir.clone().into_os_string().into_vec()))
        .transpose()
        .map_err(io::Error::other)?;
    let mut cmd = Command::new(spec.app);
    cmd.args(spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, _) in std::env::vars_os() {
        if !identity::passes(&name) {
            cmd.env_remove(name);
        }
    }
    if let Some(account) = &spec.identity.account {
        cmd.envs(account.env());
    }
    cmd.envs(spec.env);
    let (uid, gid) = (spec.identity.uid, spec.identity.gid);
    let registration = spec.registration;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    // SAFETY: between fork and exec the closure only makes system calls.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            // Had xypriss died before the prctl, no signal would ever come.
            if getppid() != supervisor {
                return Err(io::Error::other(
                    "xypriss exited while the worker was starting",
                ));
            }
            // Before the identity changes: only root sets the floor anew.
            oom_score_adj::reset_in_child()?;
            priority::reset_this_thread()?;
            if let Some(registration) = &registration {
                registration.register_self()?;
            }
            for procs in &cgroup_procs {
                // "0" is the writing process itself; still root, so allowed.
                let fd = open(
                    procs.as_c_str(),
                    OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                write(&fd, b"0")?;
            }
            if root {
                // While CAP_SETPCAP is still there: no capability can ever
                // come back, through exec or otherwise, whatever user follows.
                drop_bounding_set(last_cap)?;
                // Then the identity: groups first, while still allowed to
                // change them; root's supplementary groups go in every case.
                setgroups(&[])?;
            }
            if let Some(gid) = gid {
                setgid(Gid::from_raw(gid))?;
            }
            match uid {
                // From root to another user, the kernel clears every capability.
                Some(uid) if uid != 0 => setuid(Uid::from_raw(uid))?,
                // Still root (`--user root`): give up every capability, for good.
                _ => drop_capabilities()?,
            }
            // No exec (a setuid binary, file capabilities) gives any back.
            prctl::set_no_new_privs()?;
            if uid.is_some_and(|uid| uid != 0) || gid.is_some() {
                // A change of credentials clears the parent-death signal: set it again.
                prctl::set_pdeathsig(Signal::SIGKILL)?;
                if getppid() != supervisor {
                    return Err(io::Error::other(
                        "xypriss exited while the worker was starting",
                    ));
                }
            }
            // As the worker's user: a directory it may not enter is an error.
            if let Some(cwd) = &cwd {
                chdir(cwd.as_c_str())?;
            }
            Ok(())
        });
    }
    let none;
    let listeners = match spec.listeners {
        Some(listeners) => listeners,
        None => {
            none = Listeners::bind(&[]).map_err(io::Error::other)?;
            &none
        }
    };
    cmd.envs(listeners.env());
    // Last: it moves the sockets and the control channel to fds 3, 4, …,
    // leaves nothing else inheritable, and execs with LISTEN_PID when there
    // are sockets.
    let hand_over = listeners.child_setup(&cmd, spec.control.as_slice())?;
    // SAFETY: the closure allocates nothing; see `Listeners::child_setup`.
    unsafe {
        cmd.pre_exec(hand_over);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (id, generation) = (spec.id, spec.generation);
    for stream in [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    {
        let receiver = pipe::Receiver::from_owned_fd(stream)?;
        tokio::spawn(forward(receiver, id, generation, pid));
    }
    Ok(pid)
}

/// Empties the bounding set and the ambient set of this process (about to
/// exec a worker, still root): whatever user it becomes, no capability can
/// come back. Only system calls: safe between fork and exec.
fn drop_bounding_set(last_cap: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with the arguments its man page documents.
    unsafe {
        for cap in 0..=last_cap {
            check(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0).into())?;
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
            .into(),
        )
    }
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Leaves this process (about to exec a worker as root, its bounding set
/// already empty) with no capability: empty effective, permitted and
/// inheritable sets, and the securebits that stop exec from granting root's
/// capabilities back. Only system calls: safe between fork and exec. Does
/// nothing when the process has no capabilities to drop (not root).
fn drop_capabilities() -> io::Result<()> {
    // From <linux/securebits.h> and <linux/capability.h>.
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    if !geteuid().is_root() {
        return Ok(());
    }
    // SAFETY: prctl and capset with the arguments their man pages document.
    unsafe {
        let bits = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP
            | SECBIT_NO_SETUID_FIXUP_LOCKED;
        check(libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0).into())?;
        let header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(
            libc::SYS_capset,
            &raw const header,
            data.as_ptr(),
        ))
    }
}

/// The longest piece of a worker's output line forwarded at once. A line
/// past it is cut into pieces this long, each forwarded as its own line and
/// marked, so that a worker writing without newlines costs xypriss this much
/// memory, not the line's length (xypriss runs as root, shielded from the OOM
/// killer: what it holds for a worker must be bounded).
pub const MAX_LINE: usize = 64 << 10;

/// How a forwarded piece of a worker's output ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// The rest of a line, up to its newline (or the end of the stream).
    Whole,
    /// [`MAX_LINE`] bytes of a line that goes on.
    Cut,
}

/// Copies a worker's output to stderr, one prefixed line at a time, through
/// the bounded writer that drops (and counts) what a stalled stderr cannot
/// take; a line longer than [`MAX_LINE`] goes in marked pieces.
async fn forward(stream: impl AsyncRead + Unpin, id: u32, generation: u32, pid: u32) {
    let mut continued = false;
    let _ = pieces(stream, MAX_LINE, |piece, end| {
        let more = if continued { " +" } else { "" };
        let mut out = format!("[worker {id}.{generation} pid {pid}{more}] ").into_bytes();
        out.extend_from_slice(piece);
        if end == Piece::Cut {
            out.extend_from_slice(format!(" [cut at {MAX_LINE} bytes: continued]").as_bytes());
        }
        out.push(b'\n');
        // Queued, never waited for: see output::stderr.
        stderr::worker_line(pid, out);
        continued = end == Piece::Cut;
    })
    .await;
}

/// Reads `stream` to its end and gives `each` its lines, newline excluded, in
/// pieces of at most `max` bytes. Holds at most `max` bytes of a line.
async fn pieces(
    stream: impl AsyncRead + Unpin,
    max: usize,
    mut each: impl FnMut(&[u8], Piece),
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::with_capacity(max.min(8 << 10));
    loop {
        let buf = reader.fill_buf().await?;
        if line.len() == max {
            // Full: whole if its newline comes next (or nothing does), else cut.
            let next = buf.first().copied();
            if next == Some(b'\n') {
                reader.consume(1);
            }
            let end = match next {
                Some(b'\n') | None => Piece::Whole,
                Some(_) => Piece::Cut,
            };
            each(&line, end);
            line.clear();
            continue;
        }
        if buf.is_empty() {
            if !line.is_empty() {
                each(&line, Piece::Whole);
            }
            return Ok(());
        }
        let room = max - line.len();
        match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(at) => {
                line.extend_from_slice(&buf[..at]);
                reader.consume(at + 1);
                each(&line, Piece::Whole);
                line.clear();
            }
            None => {
                let take = buf.len().min(room);
                line.extend_from_slice(&buf[..take]);
                reader.consume(take);
            }
        }
    }
}

/// Sends `signal` to the process group a worker leads.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Err(err) = killpg(Pid::from_raw(pid as i32), signal)
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!("could not send {signal} to worker group {pid}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cut(input: &[u8], max: usize) -> Vec<(Vec<u8>, Piece)> {
        let mut out = Vec::new();
        pieces(input, max, |piece, end| out.push((piece.to_vec(), end)))
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn lines_shorter_than_the_cap_pass_whole() {
        let out = cut(b"one\ntwo\n\nlast", 8).await;
        let whole = |s: &str| (s.as_bytes().to_vec(), Piece::Whole);
        assert_eq!(out, [whole("one"), whole("two"), whole(""), whole("last")]);
    }

    #[tokio::test]
    async fn a_long_line_goes_in_marked_pieces_and_nothing_is_lost() {
        let out = cut(b"abcdefghij\nxy\n", 4).await;
        let piece = |s: &str, end| (s.as_bytes().to_vec(), end);
        assert_eq!(
            out,
            [
                piece("abcd", Piece::Cut),
                piece("efgh", Piece::Cut),
                piece("ij", Piece::Whole),
                piece("xy", Piece::Whole),
            ]
        );
        // A line of exactly the cap is whole.
        let out = cut(b"abcd\nefghi", 4).await;
        assert_eq!(
            out,
            [
                piece("abcd", Piece::Whole),
                piece("efgh", Piece::Cut),
                piece("i", Piece::Whole)
            ]
        );
    }
}
