//! `xypriss doctor`: checks, one at a time, what `run` needs from this
//! machine, and says how to fix each thing that is missing.
//!
//! `run` does not refuse to start for want of eBPF or cgroups: it degrades,
//! to /proc polling or to workers without memory cgroups, and says so in one
//! event. That is right for a supervisor, and no help in finding out why, or
//! in checking a machine before deploying to it. Doctor looks at each thing
//! the eBPF observer and the cgroups depend on, says which failure causes
//! which degradation, and exits non-zero when `run` would degrade.
//!
//! Each check is a pure function of what was read (a file's text, a
//! capability mask, the answer of a probe), in a module named after what it
//! checks, so every failure can be tested with made-up inputs. [`examine`]
//! alone reads the machine, and changes nothing there: like `run`, it needs
//! no tracefs and mounts nothing.

mod btf;
mod capability;
mod cgroup;
mod kernel;
mod lockdown;
mod pid_namespace;
mod pressure;
mod ring_buf;
mod table;
mod trace_point;

use std::{
    fs,
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use aya::{maps::MapType, util::KernelVersion};
use clap::Args;
use nix::unistd::{AccessFlags, access};
use procfs::process::Process;
use serde::Serialize;

use crate::{
    observe::{
        Source,
        btf::VMLINUX,
        ebpf::page_size,
        trace_point::{ALL, Plan},
        verifier,
    },
    supervise::cgroup::Hierarchy,
};

/// The exit code when `run` would degrade.
const DEGRADED: u8 = 1;
/// PSI's memory figures.
const PRESSURE: &str = "/proc/pressure/memory";

/// `xypriss doctor`'s flags. The paths point checks somewhere else than
/// where `run` looks: at a test's fixture, or at an odd system's mounts.
#[derive(Args, Debug)]
pub struct DoctorFlags {
    /// Print one JSON document (see docs/doctor.md) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Check the kernel BTF at PATH.
    #[arg(long, value_name = "PATH", default_value = VMLINUX)]
    pub btf: PathBuf,

    /// Check the cgroup hierarchy mounted at PATH, instead of the one `run` would choose.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Worth knowing or fixing, but `run` works as well without it.
    Warn,
    /// `run` would degrade: see [`Degrades`].
    Fail,
}

/// What `run` does without what a failed check looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Degrades {
    /// It polls /proc instead of using eBPF.
    Observer,
    /// Its workers run without memory cgroups.
    Cgroups,
}

impl Degrades {
    fn consequence(self) -> &'static str {
        match self {
            Self::Observer => "polls /proc instead of using eBPF",
            Self::Cgroups => "starts workers without memory cgroups",
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it; for every status but ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What `run` does without it; for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrades: Option<Degrades>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
            degrades: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
            degrades: None,
        }
    }

    fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
        degrades: Degrades,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            degrades: Some(degrades),
        }
    }
}

/// What `run` would use, given the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WouldUse {
    pub observer: Source,
    pub cgroups: bool,
}

/// Every check, and what they mean for `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub checks: Vec<Check>,
    /// Whether `run` would degrade: poll /proc, or run workers without cgroups.
    pub degraded: bool,
    pub would_use: WouldUse,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        let degrades = |what| checks.iter().any(|c| c.degrades == Some(what));
        let would_use = WouldUse {
            observer: if degrades(Degrades::Observer) {
                Source::Procfs
            } else {
                Source::Ebpf
            },
            cgroups: !degrades(Degrades::Cgroups),
        };
        Self {
            degraded: checks.iter().any(|c| c.status == Status::Fail),
            checks,
            would_use,
        }
    }
}

