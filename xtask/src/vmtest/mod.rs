//! `cargo xtask vmtest`: xypriss on the kernels people run, each booted in a
//! VM with this machine's root filesystem.
//!
//! The native test run covers the machine's own kernel; this covers Debian's
//! 6.1 (bookworm) and 6.12 (bookworm-backports), fetched and cached by
//! [`debian`]. Each boots under virtme-ng with `--disable-kvm`: on this
//! machine kind KVM guests hang right after the boot stub, and TCG boots
//! fine, if some ten times slower. Inside, by default, run `xypriss doctor
//! --json` and the integration tests that depend on the kernel (see [`PLAN`]),
//! the test executables cargo built on the host, run directly, with `CI` as
//! outside. A table of kernels against results closes the run, and any
//! failure (a failed check, a failed test, a step the VM never finished)
//! makes it exit non-zero.
//!
//! The guest also has what this host lacks: cgroup v2 with the memory
//! controller. So the tests of `tests/cgroup_v2.rs`, ignored on the host,
//! run there, with `--ignored`.

mod debian;
mod guest;

use std::{
    env,
    ffi::OsString,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use debian::Kernel;
pub use debian::Series;
use guest::{Console, Framed, Kind, Mark, Step};

/// What `cargo xtask vmtest` was asked.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// Which kernels to boot (default: all).
    #[arg(long = "kernel", value_enum)]
    pub kernels: Vec<Series>,
    /// Show the guest's whole console as it comes (it is kept in
    /// target/vmtest/<kernel>/console.log either way).
    #[arg(long)]
    pub verbose: bool,
    /// How long one kernel's run may take, in seconds, before its VM is killed.
    #[arg(long, default_value_t = TIMEOUT_S)]
    pub timeout: u64,
    /// How long one step (the doctor, a test binary, the command) may take,
    /// in seconds, before the guest prints its tasks' kernel stacks and
    /// kills it.
    #[arg(long, default_value_t = STEP_TIMEOUT_S)]
    pub step_timeout: u64,
    /// A command to run inside each VM instead of the doctor and the tests.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// How long one kernel's run may take by default, in seconds.
pub const TIMEOUT_S: u64 = 1200;
/// How long one step may take by default, in seconds: half a run's limit,
/// and over seven times the slowest step of CI's VM runs (rss_stat, 33 to
/// 80 s).
pub const STEP_TIMEOUT_S: u64 = 600;
/// How much longer the tests wait in the VMs (see tests/support): TCG runs
/// about ten times slower than the host, more when the host is busy.
const TIME_SCALE: &str = "10";
/// Each VM's size: the host's 2 CPUs, and room for the largest test
/// (reliability's four workers of 320 MiB: with 2 GiB, one of them was gone
/// before the test could read it, in the 6.12 guest).
const CPUS: &str = "2";
const MEMORY: &str = "4G";

/// One test binary's run in the VM, and what it shows.
struct Planned {
    /// The `[[test]]` target.
    binary: &'static str,
    /// libtest's arguments after `--test-threads=1`: which tests, `--ignored`.
    args: &'static [&'static str],
    /// What a user would call it, for the table.
    shows: &'static str,
}

/// The integration tests whose outcome depends on the kernel. The rest
/// depends on the kernel only through these, and under TCG they would take
/// longer than CI has: they run natively only.
const PLAN: [Planned; 7] = [
    Planned {
        binary: "rss_stat",
        args: &[],
        shows: "RSS against /proc; unwatched silence",
    },
    Planned {
        binary: "memory_alert",
        args: &["--exact", "each_threshold_alerts_once_then_recovers"],
        shows: "threshold crossings",
    },
    Planned {
        binary: "sched_process_fork",
        args: &[],
        shows: "children attributed; exits",
    },
    Planned {
        binary: "mark_victim",
        args: &[],
        shows: "OOM kill attributed",
    },
    Planned {
        binary: "reliability",
        args: &[
            "--exact",
            "sigstop_then_sigcont_drains_the_backlog_and_counts_what_was_lost",
        ],
        shows: "losses counted",
    },
    Planned {
        binary: "cgroup_v2",
        args: &["--ignored"],
        shows: "cgroup v2: memory.max, memory.high, cpu.max, cgroup.kill",
    },
    Planned {
        binary: "cgroup_v2_bound",
        args: &["--ignored"],
        shows: "cgroup v2: a runaway worker held under memory.max",
    },
];

