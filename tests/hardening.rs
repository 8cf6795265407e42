//! A root supervisor nobody can turn against the host: what a worker, a
//! local user or a second start may try, with real processes, sockets and
//! users (`nobody`, through `setpriv`).
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the hardening tests stay in one.
//!
//! A worker writing a gibibyte without a newline leaves xypriss's memory
//! flat, and one flooding short lines costs the other workers none of
//! theirs; workers never run as root unasked, get no capability back, no
//! supplementary group, only an allow-listed environment and the fds they
//! are handed, and enter `--cwd` as themselves; many `--listen` sockets and
//! the control channel all arrive where they are announced; starts of one
//! name that race (held at the race's window by strace) leave one pool;
//! another user can neither notify a pool nor pass for one, nor plant the
//! runtime directory.

mod support;

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{DEMO, MIB, Pool, XYPRISS, named, of, proc_status, root_or_skip, signal, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);
const GIB: u64 = 1 << 30;
/// How xypriss marks a piece of a line it cut.
const MARK: &str = "[cut at 65536 bytes: continued]";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xypriss-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `args` run as `nobody`, with no capability and no group.
fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        program,
    ]);
    cmd
}

#[test]
fn a_worker_writing_a_gibibyte_without_a_newline_leaves_xypriss_flat() {
    if !root_or_skip("a_worker_writing_a_gibibyte_without_a_newline_leaves_xypriss_flat") {
        return;
    }
    // The end mark comes a second after the flood, once stderr's queue has
    // drained: it is never the line dropped.
    let flood =
        format!("sleep 1; head -c {GIB} /dev/zero; echo; sleep 1; echo flood-done; exec sleep 60");
    let mut child = Command::new(XYPRISS)
        .arg("run")
        .args(named(&[
            "--workers",
            "1",
            "--no-ebpf",
            "/bin/sh",
            "-c",
            &flood,
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xypriss starts");
    let pid = child.id();
    let (spawned_tx, spawned) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).expect("NDJSON");
            if event["event"] == "worker_spawned" {
                let _ = spawned_tx.send(());
            }
        }
    });
    // stderr, read a line (at most 64 KiB and a prefix) at a time, none
    // held: bytes, cut marks, pieces xypriss says it dropped, the end mark.
    let (done_tx, done) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        let (mut bytes, mut cuts, mut dropped) = (0u64, 0u64, 0u64);
        let mut reader = BufReader::with_capacity(1 << 20, stderr);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            bytes += line.len() as u64;
            if line.ends_with(format!("{MARK}\n").as_bytes()) {
                cuts += 1;
            } else if let Some(notice) = line.strip_prefix(b"[xypriss] ") {
                let notice = String::from_utf8_lossy(notice);
                if notice.contains("lines for stderr were dropped") {
                    dropped += notice
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .expect("a count of dropped lines");
                }
            } else if line.ends_with(b"] flood-done\n") {
                let _ = done_tx.send((bytes, cuts, dropped));
                return;
            }
            line.clear();
        }
    });
    spawned.recv_timeout(TIMEOUT).expect("a worker is spawned");
    let before = proc_status(pid, "VmRSS");
    let (bytes, cuts, dropped) = done
        .recv_timeout(Duration::from_secs(300))
        .expect("the gibibyte is forwarded");
    let peak = proc_status(pid, "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "xypriss RSS before {} MiB, peak {} MiB; {bytes} bytes forwarded, {cuts} cuts, {dropped} pieces dropped",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak < before + 32 * MIB,
        "xypriss grew from {} MiB to a peak of {} MiB",
        before / MIB,
        peak / MIB
    );
    // A reader that lags costs the flooder pieces (its share of stderr's
    // queue is bounded), each counted and said: none may go unsaid.
    let piece = 64 << 10;
    assert!(
        bytes + dropped * piece >= GIB,
        "{bytes} bytes reached stderr and {dropped} pieces were said dropped: some went unsaid"
    );
    assert!(
        cuts + dropped >= GIB / piece - 1,
        "{cuts} cut marks, {dropped} pieces dropped"
    );
}