/// `xypriss doctor`: examines the machine, prints the report, and says by the
/// exit code whether `run` would degrade.
pub fn run(flags: &DoctorFlags) -> io::Result<ExitCode> {
    let report = examine(flags);
    let text = if flags.json {
        let mut json = serde_json::to_string(&report).map_err(io::Error::other)?;
        json.push('\n');
        json
    } else {
        table::render(&report)
    };
    io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if report.degraded {
        ExitCode::from(DEGRADED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads what the checks need from the machine, and checks it.
pub fn examine(flags: &DoctorFlags) -> Report {
    let root = nix::unistd::geteuid().is_root();
    let credentials = Process::myself()
        .and_then(|me| me.status())
        .map(|status| capability::Credentials {
            euid: status.euid,
            effective: status.capeff,
        })
        .map_err(|err| format!("cannot read /proc/self/status: {err}"));
    let version = KernelVersion::current().map_err(|err| err.to_string());
    let ring_buf = aya::sys::is_map_supported(MapType::RingBuf).map_err(|err| err.io_error);
    let btf = fs::read(&flags.btf);
    let probe_read = verifier::probe_read_kernel_allowed();
    let cgroup = match &flags.cgroup_root {
        Some(path) => Hierarchy::find_at(path),
        None => Hierarchy::find(),
    }
    .map(|hierarchy| {
        // Where run makes its pool's cgroup: in the pools' directory, or,
        // until one exists, in the hierarchy's root.
        let pools = hierarchy.pools();
        let dir = if pools.is_dir() {
            pools
        } else {
            hierarchy.path().to_owned()
        };
        cgroup::Found {
            version: hierarchy.version(),
            path: hierarchy.path().to_owned(),
            access: access(&dir, AccessFlags::W_OK).map_err(io::Error::from),
            dir,
        }
    });

    let mut checks = vec![
        kernel::version(&version),
        capability::privileges(&credentials),
        pid_namespace::pid_namespace(crate::supervise::pid_namespace::own_pid_namespace()),
        lockdown::lockdown(&fs::read_to_string(lockdown::LOCKDOWN), &probe_read),
        ring_buf::ring_buf(&ring_buf, root),
    ];
    let (btf_check, btf) = btf::btf(&flags.btf, &btf);
    checks.push(btf_check);
    match btf {
        Some(btf) => checks.extend(
            Plan::new(&btf, page_size())
                .choices
                .iter()
                .map(|(tracepoint, choice)| trace_point::tracepoint(tracepoint, choice)),
        ),
        None => checks.extend(ALL.iter().map(trace_point::unchecked)),
    }
    checks.push(cgroup::cgroup(&cgroup));
    checks.push(pressure::pressure(&fs::read_to_string(PRESSURE)));
    Report::new(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_what_run_would_do_without_it() {
        let ok = Report::new(vec![
            Check::ok("kernel", "Linux 6.18"),
            Check::warn("psi", "absent", "boot with psi=1"),
        ]);
        assert!(!ok.degraded);
        assert_eq!(
            ok.would_use,
            WouldUse {
                observer: Source::Ebpf,
                cgroups: true
            }
        );

        let no_ebpf = Report::new(vec![
            Check::ok("kernel", "Linux 6.18"),
            Check::fail("btf", "absent", "rebuild", Degrades::Observer),
        ]);
        assert!(no_ebpf.degraded);
        assert_eq!(no_ebpf.would_use.observer, Source::Procfs);
        assert!(no_ebpf.would_use.cgroups);

        let no_cgroups = Report::new(vec![Check::fail(
            "cgroup",
            "no memory controller",
            "mount one",
            Degrades::Cgroups,
        )]);
        assert!(no_cgroups.degraded);
        assert_eq!(no_cgroups.would_use.observer, Source::Ebpf);
        assert!(!no_cgroups.would_use.cgroups);
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let report = Report::new(vec![
            Check::ok("kernel", "Linux 6.18"),
            Check::fail("btf", "cannot read", "run as root", Degrades::Observer),
        ]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "checks": [
                    {"name": "kernel", "status": "ok", "detail": "Linux 6.18"},
                    {"name": "btf", "status": "fail", "detail": "cannot read", "fix": "run as root", "degrades": "observer"},
                ],
                "degraded": true,
                "wouldUse": {"observer": "procfs", "cgroups": true},
            })
        );
    }
}
