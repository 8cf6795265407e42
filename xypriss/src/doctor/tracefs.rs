//! tracefs and the tracepoints the programs attach to.
//!
//! The classic tracepoints (`oom`, `sched`) are attached through tracefs, and
//! their fields read at the offsets its format files give: each is checked
//! with the same code `run` uses to read those offsets. The raw ones
//! (`kmem/rss_stat`, `exceptions/page_fault_user`) are attached by name and
//! need no tracefs, but tracefs lists them too, so that is where they are
//! looked for. An unmounted tracefs is no failure for root: `run` mounts it
//! itself, and so does doctor, to read the formats.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{Check, Degrades};
use crate::observe::trace_point::{PAGE_FAULT_USER, PLACES, TraceFsError, Tracepoint};

const NAME: &str = "tracefs";

/// A tracefs whose events could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Mounted there already.
    Mounted(PathBuf),
    /// Mounted there by doctor, as `run` would, and unmounted since.
    MountedHere(PathBuf),
}

impl Found {
    pub fn path(&self) -> &Path {
        match self {
            Self::Mounted(path) | Self::MountedHere(path) => path,
        }
    }
}

/// Why no tracefs could be read.
#[derive(Debug)]
pub enum Missing {
    /// At none of the usual places, and only root may mount it.
    NotMounted,
    /// The events at `path` cannot be read.
    Unreadable { path: PathBuf, error: io::Error },
    /// Root could not find it or mount it.
    Open(TraceFsError),
}

/// `given`: the path was given by the user, not looked for. Without a
/// tracefs, the tracepoints go unchecked, which the detail says.
pub fn tracefs(found: &Result<Found, Missing>, root: bool, given: bool) -> Check {
    match found {
        Ok(Found::Mounted(path)) => Check::ok(NAME, format!("mounted at {}", path.display())),
        Ok(Found::MountedHere(path)) => Check::ok(
            NAME,
            format!(
                "not mounted: mounted at {} to read the formats, then unmounted, as run does",
                path.display()
            ),
        ),
        Err(Missing::NotMounted) => Check::warn(
            NAME,
            format!(
                "mounted at none of {}, so the tracepoints were not checked; \
                 run mounts it itself when run as root",
                PLACES.join(", ")
            ),
            "run doctor as root to check the tracepoints",
        ),
        Err(Missing::Unreadable { path, error })
            if !root && error.kind() == io::ErrorKind::PermissionDenied =>
        {
            Check::warn(
                NAME,
                format!(
                    "{}: only root may read it ({error}), so the tracepoints were not checked",
                    path.display()
                ),
                "run doctor as root to check the tracepoints",
            )
        }
        Err(Missing::Unreadable { path, error }) => {
            let at = path.display();
            let fix = if given {
                format!(
                    "mount it there (mount -t tracefs nodev {at}), or point --tracefs at a mounted \
                     tracefs (findmnt -t tracefs)"
                )
            } else {
                format!("mount it: mount -t tracefs nodev {at}")
            };
            Check::fail(
                NAME,
                format!("cannot read {at}/events: {error}; the tracepoints were not checked"),
                fix,
                Degrades::Observer,
            )
        }
        Err(Missing::Open(err)) => Check::fail(
            NAME,
            format!("{err}; the tracepoints were not checked"),
            match err {
                TraceFsError::Lock { .. } => {
                    "make /run writable to root: run keeps its tracefs lock there".to_owned()
                }
                _ => format!(
                    "mount it: mount -t tracefs nodev {} (the kernel needs CONFIG_TRACING; \
                     in a container, mount it from the host)",
                    PLACES[0]
                ),
            },
            Degrades::Observer,
        ),
    }
}

