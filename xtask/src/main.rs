//! `cargo xtask`: the project's own commands, so that a fresh machine needs
//! nothing but rustup and two README lines.
//!
//! Every command that builds first runs [`bootstrap`], which installs, once and
//! idempotently, what no `Cargo.toml` can: the dated nightly that builds the
//! BPF programs, its `rust-src`, and `bpf-linker` linked against that
//! nightly's own libLLVM.

mod bench;
mod bootstrap;
mod faults;
mod soak;
mod vmtest;

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "xypriss's build, test, packaging and bootstrap tasks"
)]
struct Flags {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned nightly, its rust-src and bpf-linker (idempotent).
    Bootstrap,
    /// Build the BPF object into target/bpfel-unknown-none/release/xypriss.
    BuildEbpf,
    /// Build xypriss (release) and run a pool of the bundled demo worker.
    Demo {
        /// Extra arguments for `xypriss run`, before the app (e.g. --workers 2).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the benchmarks (as root) and print their figures; see BENCHMARKS.md.
    Bench {
        /// Which (default: all): reaction, latency, overhead, http, http-leak,
        /// throughput, leak, footprint, scale, dashboards.
        names: Vec<String>,
        /// How long the leak benchmark watches each steady scenario.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Run them beside `stress-ng --cpu N` (N CPU hogs); the results
        /// name the condition and go to NAME-stress-cpuN.json.
        #[arg(long, value_name = "N")]
        stress_cpu: Option<u32>,
    },
    /// Build xypriss (release) and write its shell completions and man pages into target/dist/.
    Dist,
    /// A long run under load (as root): 64 mixed workers, a stream consumer and a
    /// status-server client; events, the controller's RSS, restarts and alert latency.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// The fault mode instead: two pools under a flooding worker, a
        /// flooding local user, a slow HTTP client and a clock step.
        #[arg(long)]
        faults: bool,
        /// Run beside `stress-ng --cpu N` (N CPU hogs); the result names the
        /// condition and goes to soak-stress-cpuN.json.
        #[arg(long, value_name = "N", conflicts_with = "faults")]
        stress_cpu: Option<u32>,
        /// Watch the machine's own stalls beside it: a do-nothing
        /// `SCHED_FIFO` 3 thread per CPU, against which each slow alert is
        /// read. They preempt xypriss a thousand times a second per CPU, so
        /// the result names the condition and goes to soak[-stress-cpuN]-stall-watch.json.
        #[arg(long, conflicts_with = "faults")]
        watch_stalls: bool,
    },
    /// Check formatting and lints, run every test (unit and real-kernel
    /// integration) on this machine's kernel, then the kernel-dependent ones
    /// on 6.1 and 6.12 in VMs (vmtest).
    Test {
        /// Skip the VMs: the native run only, for a quicker round while
        /// developing (CI never passes it).
        #[arg(long)]
        no_vmtest: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Boot Debian's 6.1 and 6.12 kernels in VMs (as root) and run `xypriss
    /// doctor` and the kernel-dependent integration tests inside, or CMD.
    Vmtest(vmtest::Flags),
}

fn main() -> ExitCode {
    match run(Flags::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> Result<()> {
    let root = workspace_root();
    match flags.command {
        Task::Bootstrap => bootstrap::ensure(&root).map(drop),
        Task::BuildEbpf => build_ebpf(&root),
        Task::Demo { args } => demo(&root, args),
        Task::Test { no_vmtest, args } => test(&root, !no_vmtest, args),
        Task::Vmtest(flags) => {
            bootstrap::ensure(&root)?;
            vmtest::run(&root, &flags)
        }
        Task::Dist => dist(&root),
        Task::Soak {
            minutes,
            faults,
            stress_cpu,
            watch_stalls,
        } => {
            bootstrap::ensure(&root)?;
            cargo(
                &root,
                ["build", "--release", "--package", "xypriss", "--bins"],
            )?;
            if faults {
                faults::run(&root, minutes)
            } else {
                soak::run(&root, minutes, stress_cpu, watch_stalls)
            }
        }
        Task::Bench {
            names,
            minutes,
            stress_cpu,
        } => {
            bootstrap::ensure(&root)?;
            cargo(
                &root,
                ["build", "--release", "--package", "xypriss", "--bins"],
            )?;
            bench::run(&root, &names, minutes, stress_cpu)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs this xtask: the host toolchain pinned in rust-toolchain.toml.
fn cargo_command(root: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn cargo<I, S>(root: &Path, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = cargo_command(root);
    cmd.args(args);
    status(&mut cmd)
}

fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo <subcommand>` for the BPF crate, with the pinned nightly, as aya-build runs it.
fn bpf_cargo(root: &Path, nightly: &str, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("xypriss-ebpf"))
        .args(["run", nightly, "cargo", subcommand])
        .args([
            "--package",
            "xypriss-ebpf",
            "--bins",
            "--features",
            "programs",
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

fn build_ebpf(root: &Path) -> Result<()> {
    let tools = bootstrap::ensure(root)?;
    status(&mut bpf_cargo(root, &tools.nightly, "build"))?;
    println!(
        "{}",
        root.join("target/bpfel-unknown-none/release/xypriss")
            .display()
    );
    Ok(())
}

fn demo(root: &Path, args: Vec<OsString>) -> Result<()> {
    bootstrap::ensure(root)?;
    cargo(
        root,
        ["build", "--release", "--package", "xypriss", "--bins"],
    )?;
    let bin = root.join("target/release");
    let mut cmd = Command::new(bin.join("xypriss"));
    cmd.arg("run");
    // As root without sudo, xypriss will not run workers as root unasked:
    // the demo's run as nobody.
    let as_root = nix::unistd::geteuid().is_root() && std::env::var_os("SUDO_UID").is_none();
    if as_root && !args.iter().any(|a| a == "--user") {
        cmd.args(["--user", "nobody"]);
    }
    if args.is_empty() {
        cmd.args(["--workers", "auto"]);
    }
    cmd.args(args).arg(bin.join("xypriss-demo"));
    status(&mut cmd)
}

/// Each shell's completion script, and the file name its loader looks for.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "xypriss.bash"),
    ("zsh", "_xypriss"),
    ("fish", "xypriss.fish"),
];

/// The files a package ships beside the binary, made by the binary itself
/// from its clap definitions (xtask cannot link xypriss: see `xypriss::dist`).
fn dist(root: &Path) -> Result<()> {
    bootstrap::ensure(root)?;
    cargo(
        root,
        [
            "build",
            "--release",
            "--package",
            "xypriss",
            "--bin",
            "xypriss",
        ],
    )?;
    let xypriss = root.join("target/release/xypriss");
    let out = root.join("target/dist");
    let completions = out.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = bootstrap::output(Command::new(&xypriss).args(["__completions", shell]))?;
        let path = completions.join(file);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    let man = out.join("man");
    status(Command::new(&xypriss).arg("__manpages").arg(&man))?;
    println!("{}", man.display());
    Ok(())
}

fn test(root: &Path, with_vms: bool, args: Vec<OsString>) -> Result<()> {
    let tools = bootstrap::ensure(root)?;
    // What the real-kernel tests drive besides xypriss: tmux (the terminal
    // views), stress-ng (a memory hog outside the pool), Chromium (the
    // dashboard, headless), Node.js (the worker library's suite, and Node
    // workers) and strace (which holds racing starts at one point). They run
    // as root, which apt-get needs too.
    if nix::unistd::geteuid().is_root() {
        bench::peers::debian("tmux", "tmux")?;
        bench::peers::debian("stress-ng", "stress-ng")?;
        bench::peers::debian("chromium", "chromium")?;
        bench::peers::debian("node", "nodejs")?;
        bench::peers::debian("strace", "strace")?;
    }
    cargo(root, ["fmt", "--all", "--", "--check"])
        .context("formatting differs from rustfmt's: run `cargo fmt --all`")?;
    cargo(
        root,
        [
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The BPF programs only build for the BPF target, with the pinned nightly.
    let mut clippy_bpf = bpf_cargo(root, &tools.nightly, "clippy");
    clippy_bpf.args(["--", "-D", "warnings"]);
    status(&mut clippy_bpf)?;
    let mut cmd = cargo_command(root);
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    let native = status(&mut cmd);
    if !with_vms {
        return native;
    }
    if !nix::unistd::geteuid().is_root() && env::var_os("CI").is_none() {
        eprintln!(
            "xtask: skipping the VMs (vmtest needs root; CI runs them as root and never skips)"
        );
        return native;
    }
    // The VMs run even when a native test failed: both verdicts are worth having.
    let vms = vmtest::run(
        root,
        &vmtest::Flags {
            kernels: vmtest::Series::ALL.to_vec(),
            verbose: false,
            timeout: vmtest::TIMEOUT_S,
            step_timeout: vmtest::STEP_TIMEOUT_S,
            command: Vec::new(),
        },
    );
    match (native, vms) {
        (Ok(()), vms) => vms,
        (Err(native), Ok(())) => Err(native),
        (Err(native), Err(vms)) => Err(native.context(format!("and {vms:#}"))),
    }
}