#[test]
fn a_worker_flooding_short_lines_costs_another_worker_none_of_its_own() {
    if !root_or_skip("a_worker_flooding_short_lines_costs_another_worker_none_of_its_own") {
        return;
    }
    // Worker 0 floods (`yes`: two-byte lines, as fast as they are read);
    // worker 1 writes 200 numbered lines a second later. Nothing reads
    // xypriss's stderr for 3 s, so its queue fills with the flood first.
    let script = "if [ \"$XYPRISS_WORKER_ID\" = 0 ]; then exec yes; fi; \
                  sleep 1; seq 1 200; exec sleep 60";
    let mut child = Command::new(XYPRISS)
        .arg("run")
        .args(named(&[
            "--workers",
            "2",
            "--no-ebpf",
            "/bin/sh",
            "-c",
            script,
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xypriss starts");
    let stderr = child.stderr.take().unwrap();
    thread::sleep(Duration::from_secs(3));
    let (tx, numbers) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("[worker 1.1 pid ")
                && let Some((_, n)) = rest.split_once("] ")
                && let Ok(n) = n.parse::<u32>()
                && tx.send(n).is_err()
            {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(n) = numbers.recv_timeout(TIMEOUT) {
        seen.push(n);
        if n == 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<_>>(),
        "worker 1's lines as read"
    );
}

/// The words of each field of `/proc/<pid>/status`.
fn status_field(pid: u64, name: &str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn as_root_workers_run_as_the_sudo_user_or_xypriss_refuses() {
    if !root_or_skip("as_root_workers_run_as_the_sudo_user_or_xypriss_refuses") {
        return;
    }
    let name = format!("noroot-{}", std::process::id());
    let refused = Command::new(XYPRISS)
        .args(["run", "--name", &name, "--workers", "1", DEMO, "steps", "1"])
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .output()
        .expect("xypriss runs");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("workers would run as root") && stderr.contains("--user"),
        "{stderr}"
    );

    let mut pool = Pool::start_command(
        Command::new(XYPRISS)
            .args(["run", "--name", &name, "--workers", "1", DEMO, "steps", "1"])
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534"),
    );
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    pool.wait_log("at 1 MiB", TIMEOUT);
    let pid = u64_of(&spawned, "pid");
    assert_eq!(status_field(pid, "Uid:"), ["65534"; 4]);
    assert_eq!(status_field(pid, "Gid:"), ["65534"; 4]);
    assert!(pool.stop().success());
}

#[test]
fn no_worker_keeps_a_group_or_can_regain_a_capability() {
    if !root_or_skip("no_worker_keeps_a_group_or_can_regain_a_capability") {
        return;
    }
    for user in ["nobody", "root"] {
        let mut pool = Pool::start(&["--workers", "1", "--user", user, DEMO, "steps", "1"]);
        let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
        pool.wait_log("at 1 MiB", TIMEOUT);
        let pid = u64_of(&spawned, "pid");
        assert_eq!(status_field(pid, "Groups:"), Vec::<String>::new(), "{user}");
        assert_eq!(status_field(pid, "NoNewPrivs:"), ["1"], "{user}");
        for caps in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:", "CapBnd:"] {
            assert_eq!(
                status_field(pid, caps),
                ["0000000000000000"],
                "{user} {caps}"
            );
        }
        assert!(pool.stop().success());
    }
}

#[test]
fn workers_get_an_allow_listed_environment_their_own_home_and_no_stray_fd() {
    if !root_or_skip("workers_get_an_allow_listed_environment_their_own_home_and_no_stray_fd") {
        return;
    }
    let script = "echo \"env HOME=$HOME USER=$USER SECRET=${SECRET-unset} SUDO=${SUDO_COMMAND-unset} \
                  LC=$LC_ALL PASSED=$PASSED_ON\"; \
                  if [ -e /proc/$$/fd/9 ]; then echo fd9=open; else echo fd9=closed; fi; \
                  exec sleep 60";
    let args = named(&[
        "--workers",
        "1",
        "--no-ebpf",
        "--user",
        "nobody",
        "--env",
        "PASSED_ON",
        "/bin/sh",
        "-c",
        script,
    ]);
    let mut cmd = Command::new(XYPRISS);
    cmd.arg("run")
        .args(args)
        .env("SECRET", "root's")
        .env("SUDO_COMMAND", "/bin/bash")
        .env("HOME", "/root")
        .env("LC_ALL", "C")
        .env("PASSED_ON", "yes");
    // An fd xypriss inherits without CLOEXEC, as a careless parent leaves one.
    let leaked = fs::File::open("/etc/hostname").expect("a file to leak");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut pool = Pool::start_command(&mut cmd);
    let env = pool.wait_log("env HOME=", TIMEOUT);
    let home = nix::unistd::User::from_name("nobody").unwrap().unwrap().dir;
    assert!(
        env.ends_with(&format!(
            "env HOME={} USER=nobody SECRET=unset SUDO=unset LC=C PASSED=yes",
            home.display()
        )),
        "{env}"
    );
    let fd = pool.wait_log("fd9=", TIMEOUT);
    assert!(fd.ends_with("fd9=closed"), "{fd}");
    assert!(pool.stop().success());
}

#[test]
fn cwd_is_entered_as_the_workers_user() {
    if !root_or_skip("cwd_is_entered_as_the_workers_user") {
        return;
    }
    // Root's alone: nobody may not enter it, whoever starts it.
    let private = Scratch::new("cwd");
    fs::set_permissions(&private.0, fs::Permissions::from_mode(0o700)).unwrap();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--no-ebpf",
        "--user",
        "nobody",
        "--cwd",
        private.0.to_str().unwrap(),
        "/bin/sh",
        "-c",
        "echo in $(pwd); exec sleep 60",
    ]);
    let status = pool.wait();
    assert!(
        !status.success(),
        "a worker ran as nobody in root's directory"
    );
    assert!(
        !pool.log.iter().any(|l| l.contains("] in ")),
        "{:#?}",
        pool.log
    );
    // The step that failed is named.
    assert!(
        pool.log.iter().any(|l| l.contains(&format!(
            "entering the working directory {}: Permission denied",
            private.0.display()
        ))),
        "{:#?}",
        pool.log
    );
}

#[test]
fn many_listen_sockets_and_the_control_channel_all_arrive() {
    if !root_or_skip("many_listen_sockets_and_the_control_channel_all_arrive") {
        return;
    }
    let check = "import os, socket, time\n\
                 n = int(os.environ['LISTEN_FDS']); c = int(os.environ['XYPRISS_CONTROL_FD'])\n\
                 def listening(fd):\n\
                 \x20   s = socket.socket(fileno=fd)\n\
                 \x20   try: return s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)\n\
                 \x20   finally: s.detach()\n\
                 bad = [fd for fd in range(3, 3 + n) if listening(fd) != 1]\n\
                 ctl = socket.socket(fileno=c)\n\
                 ok = ctl.family == socket.AF_UNIX and listening(c) == 0\n\
                 print('fds', n, 'control', c, 'bad', bad, 'control ok' if ok else 'control WRONG', flush=True)\n\
                 time.sleep(60)\n";
    let mut args = vec!["--workers", "1", "--no-ebpf"];
    for _ in 0..16 {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    args.extend(["/usr/bin/python3", "-c", check]);
    let mut pool = Pool::start(&args);
    let line = pool.wait_log("fds ", TIMEOUT);
    assert!(
        line.ends_with("fds 16 control 19 bad [] control ok"),
        "{line}"
    );
    assert!(pool.stop().success());
}

/// Starts of one name that race: how many.
const TWINS: usize = 4;

#[test]
fn simultaneous_starts_of_one_name_leave_one_pool() {
    if !root_or_skip("simultaneous_starts_of_one_name_leave_one_pool") {
        return;
    }
    // The race is between a start finding the name free and its socket
    // moved into place. Each start runs under strace, which stops it
    // (SIGSTOP, at its first bind: its control socket's, in a private
    // directory) inside that window; once every start has found the name
    // free and is stopped there, all go on together. Timing plays no part.
    let scratch = Scratch::new("twins");
    let name = format!("twin-{}", std::process::id());
    let mut starts: Vec<_> = (0..TWINS)
        .map(|i| {
            let mut child = Command::new("strace")
                .args(["-qq", "-o"])
                .arg(scratch.0.join(format!("{i}.strace")))
                .args([
                    "-e",
                    "trace=bind",
                    "-e",
                    "inject=bind:signal=SIGSTOP:when=1",
                ])
                .arg(XYPRISS)
                .args(["run", "--user", "root", "--name", &name, "--workers", "1"])
                .args([
                    "--no-ebpf",
                    "--status-addr",
                    "127.0.0.1:0",
                    DEMO,
                    "steps",
                    "1",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("strace runs (cargo xtask test installs it)");
            let stdout = child.stdout.take().unwrap();
            let events = thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
                    .collect::<Vec<_>>()
            });
            let mut stderr = child.stderr.take().unwrap();
            let err = thread::spawn(move || {
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err);
                err
            });
            (child, events, err)
        })
        .collect();
    // Each start's xypriss pid, from the private directory it bound in
    // (`.<name>.<pid>/sock`), once strace says it stopped there.
    let staging = format!("/run/xypriss/.{name}.");
    let deadline = Instant::now() + TIMEOUT * 3;
    let pids: Vec<u32> = (0..TWINS)
        .map(|i| {
            loop {
                let trace =
                    fs::read_to_string(scratch.0.join(format!("{i}.strace"))).unwrap_or_default();
                if trace.contains("stopped by SIGSTOP") {
                    let at =
                        trace.find(&staging).expect("the control socket's bind") + staging.len();
                    break trace[at..].split('/').next().unwrap().parse().unwrap();
                }
                assert!(Instant::now() < deadline, "start {i} never bound: {trace}");
                thread::sleep(Duration::from_millis(20));
            }
        })
        .collect();
    for &pid in &pids {
        signal(pid, Signal::SIGCONT);
    }
    // strace exits with its xypriss's status. All but one exit, and fail.
    let deadline = Instant::now() + TIMEOUT;
    let mut exited = [None; TWINS];
    while exited.iter().filter(|e| e.is_some()).count() < TWINS - 1 && Instant::now() < deadline {
        for (i, (child, _, _)) in starts.iter_mut().enumerate() {
            if exited[i].is_none() {
                exited[i] = child.try_wait().unwrap();
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    for (i, (child, _, _)) in starts.iter_mut().enumerate() {
        if exited[i].is_none() {
            exited[i] = child.try_wait().unwrap();
        }
    }
    let running: Vec<usize> = (0..TWINS).filter(|&i| exited[i].is_none()).collect();
    let winner = match running[..] {
        [winner] => winner,
        _ => {
            // Stopped as a user would, so that each removes its socket.
            for &i in &running {
                signal(pids[i], Signal::SIGINT);
            }
            for (child, _, _) in &mut starts {
                let _ = child.wait();
            }
            panic!("{} of {TWINS} starts of {name} run", running.len());
        }
    };
    // The winner answers on the socket, and its token is the only one.
    let status = Command::new(XYPRISS)
        .args(["status", "--name", &name, "--json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let json: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["pid"], pids[winner]);
    let notify: Vec<_> = fs::read_dir("/run/xypriss")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{name}.")) && n.ends_with(".notify"))
        .collect();
    assert_eq!(notify, [format!("{name}.{}.notify", pids[winner])]);
    signal(pids[winner], Signal::SIGINT);
    for (i, (mut child, events, err)) in starts.into_iter().enumerate() {
        let status = child.wait().unwrap();
        let (events, err) = (events.join().unwrap(), err.join().unwrap());
        let servers: Vec<_> = of(&events, "status_server");
        if i == winner {
            assert!(status.success(), "{err}");
            assert_eq!(servers.len(), 1, "{events:?}");
            assert_eq!(
                servers[0]["tokenFile"],
                format!("/run/xypriss/{name}.token"),
                "{servers:?}"
            );
        } else {
            assert!(!status.success(), "start {i} succeeded: {err}");
            assert!(
                err.contains(&format!("a pool named {name} already runs")),
                "start {i}: {err}"
            );
            assert!(servers.is_empty(), "a losing start served: {servers:?}");
        }
    }
    assert!(!Path::new(&format!("/run/xypriss/{name}.sock")).exists());
}

#[test]
fn another_user_cannot_notify_a_pool() {
    if !root_or_skip("another_user_cannot_notify_a_pool") {
        return;
    }
    // Workers as root: nobody is another user.
    let mut pool = Pool::start(&["--workers", "1", "--no-ebpf", DEMO, "steps", "1"]);
    pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let socket = notify_socket(pool.pid());
    let sent = as_nobody("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             try:\n\
             \x20   s.sendto(b'READY=1', sys.argv[1]); print('sent')\n\
             except PermissionError: print('refused')\n",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sent.stdout).trim(),
        "refused",
        "{sent:?}"
    );
    assert!(pool.stop().success());
}

/// Pool `pid`'s notify socket, in root's runtime directory.
fn notify_socket(pid: u32) -> PathBuf {
    fs::read_dir("/run/xypriss")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&format!(".{pid}.notify")))
        })
        .unwrap_or_else(|| panic!("no notify socket of pool {pid}"))
}

#[test]
fn a_runtime_directory_planted_under_tmp_is_refused() {
    if !root_or_skip("a_runtime_directory_planted_under_tmp_is_refused") {
        return;
    }
    // nobody has no XDG_RUNTIME_DIR: its runtime directory is
    // $TMPDIR/xypriss-65534, which another user made first, as a link.
    let tmp = Scratch::new("planted");
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o1777)).unwrap();
    let elsewhere = tmp.0.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, tmp.0.join("xypriss-65534")).unwrap();
    let out = as_nobody(XYPRISS)
        .args([
            "run",
            "--name",
            "planted",
            "--workers",
            "1",
            "--no-ebpf",
            DEMO,
            "steps",
            "1",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", &tmp.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot be trusted") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "xypriss put something in the planted directory"
    );
}