/// `format`: the text of its format file.
pub fn tracepoint(tracepoint: &Tracepoint, format: &io::Result<String>) -> Check {
    let name = format!("tracepoint:{tracepoint}");
    let missing_fix = if *tracepoint == PAGE_FAULT_USER {
        "none on this architecture: it is x86-64's; elsewhere run polls /proc"
    } else {
        "upgrade the kernel to Linux 6.16 or later, which has every tracepoint and field the programs read"
    };
    let text = match format {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Check::fail(
                name,
                format!("this kernel has no {tracepoint}"),
                missing_fix,
                Degrades::Observer,
            );
        }
        Err(err) => {
            return Check::fail(
                name,
                format!("cannot read {}: {err}", tracepoint.format_path().display()),
                "run as root",
                Degrades::Observer,
            );
        }
    };
    if tracepoint.fields.is_empty() {
        return Check::ok(name, "present; attached as a raw tracepoint, by name");
    }
    match tracepoint.offsets(text) {
        Ok(offsets) => {
            let fields: Vec<String> = tracepoint
                .fields
                .iter()
                .zip(offsets)
                .map(|((field, _), offset)| format!("{field} at +{offset}"))
                .collect();
            Check::ok(name, format!("present; {}", fields.join(", ")))
        }
        Err(err) => Check::fail(name, err.to_string(), missing_fix, Degrades::Observer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        doctor::Status,
        observe::trace_point::{RSS_STAT, SCHED_PROCESS_EXIT},
    };

    /// sched_process_exit's format, as Linux 6.18 gives it.
    const EXIT: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\"
";

    #[test]
    fn a_classic_tracepoint_is_checked_field_by_field() {
        let check = tracepoint(&SCHED_PROCESS_EXIT, &Ok(EXIT.into()));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert_eq!(check.name, "tracepoint:sched/sched_process_exit");
        assert!(
            check.detail.contains("pid at +24, group_dead at +32"),
            "{check:?}"
        );
    }

    #[test]
    fn a_kernel_before_group_dead_fails() {
        let before_6_16: String = EXIT
            .lines()
            .filter(|line| !line.contains("group_dead"))
            .collect::<Vec<_>>()
            .join("\n");
        let check = tracepoint(&SCHED_PROCESS_EXIT, &Ok(before_6_16));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.detail.contains("group_dead"), "{check:?}");
        assert!(check.fix.unwrap().contains("6.16"));
    }

    #[test]
    fn a_missing_tracepoint_fails() {
        let check = tracepoint(&PAGE_FAULT_USER, &Err(io::ErrorKind::NotFound.into()));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("exceptions/page_fault_user"));
        assert!(check.fix.unwrap().contains("x86-64"));
        let raw = tracepoint(&RSS_STAT, &Ok("name: rss_stat\n".into()));
        assert_eq!(raw.status, Status::Ok);
    }

    #[test]
    fn an_unmounted_tracefs_is_fine_for_root_and_unknown_to_a_user() {
        let here = Ok(Found::MountedHere("/sys/kernel/tracing".into()));
        assert_eq!(tracefs(&here, true, false).status, Status::Ok);
        assert_eq!(
            tracefs(&Err(Missing::NotMounted), false, false).status,
            Status::Warn
        );
    }

    #[test]
    fn an_unreadable_given_path_fails_with_a_mount_command() {
        let missing = Err(Missing::Unreadable {
            path: "/nonexistent".into(),
            error: io::ErrorKind::NotFound.into(),
        });
        let check = tracefs(&missing, true, true);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("not checked"), "{check:?}");
        assert_eq!(check.degrades, Some(Degrades::Observer));
        let fix = check.fix.unwrap();
        assert!(fix.contains("mount -t tracefs nodev /nonexistent"), "{fix}");
        assert!(fix.contains("--tracefs"), "{fix}");
    }

    #[test]
    fn a_user_denied_tracefs_is_sent_to_root() {
        let denied = Err(Missing::Unreadable {
            path: "/sys/kernel/tracing".into(),
            error: io::ErrorKind::PermissionDenied.into(),
        });
        assert_eq!(tracefs(&denied, false, false).status, Status::Warn);
        assert_eq!(tracefs(&denied, true, false).status, Status::Fail);
    }
}
