//! What runs inside the VM, and reading what it said.
//!
//! The guest runs one shell script. Each step's output is framed on the
//! console by sentinel lines carrying a nonce of this run, so that nothing a
//! step prints (nor the kernel's boot log) can be taken for one, and a
//! sentinel is found wherever it sits in a line (a kernel message may land
//! before it). The kernel's console is silenced while the steps run, and its
//! log is shown whole at the end. A step whose end sentinel never came (the
//! VM died or hung) has no exit code, which is a failure.
//!
//! Each step runs in a session of its own, watched: past its time limit, the
//! guest prints the kernel's stacks of the step's tasks and of every task in
//! uninterruptible sleep, and the process table, then kills the session. So
//! a hang leaves evidence, and the steps after it still run.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;

/// One thing run inside the VM.
#[derive(Debug, Clone)]
pub struct Step {
    /// A name of its own, for the table (`doctor`, a test binary's name, …).
    pub name: String,
    pub kind: Kind,
    /// The command, already absolute.
    pub argv: Vec<String>,
}

/// How a step's output is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `xypriss doctor --json`: its checks and the observer it says `run` would use.
    Doctor,
    /// A libtest binary: its `test result:` line.
    Tests,
    /// A command given on the command line: its exit code.
    Command,
}

/// `arg` quoted for `sh`.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `argv` quoted for `sh`.
fn quote_all(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| quote(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sentinel that frames steps: `<<<xtask-vmtest NONCE …>>>`.
fn sentinel(nonce: &str) -> String {
    format!("<<<xtask-vmtest {nonce}")
}

/// What the guest runs when step `$1` (session `$2`) outlives its limit (`$3` s).
const STUCK: &str = r#"stuck() {
  echo "xtask-vmtest: $1 still runs after $3 s: the stacks of its tasks and of every task in D state, the process table (kernel threads left out), then it is killed"
  for t in $(ps -eLo lwp=,sid=,stat= | awk -v s="$2" '$2 == s || $3 ~ /^D/ {print $1}'); do
    echo "== task $t ($(cat /proc/$t/comm 2>/dev/null))"
    cat /proc/$t/stack 2>/dev/null
  done
  ps -N --ppid 2 -p 2 -Lo pid,lwp,sid,stat,wchan:32,etimes,args
  kill -KILL -"$2"
}
"#;

/// The guest's script: `env` exported, then each step in `cwd`, framed, and
/// killed after `step_limit` seconds (see the module's header).
pub fn script(
    nonce: &str,
    cwd: &str,
    env: &[(String, String)],
    steps: &[Step],
    step_limit: u64,
) -> String {
    let mark = sentinel(nonce);
    let mut text = String::from(
        "#!/bin/sh\n\
         # Written by `cargo xtask vmtest`; runs inside the VM.\n\
         # Kernel messages would land inside the steps' lines: log them, show them at the end.\n\
         dmesg -n 1\n",
    );
    text.push_str(STUCK);
    for (key, value) in env {
        text.push_str(&format!("export {key}={}\n", quote(value)));
    }
    text.push_str(&format!("cd {} || exit 1\n", quote(cwd)));
    for step in steps {
        text.push_str(&format!(
            "echo '{mark} begin {name}>>>'\n\
             setsid {argv} &\n\
             step=$!\n\
             (sleep {step_limit} && stuck {name} $step {step_limit}) &\n\
             dog=$!\n\
             wait $step\n\
             rc=$?\n\
             pkill -P $dog\n\
             wait $dog\n\
             echo \"{mark} end {name} rc=$rc>>>\"\n",
            name = step.name,
            argv = quote_all(&step.argv)
        ));
    }
    text.push_str(&format!(
        "echo '{mark} begin dmesg>>>'\ndmesg\necho \"{mark} end dmesg rc=$?>>>\"\n"
    ));
    text
}

/// What one step printed, and how it ended, as read from the console.
#[derive(Debug, Default, Clone)]
pub struct Framed {
    pub lines: Vec<String>,
    /// Its exit code; `None` when its end never showed.
    pub rc: Option<i32>,
    /// From its begin sentinel to its end, as the host saw them arrive.
    pub took: Option<Duration>,
}

/// A sentinel found in a console line.
#[derive(Debug, PartialEq, Eq)]
pub enum Mark<'a> {
    Begin(&'a str),
    End(&'a str, i32),
}

/// The sentinel in `line`, if it has one of this run's.
pub fn mark<'a>(nonce: &str, line: &'a str) -> Option<Mark<'a>> {
    let mark = sentinel(nonce);
    let at = line.find(&mark)?;
    let rest = line[at + mark.len()..].trim_start();
    let rest = rest.split(">>>").next()?;
    let mut words = rest.split_whitespace();
    match (words.next()?, words.next()?, words.next()) {
        ("begin", name, None) => Some(Mark::Begin(name)),
        ("end", name, Some(rc)) => Some(Mark::End(name, rc.strip_prefix("rc=")?.parse().ok()?)),
        _ => None,
    }
}

