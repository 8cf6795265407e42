//! A worker's first moments: a fresh xypriss process (`xypriss
//! __start-worker`) that becomes the worker's user and execs the app.
//!
//! Why not fork xypriss and do this between fork and exec, as std's
//! `pre_exec` does: a fork copies the page tables of all of xypriss and makes
//! every page of it copy-on-write, and every thread of xypriss then faults on
//! each page it writes again. In `cargo xtask soak` (64 workers, a few
//! starts a second) the loop's thread took about 200 page faults per start,
//! 19,434 in 20 s, and a fork of a 26 MiB process held the process's memory
//! map for 0.2–0.6 ms, in which every other thread's fault waits: alerts
//! waited with them. [`super::spawn`] starts this process with `posix_spawn`
//! instead, which shares xypriss's memory until the exec (no copy, no
//! fault), and does from xypriss what can be done on a pid (cgroups, the
//! kernel programs' registration, scheduling, the OOM score). What only the
//! process itself can do is done here, with a plan read from fd 0:
//! giving up root, the working directory, and handing over the sockets.
//!
//! The protocol on fd 0, a Unix stream socket: xypriss sends a [`Plan`] as
//! JSON, the fds it names riding on its first byte, then shuts down its end.
//! This process answers nothing if the exec succeeds (the socket, kept
//! CLOEXEC, closes with it) and a [`Failure`] as JSON if a step fails, then
//! exits with [`FAILED`]. Should xypriss die meanwhile, the parent-death
//! signal or the socket's end stops this process before it runs the app.

use std::{
    ffi::{CString, OsString},
    io::{self, IoSliceMut, Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStringExt as _, net::UnixStream},
    },
    process::ExitCode,
};

use nix::{
    cmsg_space,
    fcntl::{FcntlArg, OFlag, fcntl, open},
    sys::{
        prctl,
        signal::{SigHandler, Signal, signal},
        socket::{ControlMessageOwned, MsgFlags, recvmsg, send},
        stat::Mode,
    },
    unistd::{Gid, Uid, chdir, dup2_stdin, execvpe, geteuid, getppid, setgid, setgroups, setuid},
};
use serde::{Deserialize, Serialize};

use super::listen;

/// The argument that makes `xypriss` this process rather than its CLI.
pub const ARG: &str = "__start-worker";

/// The exit status of a start that failed before the exec, as a shell's
/// for a command it could not run.
pub const FAILED: u8 = 127;

/// The most fds one message carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// What this process does, sent by xypriss. Strings are bytes: paths,
/// arguments and environment need not be UTF-8.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The app, as a path or a name looked up in `PATH`.
    pub program: Vec<u8>,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<Vec<u8>>,
    /// Its whole environment, as `NAME=value`; `LISTEN_PID` is added here.
    pub env: Vec<Vec<u8>>,
    /// xypriss's pid: if this process's parent is another, xypriss died.
    pub supervisor: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Entered as the worker's user.
    pub cwd: Option<Vec<u8>>,
    /// How many of the fds that come with the plan are listening sockets
    /// (the first ones); the others (the control channel) follow them.
    pub sockets: usize,
}

/// Why a start failed, sent back to xypriss.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    /// The step, in words: "entering the working directory /srv".
    pub step: String,
    /// The system's error number, if the step failed in a system call.
    pub errno: Option<i32>,
    pub message: String,
}

impl Failure {
    fn new(step: impl Into<String>, err: &io::Error) -> Self {
        Self {
            step: step.into(),
            errno: err.raw_os_error(),
            message: err.to_string(),
        }
    }

    /// As xypriss reports it: the kind of the error number, the step said.
    pub fn into_error(self) -> io::Error {
        let kind = self.errno.map_or(io::ErrorKind::Other, |errno| {
            io::Error::from_raw_os_error(errno).kind()
        });
        io::Error::new(kind, format!("{}: {}", self.step, self.message))
    }
}

