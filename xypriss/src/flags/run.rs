//! `xypriss run`'s flags, as clap parses them.
//!
//! The options of XyPriss's configuration are not spelt out here: each is one
//! definition in [`super::defs`], made into a flag by [`ConfigFlags`]. The
//! rest are the supervision's own, which no configuration file has.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{ArgMatches, Args, FromArgMatches};
use nix::sys::signal::Signal;

use super::defs::{self, Opt, Value};
use crate::{
    settings::ReadyMode,
    size::Size,
    supervise::{
        listen::ListenAddr,
        priority::{Nice, Realtime},
    },
};

/// `--config FILE` and one flag per option of [`defs::ALL`]; the values of
/// those given, in the order of the table (flags override the file).
#[derive(Clone, Debug, Default)]
pub struct ConfigFlags {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The options given as flags.
    pub given: Vec<(&'static Opt, Value)>,
}

impl ConfigFlags {
    /// The value `opt`'s flag was given, if it was.
    pub fn get(&self, opt: &Opt) -> Option<Value> {
        self.given
            .iter()
            .find(|(given, _)| given.path == opt.path)
            .map(|&(_, value)| value)
    }
}

impl Args for ConfigFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = clap::Arg::new("config")
            .long("config")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help_heading(defs::HEADING)
            .help(
                "Read the options below from this JSON file: XyPriss's createServer options or \
                 their cluster.config. Flags override it.",
            );
        cmd.arg(config).args(defs::ALL.iter().map(Opt::arg))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            given: defs::ALL
                .iter()
                .filter_map(|opt| opt.given(matches).map(|value| (opt, value)))
                .collect(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// `xypriss run`'s flags: the XyPriss configuration's options (with
/// `--config`), and the supervision's own.
#[derive(Args, Debug)]
pub struct RunFlags {
    #[command(flatten)]
    pub config: ConfigFlags,

    /// Report a worker's memory when it moved by at least this much (e.g. 1MiB, 512KB).
    #[arg(
        long,
        default_value = "1MiB",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub granularity: Size,

    /// Samples wake xypriss at most this often; threshold crossings always wake it at once.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub wakeup_interval: Duration,

    /// How often idle workers' fault counts and rates are refreshed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub sample_interval: Duration,

    /// How often /proc is read when eBPF is unavailable.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub poll_interval: Duration,

    /// Raise xypriss's own scheduling priority, so that it acts on memory when the CPUs are
    /// busy: a nice value from -20 to 19 (a higher priority it was started with is kept), or
    /// `keep`. Workers run at the nice value xypriss was started with.
    #[arg(
        long,
        default_value = "keep",
        value_name = "NICE",
        allow_hyphen_values = true
    )]
    pub nice: Nice,

    /// Run xypriss's threads SCHED_FIFO at this priority, from 1 to 98, or `off`: an alert is
    /// then not kept waiting behind busy CPUs. The loop and the stdout writer, which an alert
    /// passes through, run one above. Workers keep normal scheduling. The default, 1, is used
    /// where xypriss may (CAP_SYS_NICE); elsewhere it runs normally and says why.
    #[arg(long, value_name = "PRIORITY", allow_hyphen_values = true)]
    pub realtime: Option<Realtime>,

    /// How long workers get to exit after their stop signal, before SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub kill_timeout: Duration,

    /// Bind ADDR once and hand it to every worker as fd 3, 4, … (systemd socket activation):
    /// host:port, [v6]:port, or a Unix socket path. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// When a worker counts as ready: `delay` (after --ready-timeout, or at READY=1 if sooner),
    /// `notify` (only at READY=1, on NOTIFY_SOCKET or XYPRISS_CONTROL_FD), or `socket` (once it waits for connections
    /// on the --listen socket). With notify and socket, none within --ready-timeout is a failed start.
    #[arg(long, value_enum, default_value = "delay", value_name = "MODE")]
    pub ready: Ready,

    /// The readiness delay (`--ready delay`, default 1s) or deadline (`notify`, `socket`: default 60s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub ready_timeout: Option<Duration>,

    /// The signal that asks a worker to stop (e.g. SIGTERM, SIGINT, SIGQUIT, TERM).
    #[arg(long, default_value = "SIGTERM", value_name = "SIGNAL", value_parser = parse_signal)]
    pub stop_signal: Signal,

    /// The first restart delay of a crashed worker.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_delay: Duration,

