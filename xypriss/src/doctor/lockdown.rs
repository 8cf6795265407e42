//! Kernel lockdown. In `confidentiality` mode the kernel refuses BPF
//! programs' reads of kernel memory (`bpf_probe_read_kernel`, with which the
//! programs read tasks and mm counters); `integrity` mode does not.
//!
//! The mode is in securityfs, which may not be mounted, and the file is
//! absent when the kernel has no lockdown support. Absent, the mode can still
//! be ruled out by asking the verifier: it refuses a program that calls
//! `bpf_probe_read_kernel` under confidentiality mode only
//! ([`verifier::probe_read_kernel_allowed`](crate::observe::verifier::probe_read_kernel_allowed)).

use std::io;

use super::{Check, Degrades};

const NAME: &str = "lockdown";
/// The mode in force, and the others.
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const SECURITYFS: &str = "/sys/kernel/security";
const CONFIDENTIALITY_FIX: &str = "boot with lockdown=integrity (or none) on the kernel command \
     line; if Secure Boot imposes the mode, turn Secure Boot off in the firmware";

/// `text`: [`LOCKDOWN`]'s text, such as `none [integrity] confidentiality`
/// (the mode in force in brackets). `probe_read`: whether the verifier let a
/// program call `bpf_probe_read_kernel` (`Ok(false)`: it refused the helper).
pub fn lockdown(text: &io::Result<String>, probe_read: &io::Result<bool>) -> Check {
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            let absent = if err.kind() == io::ErrorKind::NotFound {
                "absent (securityfs is not mounted, or the kernel has no lockdown)".to_owned()
            } else {
                format!("unreadable ({err})")
            };
            return match probe_read {
                Ok(true) => Check::ok(
                    NAME,
                    format!(
                        "{LOCKDOWN} {absent}; not confidentiality mode: the verifier allows \
                         bpf_probe_read_kernel"
                    ),
                ),
                Ok(false) => Check::fail(
                    NAME,
                    format!(
                        "{LOCKDOWN} {absent}, and the verifier refuses bpf_probe_read_kernel, \
                         as under confidentiality mode"
                    ),
                    CONFIDENTIALITY_FIX,
                    Degrades::Observer,
                ),
                Err(err) => Check::warn(
                    NAME,
                    format!(
                        "{LOCKDOWN} {absent}, and no BPF program could be loaded to ask ({err}); \
                         the mode cannot be told"
                    ),
                    format!(
                        "run doctor as root, or mount securityfs (mount -t securityfs securityfs \
                         {SECURITYFS}) and run doctor again"
                    ),
                ),
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
            "confidentiality: the kernel refuses BPF reads of kernel memory",
            CONFIDENTIALITY_FIX,
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
        lockdown(&Ok(text.into()), &Ok(true))
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
    fn absent_it_is_told_by_the_verifier_or_said_unknown() {
        let absent = || Err(io::ErrorKind::NotFound.into());
        assert_eq!(lockdown(&absent(), &Ok(true)).status, Status::Ok);
        let refused = lockdown(&absent(), &Ok(false));
        assert_eq!(refused.status, Status::Fail);
        assert_eq!(refused.degrades, Some(Degrades::Observer));
        let unknown = lockdown(&absent(), &Err(io::ErrorKind::PermissionDenied.into()));
        assert_eq!(unknown.status, Status::Warn);
        assert!(unknown.fix.unwrap().contains("securityfs"));
    }

    #[test]
    fn an_unknown_mode_is_a_warning() {
        assert_eq!(mode("[paranoid]\n").status, Status::Warn);
        assert_eq!(mode("").status, Status::Warn);
    }
}