/// The process's whole life: returns only if the start failed.
pub fn main() -> ExitCode {
    // SAFETY: xypriss started this process with the socket as fd 0, and
    // nothing else in it owns fd 0.
    let socket = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    let (plan, fds) = match receive(&socket) {
        Ok(received) => received,
        Err(err) => {
            eprintln!("xypriss {ARG}: no plan on fd 0: {err}");
            // xypriss, if it is there, hears it too, or it would take the
            // silence for an exec. Run by hand (fd 0 no socket), nothing is sent.
            let failure = Failure::new("reading the plan", &err);
            if let Ok(text) = serde_json::to_vec(&failure) {
                let _ = send(socket.as_raw_fd(), &text, MsgFlags::MSG_NOSIGNAL);
            }
            return ExitCode::from(FAILED);
        }
    };
    // The answer's way out, above every fd the worker gets, closed by the exec.
    let lowest = listen::LISTEN_FDS_START + fds.len() as RawFd;
    let report = match fcntl(&socket, FcntlArg::F_DUPFD_CLOEXEC(lowest)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd, ours alone.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(err) => {
            eprintln!("xypriss {ARG}: {err}");
            return ExitCode::from(FAILED);
        }
    };
    let failure = start(&plan, socket, &fds);
    let mut report = std::fs::File::from(report);
    if let Ok(text) = serde_json::to_vec(&failure) {
        let _ = report.write_all(&text);
    }
    ExitCode::from(FAILED)
}

/// The plan and the fds that came with it.
fn receive(mut socket: &UnixStream) -> io::Result<(Plan, Vec<OwnedFd>)> {
    let mut first = vec![0u8; 64 << 10];
    let mut space = cmsg_space!([RawFd; MAX_FDS]);
    let (read, fds) = {
        let mut iov = [IoSliceMut::new(&mut first)];
        let message = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just made these fds, in this process.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, fds)
    };
    first.truncate(read);
    socket.read_to_end(&mut first)?;
    let plan = serde_json::from_slice(&first).map_err(io::Error::other)?;
    Ok((plan, fds))
}

/// Every step to the exec; returns only what failed.
fn start(plan: &Plan, socket: UnixStream, fds: &[OwnedFd]) -> Failure {
    let step = |what: &str, err: io::Error| Failure::new(what, &err);
    if let Err(err) = parent_death(plan.supervisor) {
        return step("asking for a parent-death signal", err);
    }
    // The worker's stdin is /dev/null, no longer the socket.
    let null = match open(
        c"/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(null) => null,
        Err(err) => return step("opening /dev/null", err.into()),
    };
    drop(socket);
    if let Err(err) = dup2_stdin(&null) {
        return step("making /dev/null its stdin", err.into());
    }
    drop(null);
    if let Err(failure) = become_user(plan) {
        return failure;
    }
    if let Some(cwd) = &plan.cwd {
        let shown = String::from_utf8_lossy(cwd).into_owned();
        let entered = CString::new(cwd.clone())
            .map_err(io::Error::other)
            .and_then(|dir| chdir(dir.as_c_str()).map_err(io::Error::from));
        if let Err(err) = entered {
            return step(&format!("entering the working directory {shown}"), err);
        }
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_fd().as_raw_fd()).collect();
    let mut scratch = vec![-1; raw.len()];
    let handed = listen::hand_over(raw.into_iter(), &mut scratch)
        .and_then(|()| listen::cloexec_from(listen::LISTEN_FDS_START + scratch.len() as RawFd));
    if let Err(err) = handed {
        return step("handing over its sockets", err);
    }
    exec(plan)
}

/// The parent-death signal, and whether the parent is still xypriss: had
/// xypriss died before the signal was asked for, none would ever come.
fn parent_death(supervisor: u32) -> io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid().as_raw() as u32 != supervisor {
        return Err(io::Error::other(
            "xypriss exited while the worker was starting",
        ));
    }
    Ok(())
}

