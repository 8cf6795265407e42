//! Kernel lockdown. In `confidentiality` mode the kernel refuses BPF
//! programs' reads of kernel memory (the `rss_stat` program reads
//! `mm->rss_stat`) and refuses tracefs; `integrity` mode forbids neither.
//!
//! The mode is in securityfs, which may not be mounted, and the file is
//! absent when the kernel has no lockdown support. Absent, the mode can still
//! be ruled out: confidentiality mode refuses to open tracefs format files,
//! so if they were read, it is not in force.

use std::io;

use super::{Check, Degrades};

const NAME: &str = "lockdown";
/// The mode in force, and the others.
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const SECURITYFS: &str = "/sys/kernel/security";

/// `text`: [`LOCKDOWN`]'s text, such as `none [integrity] confidentiality`
/// (the mode in force in brackets). `tracefs_read`: a tracepoint format file
/// was read.
pub fn lockdown(text: &io::Result<String>, tracefs_read: bool) -> Check {
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            let absent = if err.kind() == io::ErrorKind::NotFound {
                "absent (securityfs is not mounted, or the kernel has no lockdown)".to_owned()
            } else {
                format!("unreadable ({err})")
            };
            return if tracefs_read {
                Check::ok(
                    NAME,
                    format!(
                        "{LOCKDOWN} {absent}; not confidentiality mode, since tracefs was readable"
                    ),
                )
            } else {
                Check::warn(
                    NAME,
                    format!("{LOCKDOWN} {absent}; the mode cannot be told"),
                    format!(
                        "mount securityfs (mount -t securityfs securityfs {SECURITYFS}) and run doctor again"
                    ),
                )
            };
        }
    };
    let mode = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'));
    match mode {
        Some(mode @ ("none" | "integrity")) => Check::ok(NAME, mode),
        Some("confidentiality") => Check::fail(
            NAME,
            "confidentiality: the kernel refuses BPF reads of kernel memory, and tracefs",
            "boot with lockdown=integrity (or none) on the kernel command line; \
             if Secure Boot imposes the mode, turn Secure Boot off in the firmware",
            Degrades::Observer,
        ),
        _ => Check::warn(
            NAME,
            format!("unknown lockdown mode: {:?}", text.trim()),
            "see the kernel's lockdown documentation: BPF needs a mode below confidentiality",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn mode(text: &str) -> Check {
        lockdown(&Ok(text.into()), true)
    }

    #[test]
    fn none_and_integrity_are_ok() {
        assert_eq!(
            mode("[none] integrity confidentiality\n").status,
            Status::Ok
        );
        let integrity = mode("none [integrity] confidentiality\n");
        assert_eq!(integrity.status, Status::Ok);
        assert_eq!(integrity.detail, "integrity");
    }

    #[test]
    fn confidentiality_means_proc_polling() {
        let check = mode("none integrity [confidentiality]\n");
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.fix.unwrap().contains("lockdown=integrity"));
    }

    #[test]
    fn absent_it_is_ruled_out_by_a_readable_tracefs_or_said_unknown() {
        let absent = || Err(io::ErrorKind::NotFound.into());
        assert_eq!(lockdown(&absent(), true).status, Status::Ok);
        let unknown = lockdown(&absent(), false);
        assert_eq!(unknown.status, Status::Warn);
        assert!(unknown.fix.unwrap().contains("securityfs"));
    }

    #[test]
    fn an_unknown_mode_is_a_warning() {
        assert_eq!(mode("[paranoid]\n").status, Status::Warn);
        assert_eq!(mode("").status, Status::Warn);
    }
}
