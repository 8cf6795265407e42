//! Malformed command lines and configuration files get one clear error
//! line naming the argument or the JSON path, and exit status 2; never a
//! panic, and never a started worker.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the command line's error cases stay in one.

mod support;

use std::{
    fs,
    io::{Read, Write as _},
    net::Shutdown,
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt as _, net::UnixStream},
    },
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{DEMO, XYPRISS, scaled};

/// How long a refusal may take: a command still running then was accepted.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` to its end, or kills it after [`REFUSAL_TIMEOUT`] (the code is
/// then -1): exit code, stdout and stderr.
fn run_command(cmd: &mut Command) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xypriss runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        thread::sleep(Duration::from_millis(5));
    };
    (
        code,
        stdout.join().expect("stdout read"),
        stderr.join().expect("stderr read"),
    )
}

fn run(args: &[&str]) -> (i32, String, String) {
    run_command(Command::new(XYPRISS).args(args))
}

/// `cmd` exits with status 2, one error line on stderr names `names`, and
/// no worker started; never a panic.
#[track_caller]
fn refused(cmd: &mut Command, names: &str) {
    let what = format!("{cmd:?}");
    let what = &what[..what.len().min(300)];
    let (code, stdout, stderr) = run_command(cmd);
    assert_eq!(code, 2, "{what}: exit code {code}; stderr: {stderr}");
    // The error: its line, and clap's lines under it up to a blank one.
    let lines: Vec<&str> = stderr.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error:") || lines[i].starts_with("xypriss:"))
        .collect();
    assert_eq!(starts.len(), 1, "{what}: one error: {stderr}");
    let error = lines[starts[0]..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        error.contains(names),
        "{what}: the error does not name `{names}`: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert!(!stdout.contains("worker_spawned"), "{what} started workers");
}

#[track_caller]
fn rejected(args: &[&str], names: &str) {
    // As root, `run` says who its workers run as, or refuses that first; and
    // a value refused after the name is taken must not meet another test's
    // pool of the default name.
    let mut cmd = Command::new(XYPRISS);
    match args.split_first() {
        Some((&"run", rest)) => {
            let user: &[&str] = if rest.contains(&"--user") {
                &[]
            } else {
                &["--user", "root"]
            };
            let rest: Vec<&str> = user.iter().chain(rest).copied().collect();
            cmd.arg("run").args(support::named(&rest))
        }
        _ => cmd.args(args),
    };
    refused(&mut cmd, names);
}

#[test]
fn bad_worker_counts() {
    rejected(&["run", "--workers", "0", DEMO], "--workers");
    rejected(&["run", "--workers", "100000", DEMO], "--workers");
    rejected(&["run", "--workers", "-3", DEMO], "--workers");
    rejected(&["run", "--workers", "lots", DEMO], "--workers");
    rejected(&["run", "--workers", "", DEMO], "--workers");
}

#[test]
fn bad_sizes_durations_and_percentages() {
    rejected(
        &["run", "--granularity", "12parsecs", DEMO],
        "--granularity",
    );
    rejected(&["run", "--granularity", "-1MB", DEMO], "--granularity");
    rejected(&["run", "--granularity", "", DEMO], "--granularity");
    rejected(&["run", "--granularity", "1", DEMO], "--granularity");
    rejected(
        &["run", "--max-memory-per-worker", "99999999999TB", DEMO],
        "--max-memory-per-worker",
    );
    rejected(&["run", "--kill-timeout", "soon", DEMO], "--kill-timeout");
    rejected(&["run", "--poll-interval", "0s", DEMO], "--poll-interval");
    rejected(
        &["run", "--memory-warning-threshold", "120", DEMO],
        "--memory-warning-threshold",
    );
    rejected(
        &[
            "run",
            "--memory-warning-threshold",
            "90",
            "--memory-critical-threshold",
            "80",
            DEMO,
        ],
        "--memory-critical-threshold",
    );
}

#[test]
fn bad_supervision_flags() {
    rejected(&["run", "--stop-signal", "SIGNOPE", DEMO], "--stop-signal");
    rejected(&["run", "--stop-signal", "", DEMO], "--stop-signal");
    rejected(
        &["run", "--restart-backoff", "0.5", DEMO],
        "--restart-backoff",
    );
    rejected(
        &["run", "--restart-backoff", "NaN", DEMO],
        "--restart-backoff",
    );
    rejected(&["run", "--restart-delay", "-1s", DEMO], "--restart-delay");
    rejected(
        &["run", "--max-quick-restarts", "-1", DEMO],
        "--max-quick-restarts",
    );
    rejected(
        &["run", "--min-workers", "3", "--max-workers", "2", DEMO],
        "--min-workers",
    );
    rejected(
        &["run", "--workers", "5", "--max-workers", "2", DEMO],
        "--max-workers",
    );
    rejected(&["run", "--max-workers", "0", DEMO], "--max-workers");
    rejected(&["run", "--user", "no-such-user-xypriss", DEMO], "--user");
    rejected(
        &["run", "--group", "no-such-group-xypriss", DEMO],
        "--group",
    );
    rejected(&["run", "--cwd", "/nonexistent/dir", DEMO], "--cwd");
    rejected(&["run", "--env", "NOEQUALS", DEMO], "--env");
    rejected(&["run", "--ready-timeout", "soon", DEMO], "--ready-timeout");
}

#[test]
fn missing_or_unusable_apps() {
    rejected(&["run", "--workers", "1"], "APP");
    rejected(&["run", "no-such-app-xypriss-test"], "not found in PATH");
    rejected(&["run", "/nonexistent/app"], "/nonexistent/app");
    let dir = std::env::temp_dir().join(format!("xypriss-cli-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    rejected(&["run", script.to_str().unwrap()], "not executable");
    rejected(&["run", dir.to_str().unwrap()], "directory");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_flags_and_subcommands() {
    rejected(&["run", "--no-such-flag", DEMO], "--no-such-flag");
    rejected(&["launch", DEMO], "launch");
}

/// Writes `json` to a temporary config file and runs `xypriss run --config` on it.
/// A worker's first step is xypriss run by itself (`__start-worker`); run
/// by hand, without the plan xypriss sends it, it says so and runs nothing.
#[test]
fn a_workers_start_run_by_hand_says_it_has_no_plan() {
    let (code, stdout, stderr) = run(&["__start-worker", "/bin/echo", "ran"]);
    assert_eq!(code, 127, "{stderr}");
    assert_eq!(stdout, "", "nothing ran");
    assert!(
        stderr.contains("__start-worker: no plan on fd 0"),
        "{stderr}"
    );
}

/// Started by xypriss but handed a plan it cannot read, a worker's start
/// tells xypriss why on the socket, rather than close it in silence (which
/// xypriss takes for an exec), and runs nothing.
#[test]
fn a_workers_start_with_an_unreadable_plan_tells_xypriss() {
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let child = Command::new(XYPRISS)
        .args(["__start-worker", "/bin/echo", "ran"])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xypriss");
    ours.write_all(b"{\"not\":\"a plan\"}").expect("send");
    ours.shutdown(Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    ours.read_to_string(&mut answer).expect("read the answer");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "", "nothing ran");
    assert!(answer.contains("\"step\":\"reading the plan\""), "{answer}");
}

fn with_config(json: &str, expected: &str) {
    let file = TempFile::with(&format!("{}.json", expected.len()), json.as_bytes());
    rejected(&["run", "--config", file.path(), DEMO], expected);
}

#[test]
fn bad_configuration_files_name_the_json_path() {
    with_config(
        r#"{"cluster":{"enabled":true,"config":{"resources":{"memoryManagement":{"memoryWarningTreshold":70}}}}}"#,
        "cluster.config.resources.memoryManagement.memoryWarningTreshold: unknown key; did you mean `memoryWarningThreshold`?",
    );
    with_config(
        r#"{"resources":{"memoryManagement":{"memoryWarningThreshold":90,"memoryCriticalThreshold":80}}}"#,
        "resources.memoryManagement.memoryCriticalThreshold",
    );
    with_config(
        r#"{"autoScaling":{"minWorkers":5,"maxWorkers":2}}"#,
        "autoScaling.minWorkers",
    );
    with_config(
        r#"{"resources":{"maxMemoryPerWorker":"1GB","memoryManagement":{"maxTotalMemory":"1GB"}},"autoScaling":{"minWorkers":2}}"#,
        "maxTotalMemory",
    );
    with_config(r#"{"workers":"many"}"#, "workers");
    with_config(
        r#"{"resources":{"maxMemoryPerWorker":"12 parsecs"}}"#,
        "resources.maxMemoryPerWorker",
    );
    with_config(r#"{"resources":{"memoryManagement":"#, "is it truncated?");
}

#[test]
fn a_percentage_written_as_a_fraction_is_refused_with_a_suggestion() {
    with_config(
        r#"{"resources":{"memoryManagement":{"memoryWarningThreshold":0.8}}}"#,
        "resources.memoryManagement.memoryWarningThreshold: 0.8 looks like a fraction",
    );
    with_config(
        r#"{"resources":{"memoryManagement":{"swapUsageLimit":0.05}}}"#,
        "write 5 for 5%",
    );
    rejected(
        &["run", "--memory-warning-threshold", "0.8", DEMO],
        "--memory-warning-threshold",
    );
}

/// What `xypriss run --help` says of `flag`: its lines, up to the next flag.
fn help_of(help: &str, flag: &str) -> String {
    let mut lines = help
        .lines()
        .skip_while(|line| !line.trim_start().starts_with(&format!("{flag} ")));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {flag} in {help}"));
    let rest = lines.take_while(|line| !line.trim_start().starts_with('-') && !line.ends_with(':'));
    std::iter::once(first)
        .chain(rest)
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn help_says_when_each_reaction_acts() {
    let (code, help, stderr) = run(&["run", "--help"]);
    assert_eq!(code, 0, "{stderr}");
    for (flag, says, never) in [
        ("--garbage-collection-hint", "critical threshold", "warning"),
        (
            "--soft-limit-warnings",
            "crossing of its limit",
            "crosses its warning",
        ),
        (
            "--graceful-degradation",
            "host's memory stays critical",
            "replace a critical",
        ),
        (
            "--resource-throttling",
            "critical threshold",
            "at its limit",
        ),
        ("--swap-usage-limit", "not a limit", "the pool may use"),
        ("--worker-pooling", "hint for the app", "Reuse"),
        ("--memory-pooling", "hint for the app", "Use memory pooling"),
        (
            "--efficient-data-structures",
            "hint for the app",
            "Use efficient",
        ),
    ] {
        let text = help_of(&help, flag);
        assert!(text.contains(says), "{flag} does not say `{says}`: {text}");
        assert!(!text.contains(never), "{flag} still says `{never}`: {text}");
    }
    let swap = help_of(&help, "--swap-usage-limit");
    assert!(swap.contains("host's swap"), "{swap}");
}

#[test]
fn a_whole_server_config_runs_and_its_other_sections_are_named_once() {
    let file = TempFile::with(
        "server.json",
        br#"{
            "env": "production",
            "server": {"port": 3000, "host": "0.0.0.0"},
            "security": {"enabled": true},
            "logging": {"level": "info"},
            "cluster": {"enabled": true, "config": {"workers": 1}}
        }"#,
    );
    // A name of its own: another pool may run as `default` meanwhile.
    let name = format!("cli-server-{}", std::process::id());
    let out = Command::new("timeout")
        .args([
            "-s", "INT", "2", XYPRISS, "run", "--user", "root", "--name", &name,
        ])
        .args(["--config", file.path(), DEMO, "steps", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("worker_spawned"), "{stdout}{stderr}");
    assert_eq!(
        stderr
            .matches("ignoring `env`, `server`, `security`, `logging`")
            .count(),
        1,
        "{stderr}"
    );
}

/// Runs `xypriss run ARGS…` in a tmux pane and returns what the pane shows
/// (stderr is dropped) once it shows `until`, or after 30 s.
fn on_a_terminal(name: &str, args: &str, until: &str) -> String {
    let session = format!("xypriss-cli-{name}-{}", std::process::id());
    let command = format!(
        "{XYPRISS} run --user root --workers 1 --name {session} {args} {DEMO} steps 8 2>/dev/null"
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            // Tall enough that the first line is still on screen after
            // seconds of samples, each of which wraps onto two rows.
            "-x",
            "200",
            "-y",
            "400",
            "-s",
            &session,
            &command,
        ])
        .status()
        .expect("tmux runs");
    assert!(status.success());
    let capture = || {
        let shown = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .expect("tmux captures");
        String::from_utf8_lossy(&shown.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(30));
    let mut shown = capture();
    while !shown.contains(until) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        shown = capture();
    }
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "C-c"])
        .status();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    shown
}

#[test]
fn a_terminal_gets_human_lines_unless_json_is_asked() {
    let human = on_a_terminal("pretty", "", "memory_sample      worker 0 pid");
    assert!(human.contains("worker_spawned"), "{human}");
    assert!(human.contains("memory_sample      worker 0 pid"), "{human}");
    assert!(!human.contains("{\"event\""), "{human}");
    let json = on_a_terminal("json", "--json", "{\"event\":\"cluster_started\"");
    assert!(json.contains("{\"event\":\"cluster_started\""), "{json}");
}

/// What `xypriss run --workers 1 [FLAG] DEMO steps 8` writes to a pipe in 2 s.
fn on_a_pipe(flag: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-s",
        "INT",
        "2",
        XYPRISS,
        "run",
        "--user",
        "root",
        "--workers",
        "1",
    ]);
    cmd.args(flag).args([DEMO, "steps", "8"]);
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

#[test]
fn a_pipe_gets_ndjson_and_pretty_on_a_pipe_has_no_colours() {
    let pretty = on_a_pipe(Some("--pretty"));
    assert!(pretty.contains("worker_ready"), "{pretty}");
    assert!(
        !pretty.contains('\u{1b}') && !pretty.contains("{\""),
        "{pretty}"
    );
    let plain = on_a_pipe(None);
    assert!(!plain.is_empty());
    for line in plain.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

/// What bash offers for the last of `words`, with the script from
/// `xypriss __completions bash` loaded, as bash's `complete -F` would call it.
fn bash_offers(script: &str, words: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_xypriss xypriss "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{script}\n{DRIVER}"))
        .arg("bash")
        .args(words)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{words:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_flags_and_values() {
    let (code, script, stderr) = run(&["__completions", "bash"]);
    assert_eq!(code, 0, "{stderr}");
    let top = bash_offers(&script, &["xypriss", ""]);
    assert!(top.iter().any(|w| w == "run"), "{top:?}");
    assert!(!top.iter().any(|w| w.starts_with("__")), "{top:?}");
    assert_eq!(
        bash_offers(&script, &["xypriss", "run", "--max-memory-per"]),
        ["--max-memory-per-worker"]
    );
    assert_eq!(
        bash_offers(&script, &["xypriss", "run", "--ready", ""]),
        ["delay", "notify", "socket"]
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_flags() {
    for (shell, header) in [("zsh", "#compdef xypriss"), ("fish", "complete -c xypriss")] {
        let (code, script, stderr) = run(&["__completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(script.contains(header), "{shell}: {script}");
        assert!(script.contains("max-memory-per-worker"), "{shell}");
        assert!(!script.contains("__watchdog"), "{shell}");
    }
    rejected(&["__completions", "tcsh"], "tcsh");
}

#[test]
fn man_pages_cover_each_command_and_render() {
    let dir = std::env::temp_dir().join(format!("xypriss-man-{}", std::process::id()));
    let (code, _, stderr) = run(&["__manpages", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let pages: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in ["xypriss.1", "xypriss-run.1"] {
        assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("__")), "{pages:?}");
    let run_page = fs::read_to_string(dir.join("xypriss-run.1")).unwrap();
    assert!(run_page.starts_with(".ie"), "not roff: {run_page}");
    assert!(run_page.contains(r"max\-memory\-per\-worker"), "{run_page}");
    match Command::new("man")
        .arg("-l")
        .arg(dir.join("xypriss-run.1"))
        .env("LC_ALL", "C")
        .env("MANWIDTH", "100")
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("SYNOPSIS"), "{text}");
            assert!(text.contains("--max-memory-per-worker"), "{text}");
        }
        Err(err) => eprintln!("not rendering with man: {err}"),
    }
    fs::remove_dir_all(&dir).unwrap();
    rejected(
        &["__manpages", "/proc/xypriss-no-such-dir/man"],
        "/proc/xypriss-no-such-dir/man",
    );
}

/// Values `xypriss run` must refuse, for each kind of value its `--help`
/// shows. Sizes without a unit are bytes, and `MS|DURATION` without one is
/// milliseconds (as in XyPriss's configuration): both are valid forms.
fn bad_values(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "N|auto" => &[
            "",
            "-1",
            "0",
            "100000",
            "99999999999999999999",
            "lots",
            "2.5",
        ],
        "N" => &["", "-1", "99999999999999999999", "three", "2.5"],
        "SIZE" => &["", "-1MB", "99999999999999TB", "12parsecs", "MB", "1.5.5GB"],
        "DURATION" => &["", "-1s", "99999999999999999999s", "soon", "5"],
        "MS|DURATION" => &["", "-5", "99999999999999999999999", "soon", "0"],
        "PERCENT" => &["", "-5", "0", "1e308", "half", "NaN", "inf"],
        "FACTOR" => &["", "-1", "1e400", "double", "NaN"],
        "true|false" => &["", "maybe", "2"],
        "SIGNAL" => &["", "SIGNOPE", "99"],
        "NICE" => &["", "-21", "20", "high", "2.5", "keeps"],
        "PRIORITY" => &["", "0", "100", "-1", "fifo", "2.5", "offf"],
        "MODE" => &["", "sometimes"],
        "ADDR" => &[
            "",
            "nohost:notaport",
            "127.0.0.1:99999",
            "/nonexistent/dir/xypriss.sock",
        ],
        "[HOST:]PORT" => &["", "-1", "70000", "localhost:80"],
        "FILE" => &["", "/nonexistent/xypriss.json"],
        "USER" | "GROUP" => &["", "no-such-name-xypriss"],
        "DIR" => &["", "/nonexistent/dir"],
        "KEY=VALUE|KEY" => &["", "NOT_SET_IN_THE_ENVIRONMENT", "=x"],
        "NAME" => &[
            "",
            "a/b",
            "../etc",
            "x123456789x123456789x123456789x123456789x123456789x123456789x1234",
        ],
        _ => return None,
    })
}

#[test]
fn every_flag_of_run_refuses_bad_values_naming_itself() {
    let (code, help, _) = run(&["run", "--help"]);
    assert_eq!(code, 0);
    // `      --granularity <SIZE>`: the flags that take a value, and its kind.
    let flags: Vec<(&str, &str)> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let (flag, kind) = line.strip_prefix("--").map(|_| line)?.split_once(" <")?;
            Some((flag, kind.strip_suffix('>')?))
        })
        .collect();
    assert!(flags.len() > 50, "{flags:?}");
    for (flag, kind) in flags {
        let bad = bad_values(kind).unwrap_or_else(|| {
            panic!(
                "{flag} <{kind}>: a kind of value this test does not know yet: list its bad values"
            )
        });
        for value in bad {
            rejected(&["run", flag, value, DEMO], flag);
        }
    }
}

/// A file in a directory of this test run's own, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xypriss-cli-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir.join(name))
    }

    fn with(name: &str, contents: &[u8]) -> Self {
        let file = Self::new(name);
        fs::write(&file.0, contents).unwrap();
        file
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn broken_configuration_files_are_refused_clearly() {
    let deep = format!(
        "{{\"workers\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for (name, contents, says) in [
        (
            "truncated.json",
            &br#"{"resources": {"maxMemoryPerWorker": "1GB", "memoryMan"#[..],
            "is it truncated?",
        ),
        (
            "types.json",
            br#"{"resources": {"memoryManagement": {"memoryCheckInterval": true}}}"#,
            "resources.memoryManagement.memoryCheckInterval",
        ),
        (
            "unknown.json",
            br#"{"resources": {"maxMemoryPerWorkers": "1GB"}}"#,
            "did you mean `maxMemoryPerWorker`?",
        ),
        (
            "deep.json",
            deep.as_bytes(),
            "nested more than 128 levels deep",
        ),
        ("latin1.json", b"{\"workers\": \"caf\xe9\"}", "not UTF-8"),
        ("empty.json", b"", "the file is empty"),
    ] {
        let file = TempFile::with(name, contents);
        rejected(&["run", "--config", file.path(), DEMO], says);
        rejected(&["run", "--config", file.path(), DEMO], file.path());
    }
}

#[test]
fn a_100_mb_configuration_is_refused_without_being_read() {
    // As a file: refused from its size. A sparse file: no 100 MB written.
    let file = TempFile::new("huge.json");
    fs::File::create(&file.0)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    rejected(
        &["run", "--config", file.path(), DEMO],
        "100MiB is over the 1MiB limit",
    );
    // As a stream: read up to the limit, then refused.
    let mut cmd = Command::new(XYPRISS);
    cmd.args(["run", "--config", "/dev/stdin", DEMO]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xypriss runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        // xypriss stops reading at the limit: the pipe breaks, as it should.
        (0..100)
            .take_while(|_| stdin.write_all(&chunk).is_ok())
            .count()
    });
    let out = child.wait_with_output().expect("xypriss ends");
    let written = feeder.join().expect("the feeder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("more than the 1MiB limit"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(written < 100, "xypriss read all 100 MiB");
}