/// Splits a console's lines into each step's, by their sentinels.
#[derive(Debug, Default)]
pub struct Console {
    pub steps: BTreeMap<String, Framed>,
    /// The step being printed, and when its begin sentinel arrived.
    current: Option<(String, Instant)>,
}

impl Console {
    /// Takes one console line; returns the sentinel it held, if any.
    pub fn push<'a>(&mut self, nonce: &str, line: &'a str) -> Option<Mark<'a>> {
        let line = line.trim_end_matches(['\r', '\n']);
        let found = mark(nonce, line);
        match &found {
            Some(Mark::Begin(name)) => {
                self.steps.insert((*name).to_owned(), Framed::default());
                self.current = Some(((*name).to_owned(), Instant::now()));
            }
            Some(Mark::End(name, rc)) => {
                let begun = self.current.take().map(|(_, at)| at);
                if let Some(step) = self.steps.get_mut(*name) {
                    step.rc = Some(*rc);
                    step.took = begun.map(|at| at.elapsed());
                }
            }
            None => {
                if let Some(step) = self
                    .current
                    .as_ref()
                    .and_then(|(c, _)| self.steps.get_mut(c))
                {
                    step.lines.push(line.to_owned());
                }
            }
        }
        found
    }
}

/// libtest's counts, from its `test result:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

/// The counts in the last `test result:` line among `lines`.
pub fn counts(lines: &[String]) -> Option<Counts> {
    let line = lines.iter().rev().find_map(|l| {
        let at = l.find("test result: ")?;
        Some(&l[at..])
    })?;
    let number = |what: &str| -> Option<u32> {
        line.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(what)?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
    };
    Some(Counts {
        passed: number(" passed")?,
        failed: number(" failed")?,
        ignored: number(" ignored").unwrap_or(0),
    })
}

/// What `xypriss doctor --json` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doctor {
    /// The checks that failed, by name.
    pub failed: Vec<String>,
    /// `wouldUse.observer`: `ebpf` or `procfs`.
    pub observer: String,
}