    /// Each quick failure in a row multiplies the restart delay by this.
    #[arg(
        long,
        default_value_t = 1.5,
        value_name = "FACTOR",
        allow_hyphen_values = true
    )]
    pub restart_backoff: f64,

    /// The longest restart delay.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_max_delay: Duration,

    /// A worker up this long before it crashed was healthy: its failures count from zero again.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_reset_after: Duration,

    /// After this many quick failures in a row, a worker is marked errored and not restarted.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub max_quick_restarts: u32,

    /// Run workers as this user (name or uid). As root without it, workers
    /// run as the user behind sudo; with neither, xypriss refuses to start
    /// (`--user root` runs them as root on purpose, still without capabilities).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run workers with this group (name or gid); default: the --user's primary group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Run workers in this directory.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable for workers (repeatable).
    /// Workers inherit only PATH, the locale, TZ, TERM and TMPDIR from
    /// xypriss's environment; `--env KEY` passes KEY through as it is.
    #[arg(long = "env", value_name = "KEY=VALUE|KEY", value_parser = parse_env)]
    pub env: Vec<(OsString, OsString)>,

    /// The pool's name: several pools can run side by side under different names.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub name: String,

    /// Write events as human lines, coloured on a terminal (the default on a terminal).
    #[arg(long, conflicts_with = "json")]
    pub pretty: bool,

    /// Write events as NDJSON even on a terminal (the default on a pipe or file).
    #[arg(long)]
    pub json: bool,

    /// Serve status, metrics and the control API over HTTP on this address: PORT (on
    /// 127.0.0.1) or HOST:PORT. Off by default; any address off loopback is your choice.
    #[arg(long, value_name = "[HOST:]PORT", value_parser = parse_status_addr, allow_hyphen_values = true)]
    pub status_addr: Option<SocketAddr>,

    /// Make reads from the status server (its GETs, the dashboard's data and events) take the
    /// token too, not only the operations that change the pool.
    #[arg(long, requires = "status_addr")]
    pub status_read_token: bool,

    /// Fail instead of falling back to /proc polling when eBPF cannot be used.
    #[arg(long, conflicts_with = "no_ebpf")]
    pub require_ebpf: bool,

    /// Do not load eBPF: observe by polling /proc.
    #[arg(long)]
    pub no_ebpf: bool,

    /// Log from the BPF programs (forks, exits, OOM victims) to stderr; costs per event.
    #[arg(long)]
    pub bpf_log: bool,

    /// Count workers' page faults in the kernel (exceptions/page_fault_user): exact at every
    /// sample, but every page fault of every process on the host then runs a BPF program.
    /// By default they are read from /proc at each --sample-interval.
    #[arg(long, conflicts_with = "no_ebpf")]
    pub kernel_fault_counts: bool,

    /// The app to run, and its arguments (everything after the app is passed through untouched).
    #[arg(required = true, trailing_var_arg = true, value_name = "APP")]
    pub command: Vec<OsString>,
}

/// `--ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ready {
    /// Ready after `--ready-timeout`, or at `READY=1` if sooner.
    Delay,
    /// Ready at `READY=1` only.
    Notify,
    /// Ready once it waits for connections on a `--listen` socket (or at `READY=1`).
    Socket,
}

impl From<Ready> for ReadyMode {
    fn from(ready: Ready) -> Self {
        match ready {
            Ready::Delay => Self::Delay,
            Ready::Notify => Self::Notify,
            Ready::Socket => Self::Socket,
        }
    }
}

/// `--status-addr`: a port alone means loopback.
fn parse_status_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is neither a port nor HOST:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)")
    })
}

/// `--stop-signal`: a signal name, with or without `SIG`, any case.
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("`{text}` is not a signal name (e.g. SIGTERM, INT, SIGQUIT)"))
}

/// `--env KEY=VALUE`, or `--env KEY`: KEY as xypriss's environment has it.
fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') => {
            Ok((key.into(), value.into()))
        }
        None if !text.is_empty() && !text.contains('\0') => match std::env::var_os(text) {
            Some(value) => Ok((text.into(), value)),
            None => Err(format!(
                "`{text}` is not set in xypriss's environment: write KEY=VALUE"
            )),
        },
        _ => Err(format!("`{text}` is not KEY=VALUE or KEY")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        flags::{Command, Flags, RestartTarget, Switch, defs},
        settings::WorkerCount,
    };

    #[test]
    fn status_addr_is_a_port_on_loopback_or_an_address() {
        assert_eq!(
            parse_status_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_status_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        for bad in ["", "-1", "70000", "localhost:80", "0.0.0.0"] {
            assert!(
                parse_status_addr(bad).unwrap_err().contains("neither"),
                "{bad}"
            );
        }
    }

    #[test]
    fn trailing_app_arguments_pass_through_untouched() {
        let flags = Flags::try_parse_from([
            "xypriss",
            "run",
            "--workers",
            "2",
            "node",
            "app.js",
            "--workers",
            "9",
            "--",
            "-x",
        ])
        .unwrap();
        let Command::Run(run) = flags.command else {
            panic!("not run");
        };
        assert_eq!(
            run.config.get(&defs::WORKERS),
            Some(Value::Workers(WorkerCount::Fixed(2)))
        );
        assert_eq!(
            run.command,
            ["node", "app.js", "--workers", "9", "--", "-x"]
        );
    }

    #[test]
    fn signals_and_env_parse() {
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn pool_commands_parse_their_arguments() {
        let parse = |args: &[&str]| Flags::try_parse_from(args).map(|f| f.command);
        let Ok(Command::Restart { target, pool }) = parse(&["xypriss", "restart", "ALL"]) else {
            panic!("restart all");
        };
        assert_eq!(
            (target, pool.name.as_str()),
            (RestartTarget::All, "default")
        );
        let Ok(Command::Restart { target, .. }) = parse(&["xypriss", "restart", "3"]) else {
            panic!("restart 3");
        };
        assert_eq!(target, RestartTarget::Worker(3));
        assert!(parse(&["xypriss", "restart", "-1"]).is_err());
        assert!(parse(&["xypriss", "scale", "many"]).is_err());
        assert!(parse(&["xypriss", "low-memory", "maybe"]).is_err());
        let err = parse(&["xypriss", "status", "--name", "../etc"]).unwrap_err();
        assert!(err.to_string().contains("--name"), "{err}");
        let Ok(Command::LowMemory { state, pool }) =
            parse(&["xypriss", "low-memory", "on", "--name", "api"])
        else {
            panic!("low-memory on");
        };
        assert_eq!((state, pool.name.as_str()), (Switch::On, "api"));
    }

    #[test]
    fn double_dash_form_works_too() {
        let flags =
            Flags::try_parse_from(["xypriss", "run", "--", "./app", "--port", "1"]).unwrap();
        let Command::Run(run) = flags.command else {
            panic!("not run");
        };
        assert_eq!(run.command, ["./app", "--port", "1"]);
    }
}
