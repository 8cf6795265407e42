//! Starting a worker process, and signalling its process group.
//!
//! Each worker gets its own process group, so that a stop signal reaches
//! everything it started, and a parent-death signal, so that it dies with
//! xypriss even when xypriss is SIGKILLed. It never keeps a capability:
//! xypriss runs as root for eBPF, its workers need not. As another user
//! (`--user`) the kernel clears them; as root, they are dropped for good
//! (bounding set, ambient, securebits) before exec. Nor does it keep
//! xypriss's shield from the OOM killer ([`oom_score_adj`]), whether
//! xypriss set it itself or a service manager did (the systemd unit's
//! `OOMScoreAdjust=`). Its stdout and stderr are prefixed and forwarded to
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

use super::{cgroup::WorkerCgroup, control, listen::Listeners, oom_score_adj};
use crate::{observe::ebpf::Registration, output::stderr};
use nix::{
    fcntl::{OFlag, open},
    sys::{
        prctl,
        signal::{Signal, killpg},
        stat::Mode,
    },
    unistd::{Gid, Pid, Uid, getppid, setgid, setgroups, setuid, write},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    net::unix::pipe,
};

/// Who workers run as, and where.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cwd: Option<PathBuf>,
}

/// One worker process to start.
pub struct Spec<'a> {
    pub app: &'a std::path::Path,
    pub args: &'a [OsString],
    pub id: u32,
    pub generation: u32,
    pub identity: &'a Identity,
    /// `XYPRISS_*` and the user's `--env`, in that order.
    pub env: Vec<(OsString, OsString)>,
    /// The worker's cgroup: the child moves itself in, in each hierarchy,
    /// before exec, so everything it ever starts is born inside.
    pub cgroup: Option<&'a WorkerCgroup>,
    /// Registers the child with the kernel programs before exec.
    pub registration: Option<Registration>,
    /// Sockets to hand over as fds 3, 4, … (systemd socket activation).
    pub listeners: Option<&'a Listeners>,
    /// The worker's end of its control channel, and the fd number it gets.
    pub control: Option<(RawFd, RawFd)>,
}

/// Spawns `spec`; returns its pid. The caller reaps it.
pub fn spawn(spec: Spec<'_>) -> io::Result<u32> {
    let supervisor = Pid::this();
    let cgroup_procs = spec
        .cgroup
        .map(WorkerCgroup::procs_files)
        .unwrap_or_default()
        .into_iter()
        .map(|p| CString::new(p.into_os_string().into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let mut cmd = Command::new(spec.app);
    cmd.args(spec.args)
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.identity.cwd {
        cmd.current_dir(cwd);
    }
    let (uid, gid) = (spec.identity.uid, spec.identity.gid);
    let registration = spec.registration;
    let control = spec.control;
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
            if let Some((source, target)) = control {
                control::install(source, target)?;
            }
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
            // Then the identity: groups first, while still allowed to change them.
            if uid.is_some() || gid.is_some() {
                setgroups(&[])?;
            }
            if let Some(gid) = gid {
                setgid(Gid::from_raw(gid))?;
            }
            match uid {
                // From root to another user, the kernel clears every capability.
                Some(uid) => setuid(Uid::from_raw(uid))?,
                // Still root: give up every capability, for good.
                None => drop_capabilities(last_cap)?,
            }
            if uid.is_some() || gid.is_some() {
                // A change of credentials clears the parent-death signal: set it again.
                prctl::set_pdeathsig(Signal::SIGKILL)?;
                if getppid() != supervisor {
                    return Err(io::Error::other(
                        "xypriss exited while the worker was starting",
                    ));
                }
            }
            Ok(())
        });
    }
    if let Some(listeners) = spec.listeners.filter(|l| !l.is_empty()) {
        cmd.envs(listeners.env());
        // Last: it moves the sockets to fds 3, 4, …, sets LISTEN_PID, and execs.
        let hand_over = listeners.child_setup(&cmd)?;
        // SAFETY: the closure allocates nothing; see `Listeners::child_setup`.
        unsafe {
            cmd.pre_exec(hand_over);
        }
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

/// Leaves this process (about to exec a worker as root) with no capability:
/// an empty bounding set, no ambient ones, empty effective, permitted and
/// inheritable sets, and the securebits that stop exec from granting root's
/// capabilities back. Only system calls: safe between fork and exec. Does
/// nothing when the process has no capabilities to drop (not root).
fn drop_capabilities(last_cap: libc::c_ulong) -> io::Result<()> {
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
    let check = |ret: libc::c_long| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    // SAFETY: prctl and capset with the arguments their man pages document.
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
        )?;
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

/// Copies a worker's output to stderr, one prefixed line at a time, through
/// the bounded writer that drops (and counts) what a stalled stderr cannot take.
async fn forward(stream: impl AsyncRead + Unpin, id: u32, generation: u32, pid: u32) {
    let mut lines = BufReader::new(stream).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let mut out = format!("[worker {id}.{generation} pid {pid}] ").into_bytes();
        out.extend_from_slice(&line);
        out.push(b'\n');
        // Queued, never waited for: see output::stderr.
        stderr::line(out);
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
