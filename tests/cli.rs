//! Malformed command lines get a clear error naming the argument, and a
//! non-zero exit; never a panic, and never a started worker.

mod support;

use std::{fs, os::unix::fs::PermissionsExt as _, process::Command};

use support::{DEMO, XYPRISS};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(XYPRISS)
        .args(args)
        .output()
        .expect("xypriss runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn rejected(args: &[&str], names: &str) {
    let (code, stdout, stderr) = run(args);
    assert_ne!(code, 0, "{args:?} was accepted");
    assert!(
        stderr.contains(names),
        "{args:?}: stderr does not name `{names}`: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        !stdout.contains("worker_spawned"),
        "{args:?} started workers"
    );
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
fn with_config(json: &str, expected: &str) {
    let dir = std::env::temp_dir().join(format!("xypriss-config-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.json", expected.len()));
    fs::write(&file, json).unwrap();
    rejected(&["run", "--config", file.to_str().unwrap(), DEMO], expected);
    let _ = fs::remove_file(&file);
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

/// Runs `xypriss run ARGS…` in a tmux pane for 2 s and returns
/// what the pane shows (stderr is dropped).
fn on_a_terminal(name: &str, args: &str) -> String {
    let session = format!("xypriss-cli-{name}-{}", std::process::id());
    let command =
        format!("{XYPRISS} run --workers 1 --name {session} {args} {DEMO} steps 8 2>/dev/null");
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-s",
            &session,
            &command,
        ])
        .status()
        .expect("tmux runs");
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let shown = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", &session])
        .output()
        .expect("tmux captures");
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "C-c"])
        .status();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    String::from_utf8_lossy(&shown.stdout).into_owned()
}

#[test]
fn a_terminal_gets_human_lines_unless_json_is_asked() {
    let human = on_a_terminal("pretty", "");
    assert!(human.contains("worker_spawned"), "{human}");
    assert!(human.contains("memory_sample      worker 0 pid"), "{human}");
    assert!(!human.contains("{\"event\""), "{human}");
    let json = on_a_terminal("json", "--json");
    assert!(json.contains("{\"event\":\"cluster_started\""), "{json}");
}

/// What `xypriss run --workers 1 [FLAG] DEMO steps 8` writes to a pipe in 2 s.
fn on_a_pipe(flag: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "INT", "2", XYPRISS, "run", "--workers", "1"]);
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