#[test]
fn a_socket_served_by_another_user_is_not_asked() {
    if !root_or_skip("a_socket_served_by_another_user_is_not_asked") {
        return;
    }
    // nobody listens, and answers every request as a pool would.
    let scratch = Scratch::new("impostor");
    fs::set_permissions(&scratch.0, fs::Permissions::from_mode(0o777)).unwrap();
    let bound = scratch.0.join("s.sock");
    let mut impostor = as_nobody("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n\
             print('listening', flush=True)\n\
             while True:\n\
             \x20   c, _ = s.accept(); c.recv(4096)\n\
             \x20   try: c.sendall(b'{\"ok\":true,\"reply\":{\"pid\":1,\"workers\":[]}}\\n')\n\
             \x20   except OSError: pass\n\
             \x20   c.close()\n",
        ])
        .arg(&bound)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(impostor.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let name = format!("impostor-{}", std::process::id());
    fs::create_dir_all("/run/xypriss").unwrap();
    let planted = Path::new("/run/xypriss").join(format!("{name}.sock"));
    fs::rename(&bound, &planted).unwrap();
    let out = Command::new(XYPRISS)
        .args(["status", "--name", &name])
        .output()
        .unwrap();
    let _ = fs::remove_file(&planted);
    let _ = impostor.kill();
    let _ = impostor.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the impostor was believed: {out:?}");
    assert!(err.contains("served by uid 65534"), "{err}");
}