/// Gives up root for good, and becomes the worker's user and group.
fn become_user(plan: &Plan) -> Result<(), Failure> {
    let step = |what: &str| {
        let what = what.to_owned();
        move |err: io::Error| Failure::new(what, &err)
    };
    let nix = |err: nix::Error| io::Error::from(err);
    if geteuid().is_root() {
        // While CAP_SETPCAP is still there: no capability can ever come
        // back, through exec or otherwise, whatever user follows.
        drop_bounding_set().map_err(step("emptying the capability bounding set"))?;
        // Then the identity: groups first, while still allowed to change
        // them; root's supplementary groups go in every case.
        setgroups(&[])
            .map_err(nix)
            .map_err(step("dropping supplementary groups"))?;
    }
    if let Some(gid) = plan.gid {
        setgid(Gid::from_raw(gid))
            .map_err(nix)
            .map_err(step(&format!("becoming group {gid}")))?;
    }
    match plan.uid {
        // From root to another user, the kernel clears every capability.
        Some(uid) if uid != 0 => setuid(Uid::from_raw(uid))
            .map_err(nix)
            .map_err(step(&format!("becoming user {uid}")))?,
        // Still root (`--user root`): give up every capability, for good.
        _ => drop_capabilities().map_err(step("dropping root's capabilities"))?,
    }
    // No exec (a setuid binary, file capabilities) gives any back.
    prctl::set_no_new_privs()
        .map_err(nix)
        .map_err(step("setting no_new_privs"))?;
    if plan.uid.is_some_and(|uid| uid != 0) || plan.gid.is_some() {
        // A change of credentials clears the parent-death signal: again.
        parent_death(plan.supervisor).map_err(step("asking for a parent-death signal again"))?;
    }
    Ok(())
}

/// Execs the app with the plan's environment, and `LISTEN_PID` when it gets
/// sockets; returns only on failure.
fn exec(plan: &Plan) -> Failure {
    let c_string = |bytes: &[u8]| CString::new(bytes.to_vec());
    let mut env = plan.env.clone();
    if plan.sockets > 0 {
        env.retain(|entry| !entry.starts_with(b"LISTEN_PID="));
        env.push(format!("LISTEN_PID={}", std::process::id()).into_bytes());
    }
    let strings = (
        c_string(&plan.program),
        plan.argv.iter().map(|a| c_string(a)).collect(),
        env.iter().map(|e| c_string(e)).collect(),
    );
    let (program, argv, env): (CString, Vec<CString>, Vec<CString>) = match strings {
        (Ok(program), Ok(argv), Ok(env)) => (program, argv, env),
        _ => {
            let err = io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the worker's program, arguments or environment",
            );
            return Failure::new("preparing the exec", &err);
        }
    };
    // Rust ignores SIGPIPE in its programs; the app gets the default back,
    // as a process std spawns would. A failure leaves it ignored: harmless.
    // SAFETY: setting a signal's disposition to the default handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let err = match execvpe(&program, &argv, &env) {
        Err(err) => io::Error::from(err),
        Ok(never) => match never {},
    };
    let shown = OsString::from_vec(plan.program.clone());
    Failure::new(format!("running {}", shown.to_string_lossy()), &err)
}

/// Empties the bounding set and the ambient set of this process (still
/// root): whatever user it becomes, no capability can come back.
fn drop_bounding_set() -> io::Result<()> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
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

/// Leaves this process (still root, its bounding set already empty) with no
/// capability: empty effective, permitted and inheritable sets, and the
/// securebits that stop exec from granting root's capabilities back. Does
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_errors_kind_and_says_its_step() {
        let failure = Failure::new(
            "entering the working directory /srv",
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        let err = failure.into_error();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string()
                .starts_with("entering the working directory /srv: Permission denied"),
            "{err}"
        );
        let other = Failure::new("x", &io::Error::other("xypriss exited")).into_error();
        assert_eq!(other.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn a_plan_survives_json_with_bytes_that_are_not_utf8() {
        let plan = Plan {
            program: b"/srv/\xffapp".to_vec(),
            argv: vec![b"app".to_vec(), vec![0xfe]],
            env: vec![b"A=\x80".to_vec()],
            supervisor: 1,
            uid: Some(65534),
            gid: None,
            cwd: None,
            sockets: 2,
        };
        let text = serde_json::to_vec(&plan).unwrap();
        let back: Plan = serde_json::from_slice(&text).unwrap();
        assert_eq!(back.program, plan.program);
        assert_eq!(back.argv, plan.argv);
        assert_eq!(back.env, plan.env);
        assert_eq!((back.uid, back.sockets), (Some(65534), 2));
    }
}
