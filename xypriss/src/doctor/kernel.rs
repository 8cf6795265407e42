//! The kernel's version: what `run`'s BPF programs use appeared over several
//! releases, the last in 5.12 (BPF atomics), and the observer was measured on
//! 6.1, 6.12 and 6.18. The version is only a first answer, so an older one
//! is a warning: the BTF, ring buffer and tracepoint checks look at the
//! things themselves, and they decide, which is what counts on a kernel with
//! backports.

use aya::util::KernelVersion;

use super::Check;

const NAME: &str = "kernel";

/// The oldest kernel the eBPF observer was measured on.
const MINIMUM: KernelVersion = KernelVersion::new(6, 1, 0);

pub fn version(version: &Result<KernelVersion, String>) -> Check {
    match version {
        Ok(v) if *v >= MINIMUM => {
            Check::ok(NAME, format!("Linux {v} on {}", std::env::consts::ARCH))
        }
        Ok(v) => Check::warn(
            NAME,
            format!(
                "Linux {v}: the eBPF observer was measured on {MINIMUM} and later; older kernels \
                 from 5.12 on have all it uses on paper (the checks below say)"
            ),
            format!("upgrade the kernel to Linux {MINIMUM} or later"),
        ),
        Err(err) => Check::warn(
            NAME,
            format!("cannot tell the kernel's version: {err}"),
            "check `uname -r` by hand: the eBPF observer was measured on Linux 6.1 and later",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn from_6_1_on_is_ok() {
        assert_eq!(version(&Ok(KernelVersion::new(6, 1, 0))).status, Status::Ok);
        assert_eq!(version(&Ok(KernelVersion::new(7, 0, 3))).status, Status::Ok);
    }

    #[test]
    fn older_kernels_are_a_warning_the_other_checks_settle() {
        let check = version(&Ok(KernelVersion::new(5, 15, 12)));
        assert_eq!(check.status, Status::Warn);
        assert_eq!(check.degrades, None);
        assert!(check.detail.contains("5.15.12"), "{check:?}");
        assert!(check.fix.unwrap().contains("6.1"));
    }

    #[test]
    fn an_unreadable_version_is_a_warning() {
        let check = version(&Err("failed to parse kernel version".into()));
        assert_eq!(check.status, Status::Warn);
        assert!(check.fix.is_some());
    }
}
