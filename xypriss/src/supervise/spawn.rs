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
//! The process is first a fresh xypriss ([`super::exec`], which says why
//! not a fork of this one): this side starts it with `posix_spawn`, puts it
//! in its cgroups, registers it with the kernel programs and resets its
//! scheduling and OOM score, all by pid, while it waits for its plan; then
//! sends the plan and waits for the exec, or for why it failed. Everything
//! the app ever runs is thus born inside its cgroups and counted.
//!
//! Processes are spawned with std, not tokio: xypriss reaps every child
//! itself (it is a subreaper, so orphaned descendants of workers come to it
//! too), with one `waitpid(-1)` loop on SIGCHLD. A start that fails is
//! reaped here, as std reaps a child whose exec failed.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::{self, IoSlice, Read as _, Write as _},
    net::Shutdown,
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStringExt as _, net::UnixStream, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{
    cgroup::WorkerCgroup,
    exec::{self, Failure, Plan},
    identity::{self, Account},
    listen::Listeners,
    oom_score_adj, priority,
};
use crate::{observe::ebpf::Registration, output::stderr};
use nix::sys::{
    signal::{Signal, killpg},
    socket::{ControlMessage, MsgFlags, sendmsg},
};
use nix::unistd::Pid;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    net::unix::pipe,
};

/// The xypriss that starts workers, as the pool runs it: its own image,
/// even once the file it came from was replaced or removed.
pub const SELF: &str = "/proc/self/exe";

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
    /// The xypriss binary whose `__start-worker` runs the worker's first
    /// moments: [`SELF`] in the pool.
    pub starter: &'a Path,
    pub app: &'a Path,
    pub args: &'a [OsString],
    pub id: u32,
    pub generation: u32,
    pub identity: &'a Identity,
    /// `XYPRISS_*` and the user's `--env`, in that order, on top of the
    /// variables of xypriss's own environment that [`identity::passes`] lets
    /// through.
    pub env: Vec<(OsString, OsString)>,
    /// The worker's cgroup, in each hierarchy, joined before exec, so
    /// everything it ever starts is born inside.
    pub cgroup: Option<&'a WorkerCgroup>,
    /// Registers the process with the kernel programs before exec.
    pub registration: Option<Registration>,
    /// Sockets to hand over as fds 3, 4, … (systemd socket activation).
    pub listeners: Option<&'a Listeners>,
    /// The worker's end of its control channel, handed over with the
    /// sockets, right after them: fd 3 + the number of sockets.
    pub control: Option<RawFd>,
}

/// Spawns `spec`; returns its pid once it has exec'd the app. The caller
/// reaps it.
pub fn spawn(spec: Spec<'_>) -> io::Result<u32> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut fds: Vec<RawFd> = spec
        .listeners
        .map(|l| l.raw_fds().collect())
        .unwrap_or_default();
    let sockets = fds.len();
    fds.extend(spec.control);
    if fds.len() > exec::MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds to hand a worker: at most {}",
                fds.len(),
                exec::MAX_FDS
            ),
        ));
    }
    let plan = plan(&spec, sockets);
    // No pre_exec, no credentials: std uses posix_spawn, and this process's
    // memory is neither copied nor made copy-on-write.
    let mut child = Command::new(spec.starter)
        .arg0("xypriss")
        .arg(exec::ARG)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("starting {}: {err}", spec.starter.display()),
            )
        })?;
    let pid = child.id();
    let started = prepare(pid, &spec)
        .and_then(|()| send(&ours, &plan, &fds))
        .and_then(|()| exec_done(ours));
    if let Err(err) = started {
        // It has not run the app: nothing of the worker's to stop but it.
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
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
    // Its reaper is xypriss's `waitpid(-1)`; std's `Child` waits for
    // nothing when dropped.
    drop(child);
    Ok(pid)
}

/// What the new process does with the app, as std's `Command` would have
/// run it: the environment is xypriss's, less what [`identity::passes`]
/// keeps out, with the account's, the spec's and the sockets' on top.
fn plan(spec: &Spec<'_>, sockets: usize) -> Plan {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(name, _)| identity::passes(name))
        .collect();
    if let Some(account) = &spec.identity.account {
        env.extend(account.env().into_iter().map(|(k, v)| (k.into(), v)));
    }
    env.extend(spec.env.iter().cloned());
    if let Some(listeners) = spec.listeners {
        env.extend(
            listeners
                .env()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
    }
    let program = spec.app.as_os_str().to_owned().into_vec();
    let mut argv = vec![program.clone()];
    argv.extend(spec.args.iter().map(|a| a.clone().into_vec()));
    Plan {
        program,
        argv,
        env: env
            .into_iter()
            .map(|(name, value)| {
                let mut entry = name.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                entry
            })
            .collect(),
        supervisor: std::process::id(),
        uid: spec.identity.uid,
        gid: spec.identity.gid,
        cwd: spec
            .identity
            .cwd
            .as_ref()
            .map(|dir| dir.as_os_str().to_owned().into_vec()),
        sockets,
    }
}

/// What is done to process `pid` from here, before it runs the app.
fn prepare(pid: u32, spec: &Spec<'_>) -> io::Result<()> {
    let step = |what: &'static str| {
        move |err: io::Error| io::Error::new(err.kind(), format!("{what}: {err}"))
    };
    // Before it gives up root: only root sets the floor anew.
    oom_score_adj::reset(pid).map_err(step("resetting its OOM score adjustment"))?;
    priority::reset(pid).map_err(step("resetting its scheduling"))?;
    if let Some(registration) = &spec.registration {
        registration
            .register(pid)
            .map_err(step("registering it with the kernel programs"))?;
    }
    if let Some(cgroup) = spec.cgroup {
        cgroup
            .add(pid)
            .map_err(|err| io::Error::other(format!("joining its cgroups: {err}")))?;
    }
    Ok(())
}

/// Sends the plan, the fds riding on its first byte, and ends the stream.
fn send(mut socket: &UnixStream, plan: &Plan, fds: &[RawFd]) -> io::Result<()> {
    let text = serde_json::to_vec(plan).map_err(io::Error::other)?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&text)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    socket.write_all(&text[sent..])?;
    socket.shutdown(Shutdown::Write)
}

/// Waits for the exec: the socket closes with it, unanswered. An answer
/// is why the start failed.
fn exec_done(mut socket: UnixStream) -> io::Result<()> {
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer)?;
    if answer.is_empty() {
        return Ok(());
    }
    let failure: Failure = serde_json::from_slice(&answer).map_err(|err| {
        io::Error::other(format!(
            "the worker's start said something unreadable ({err}): {}",
            String::from_utf8_lossy(&answer)
        ))
    })?;
    Err(failure.into_error())
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