/// The doctor's report among `lines`: the one line that is its JSON document.
pub fn doctor(lines: &[String]) -> Option<Doctor> {
    let report: Value = lines.iter().find_map(|l| {
        let at = l.find("{\"checks\"")?;
        serde_json::from_str(&l[at..]).ok()
    })?;
    let failed = report["checks"]
        .as_array()?
        .iter()
        .filter(|c| c["status"] == "fail")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    Some(Doctor {
        failed,
        observer: report["wouldUse"]["observer"].as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "n0nce";

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn sentinels_are_found_after_a_kernel_message_and_never_forged() {
        assert_eq!(
            mark(NONCE, "<<<xtask-vmtest n0nce begin rss_stat>>>"),
            Some(Mark::Begin("rss_stat"))
        );
        assert_eq!(
            mark(
                NONCE,
                "[   33.1] virtio_net: x<<<xtask-vmtest n0nce end rss_stat rc=101>>>"
            ),
            Some(Mark::End("rss_stat", 101))
        );
        assert_eq!(mark(NONCE, "<<<xtask-vmtest other begin rss_stat>>>"), None);
        assert_eq!(mark(NONCE, "<<<xtask-vmtest n0nce end rss_stat>>>"), None);
    }

    #[test]
    fn the_console_is_split_by_step_and_a_step_cut_short_has_no_exit_code() {
        let mut console = Console::default();
        for line in [
            "[    1.0] Linux version 6.1.0",
            "<<<xtask-vmtest n0nce begin doctor>>>\r",
            "{\"checks\":[]}",
            "<<<xtask-vmtest n0nce end doctor rc=0>>>",
            "<<<xtask-vmtest n0nce begin rss_stat>>>",
            "running 2 tests",
        ] {
            console.push(NONCE, line);
        }
        assert_eq!(console.steps["doctor"].lines, ["{\"checks\":[]}"]);
        assert_eq!(console.steps["doctor"].rc, Some(0));
        assert_eq!(console.steps["rss_stat"].lines, ["running 2 tests"]);
        assert_eq!(console.steps["rss_stat"].rc, None);
    }

    #[test]
    fn libtest_counts_are_read_from_its_result_line() {
        let out = lines(
            "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\n\
             test result: FAILED. 1 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 2.01s\n",
        );
        assert_eq!(
            counts(&out),
            Some(Counts {
                passed: 1,
                failed: 1,
                ignored: 3
            })
        );
        assert_eq!(counts(&lines("thread 'main' panicked")), None);
    }

    #[test]
    fn the_doctors_failed_checks_and_observer_are_read() {
        let out = lines(
            "{\"checks\":[{\"name\":\"btf\",\"status\":\"fail\",\"detail\":\"x\"},\
             {\"name\":\"kernel\",\"status\":\"ok\",\"detail\":\"6.1\"}],\
             \"degraded\":true,\"wouldUse\":{\"observer\":\"procfs\",\"cgroups\":true}}",
        );
        assert_eq!(
            doctor(&out),
            Some(Doctor {
                failed: vec!["btf".into()],
                observer: "procfs".into()
            })
        );
        assert_eq!(doctor(&lines("not json")), None);
    }

    #[test]
    fn the_script_quotes_what_it_runs() {
        let steps = [Step {
            name: "command".into(),
            kind: Kind::Command,
            argv: vec!["sh".into(), "-c".into(), "echo 'hi'".into()],
        }];
        let text = script(NONCE, "/w", &[("CI".into(), "true".into())], &steps, 60);
        assert!(text.contains("export CI='true'\n"), "{text}");
        assert!(
            text.contains(r"setsid 'sh' '-c' 'echo '\''hi'\''' &"),
            "{text}"
        );
        assert!(
            text.contains("(sleep 60 && stuck command $step 60) &"),
            "{text}"
        );
        assert!(text.contains("echo \"<<<xtask-vmtest n0nce end command rc=$rc>>>\""));
    }

    #[test]
    fn a_step_past_its_limit_is_shown_and_killed_and_the_next_one_runs() {
        let steps = [
            Step {
                name: "stuck".into(),
                kind: Kind::Command,
                argv: vec!["sh".into(), "-c".into(), "sleep 300 & sleep 300".into()],
            },
            Step {
                name: "next".into(),
                kind: Kind::Command,
                argv: vec!["true".into()],
            },
        ];
        // The guest's `dmesg -n 1` would set this machine's console level.
        let text = script(NONCE, "/", &[], &steps, 1).replace("dmesg -n 1\n", "");
        let dir = std::env::temp_dir().join(format!("xtask-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("guest.sh");
        std::fs::write(&path, text).expect("the script written");
        let out = std::process::Command::new("sh")
            .arg(&path)
            .output()
            .expect("sh runs");
        std::fs::remove_dir_all(&dir).expect("the directory removed");
        let mut console = Console::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            console.push(NONCE, line);
        }
        let stuck = &console.steps["stuck"];
        assert_eq!(stuck.rc, Some(137), "{:?}", stuck.lines);
        assert!(
            stuck.lines[0].starts_with("xtask-vmtest: stuck still runs after 1 s"),
            "{:?}",
            stuck.lines
        );
        // Both sleeps, the one in the background too, are shown.
        let sleeps = stuck
            .lines
            .iter()
            .filter(|l| l.starts_with("== task ") && l.ends_with("(sleep)"))
            .count();
        assert_eq!(sleeps, 2, "{:?}", stuck.lines);
        assert_eq!(console.steps["next"].rc, Some(0));
        // Nothing is left behind: not the stuck session, nor a watchdog's sleep.
        let left = std::process::Command::new("pgrep")
            .args(["-f", "^sleep (300|1)$"])
            .output()
            .expect("pgrep runs");
        assert!(
            left.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}