/// One kernel's run.
struct Outcome {
    kernel: Kernel,
    /// From starting `vng` to its exit.
    wall: Duration,
    /// From starting `vng` to the first step.
    boot: Option<Duration>,
    /// Why the VM itself did not end well, if it did not.
    trouble: Option<String>,
    console: Console,
    log: PathBuf,
}

pub fn run(root: &Path, flags: &Flags) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "vmtest needs root: it installs its tools with apt-get and links kernel modules \
             into /lib/modules (run it as root, or run `cargo xtask test` without --vmtest)"
        );
    }
    debian::ensure_tools()?;
    let venv = debian::virtme_ng()?;
    let mut series = if flags.kernels.is_empty() {
        Series::ALL.to_vec()
    } else {
        flags.kernels.clone()
    };
    series.sort_unstable();
    series.dedup();
    let kernels = series
        .into_iter()
        .map(debian::kernel)
        .collect::<Result<Vec<_>>>()?;
    let (steps, shows) = if flags.command.is_empty() {
        planned_steps(root)?
    } else {
        let step = Step {
            name: "command".into(),
            kind: Kind::Command,
            argv: flags.command.clone(),
        };
        (vec![step], vec![String::new()])
    };
    let mut outcomes = Vec::new();
    for kernel in kernels {
        let outcome = boot(root, &venv, kernel.clone(), &steps, flags)?;
        // The guest kernel itself died (under TCG, an int3 left by live
        // text patching was once hit on another vCPU, in the scheduler):
        // that is the emulator, not xypriss, so that kernel's run is made
        // once more, and said. A failed test never is.
        let outcome = if outcome.trouble.is_some() && guest_panicked(&outcome.log)? {
            let kept = outcome.log.with_file_name("console-panicked.log");
            fs::rename(&outcome.log, &kept)
                .with_context(|| format!("cannot keep {}", outcome.log.display()))?;
            eprintln!(
                "xtask: vmtest {}: the guest kernel panicked (see {}); running it once more",
                kernel.series.label(),
                kept.display()
            );
            boot(root, &venv, kernel, &steps, flags)?
        } else {
            outcome
        };
        outcomes.push(outcome);
    }
    let failures = report(&steps, &shows, &outcomes)?;
    if failures > 0 {
        bail!("vmtest: {failures} failure(s); consoles in target/vmtest/<kernel>/console.log");
    }
    Ok(())
}

/// Whether the guest's console shows its kernel panicking.
fn guest_panicked(log: &Path) -> Result<bool> {
    let console = fs::read(log).with_context(|| format!("cannot read {}", log.display()))?;
    Ok(String::from_utf8_lossy(&console).contains("Kernel panic - not syncing"))
}

/// Builds the planned test binaries (and xypriss) and makes each a step.
/// Returns the steps and, beside each, what it shows.
fn planned_steps(root: &Path) -> Result<(Vec<Step>, Vec<String>)> {
    let mut cmd = crate::cargo_command(root);
    cmd.args([
        "test",
        "--package",
        "xypriss",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for planned in &PLAN {
        cmd.args(["--test", planned.binary]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests for the VMs failed ({})", out.status);
    }
    let mut tests = std::collections::BTreeMap::new();
    let mut xypriss = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        let is = |kind: &str| {
            kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|v| v == kind))
        };
        if is("test") {
            tests.insert(name.to_owned(), exe.to_owned());
        } else if is("bin") && name == "xypriss" {
            xypriss = Some(exe.to_owned());
        }
    }
    let xypriss = xypriss.context("cargo built no xypriss binary")?;
    let mut steps = vec![Step {
        name: "doctor".into(),
        kind: Kind::Doctor,
        argv: vec![xypriss, "doctor".into(), "--json".into()],
    }];
    let mut shows = vec!["xypriss doctor --json".to_owned()];
    for planned in &PLAN {
        let exe = tests
            .get(planned.binary)
            .with_context(|| format!("cargo built no test executable {}", planned.binary))?;
        let mut argv = vec![exe.clone(), "--test-threads=1".to_owned()];
        argv.extend(planned.args.iter().map(|&a| a.to_owned()));
        steps.push(Step {
            name: planned.binary.into(),
            kind: Kind::Tests,
            argv,
        });
        shows.push(planned.shows.to_owned());
    }
    Ok((steps, shows))
}

/// Boots `kernel`, runs the steps inside, and reads what they said.
fn boot(
    root: &Path,
    venv: &Path,
    kernel: Kernel,
    steps: &[Step],
    flags: &Flags,
) -> Result<Outcome> {
    let label = kernel.series.label();
    let dir = root.join("target/vmtest").join(label);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let env: Vec<(String, String)> = [
        ("CI", env::var("CI").ok()),
        ("XYPRISS_TEST_TIME_SCALE", Some(TIME_SCALE.into())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
    .collect();
    let script = dir.join("guest.sh");
    let cwd = root.to_str().context("the workspace's path is not UTF-8")?;
    fs::write(
        &script,
        guest::script(&nonce, cwd, &env, steps, flags.step_timeout),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let log_path = dir.join("console.log");
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let path = env::join_paths(std::iter::once(venv.to_owned()).chain(env::split_paths(
        &env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")),
    )))?;
    let mut cmd = Command::new(venv.join("vng"));
    cmd.arg("--run")
        .arg(&kernel.vmlinuz)
        // virtiofsd is not here: 9p, without waiting for it first.
        .arg("--force-9p")
        // KVM guests hang on this machine kind; TCG works.
        .arg("--disable-kvm")
        .args(["--cpus", CPUS, "--memory", MEMORY, "--user", "root"])
        // Without it the guest's console, the steps' output with it, is not shown.
        .arg("--verbose")
        .arg("--exec")
        .arg(format!("/bin/sh {}", script.display()))
        .env("PATH", path)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: vmtest {label}: booting {} {} ({} steps, console in {})",
        kernel.package,
        kernel.version,
        steps.len(),
        log_path.display()
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let lines = read_lines(&mut child);
    let deadline = started + Duration::from_secs(flags.timeout);
    let mut console = Console::default();
    let mut boot = None;
    let mut trouble = None;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                let found = console.push(&nonce, &line);
                if flags.verbose {
                    println!("{line}");
                }
                match found {
                    Some(Mark::Begin(name)) => {
                        boot.get_or_insert_with(|| started.elapsed());
                        eprintln!(
                            "xtask: vmtest {label}: {name} (at {:.0} s)",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    Some(Mark::End(..)) => {}
                    None if !flags.verbose && progress(&line) => eprintln!("  {}", line.trim()),
                    None => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                trouble = Some(format!("killed after {} s", flags.timeout));
                kill_tree(child.id());
                break;
            }
        }
    }
    let status = child.wait().context("waiting for vng")?;
    let wall = started.elapsed();
    if trouble.is_none() && !status.success() {
        trouble = Some(format!("vng exited with {status}"));
    }
    eprintln!(
        "xtask: vmtest {label}: done in {:.0} s{}",
        wall.as_secs_f64(),
        trouble
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default()
    );
    Ok(Outcome {
        kernel,
        wall,
        boot,
        trouble,
        console,
        log: log_path,
    })
}

/// The lines worth showing while a VM runs without `--verbose`: each test's outcome.
fn progress(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("test ")
        && (line.ends_with(" ok") || line.ends_with("FAILED") || line.ends_with("ignored"))
        || line.starts_with("test result:")
}

/// The child's stdout and stderr, line by line, on one channel that
/// disconnects when both are closed.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let outs: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    for out in outs {
        let tx = tx.clone();
        thread::spawn(move || {
            // The console is not always UTF-8 (boot noise): read bytes.
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    rx
}

/// SIGKILLs `pid` and every process below it (vng, virtme-run, qemu).
fn kill_tree(pid: u32) {
    let children = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
    for child in children {
        kill_tree(child);
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// A step's cell in the table, and whether it passed.
fn judge(step: &Step, framed: Option<&Framed>) -> (bool, String) {
    let Some(framed) = framed else {
        return (false, "not run: the VM ended before it".into());
    };
    let took = framed
        .took
        .map(|t| format!(" ({:.0} s)", t.as_secs_f64()))
        .unwrap_or_default();
    let Some(rc) = framed.rc else {
        return (false, "cut short: the VM ended during it".into());
    };
    match step.kind {
        Kind::Doctor => match guest::doctor(&framed.lines) {
            Some(d) if d.failed.is_empty() && rc == 0 => (true, format!("all ok{took}")),
            Some(d) => (false, format!("failed: {}{took}", d.failed.join(", "))),
            None => (false, format!("no report (exit code {rc})")),
        },
        Kind::Tests => match guest::counts(&framed.lines) {
            Some(c) if c.passed + c.failed == 0 => (false, "ran no test".into()),
            Some(c) => {
                let cell = format!("{}/{} passed{took}", c.passed, c.passed + c.failed);
                (c.failed == 0 && rc == 0, cell)
            }
            None => (false, format!("no result: exit code {rc}{took}")),
        },
        Kind::Command => (rc == 0, format!("exit code {rc}{took}")),
    }
}

/// Prints the table of kernels against results, then the output of each
/// step that failed. Returns how many failures there were.
fn report(steps: &[Step], shows: &[String], outcomes: &[Outcome]) -> Result<usize> {
    let mut failures = 0;
    let mut table = String::from("\t");
    for o in outcomes {
        write!(table, "\t{}", o.kernel.series.label())?;
    }
    table.push_str("\nkernel\t");
    for o in outcomes {
        write!(table, "\t{}", o.kernel.release)?;
    }
    table.push_str("\nwall time (boot)\t");
    for o in outcomes {
        let boot = o
            .boot
            .map(|b| format!("{:.0} s", b.as_secs_f64()))
            .unwrap_or_else(|| "none".into());
        write!(table, "\t{:.0} s ({boot})", o.wall.as_secs_f64())?;
    }
    table.push_str("\nVM\t");
    for o in outcomes {
        if o.trouble.is_some() {
            failures += 1;
        }
        write!(table, "\t{}", o.trouble.as_deref().unwrap_or("ok"))?;
    }
    let mut failed = Vec::new();
    for (step, shows) in steps.iter().zip(shows) {
        write!(table, "\n{}\t{shows}", step.name)?;
        for o in outcomes {
            let framed = o.console.steps.get(&step.name);
            let (ok, cell) = judge(step, framed);
            if !ok {
                failures += 1;
                failed.push((o, step, framed));
            }
            write!(table, "\t{}{cell}", if ok { "" } else { "FAIL " })?;
        }
        if step.kind == Kind::Doctor {
            table.push_str("\nobserver\twhat `run` would use");
            for o in outcomes {
                let said = o
                    .console
                    .steps
                    .get(&step.name)
                    .and_then(|f| guest::doctor(&f.lines))
                    .map(|d| d.observer)
                    .unwrap_or_else(|| "?".into());
                write!(table, "\t{said}")?;
            }
        }
    }
    table.push('\n');
    for o in outcomes {
        for step in steps.iter().filter(|s| s.kind == Kind::Command) {
            println!(
                "\n==== {} {}: its output ====",
                o.kernel.series.label(),
                step.name
            );
            for line in o
                .console
                .steps
                .get(&step.name)
                .map(|f| f.lines.as_slice())
                .unwrap_or_default()
            {
                println!("{line}");
            }
        }
    }
    for (o, step, framed) in failed
        .into_iter()
        .filter(|(_, s, _)| s.kind != Kind::Command)
    {
        println!(
            "\n==== {} {}: what failed (all of it in {}) ====",
            o.kernel.series.label(),
            step.name,
            o.log.display()
        );
        let lines = framed.map(|f| f.lines.as_slice()).unwrap_or_default();
        // libtest's account of the failures, else the end of the output.
        let from = lines
            .iter()
            .position(|l| l.trim() == "failures:")
            .unwrap_or(lines.len().saturating_sub(40));
        for line in lines[from..].iter().take(80) {
            println!("{line}");
        }
    }
    let mut out = tabwriter::TabWriter::new(std::io::stdout()).padding(2);
    println!();
    out.write_all(table.as_bytes())?;
    out.flush()?;
    Ok(failures)
}
