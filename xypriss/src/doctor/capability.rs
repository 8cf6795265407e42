//! Root and capabilities: `run` loads its BPF programs only as root, and the
//! kernel lets it only with CAP_BPF (programs, maps) and CAP_PERFMON
//! (tracing programs, tracepoint links). Root in a container can lack
//! either, so both are read from the effective set, not assumed.

use super::{Check, Degrades};

const NAME: &str = "privileges";

/// Bit numbers in the capability sets, from linux/capability.h.
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Who this process is, from /proc/self/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub euid: u32,
    /// `CapEff`, the effective capability set.
    pub effective: u64,
}

impl Credentials {
    /// The capabilities the BPF programs need that this process lacks.
    fn missing(&self) -> Vec<&'static str> {
        [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(bit, _)| self.effective & (1 << bit) == 0)
            .map(|(_, name)| name)
            .collect()
    }
}

pub fn privileges(credentials: &Result<Credentials, String>) -> Check {
    let credentials = match credentials {
        Ok(c) => c,
        Err(err) => {
            return Check::fail(
                NAME,
                err.as_str(),
                "mount /proc (mount -t proc proc /proc)",
                Degrades::Observer,
            );
        }
    };
    let missing = credentials.missing();
    match (credentials.euid, missing.is_empty()) {
        (0, true) => Check::ok(NAME, "root, with CAP_BPF and CAP_PERFMON"),
        (0, false) => Check::fail(
            NAME,
            format!(
                "root, but without {} (a container or a capability bounding set took it away)",
                missing.join(" and ")
            ),
            "grant CAP_BPF and CAP_PERFMON: docker run --cap-add BPF --cap-add PERFMON …, \
             or CapabilityBoundingSet=CAP_BPF CAP_PERFMON … in the systemd unit",
            Degrades::Observer,
        ),
        (euid, _) => Check::fail(
            NAME,
            format!("euid {euid}: run loads its BPF programs only as root"),
            "run it as root: sudo xypriss run …",
            Degrades::Observer,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    /// Every capability up to CAP_CHECKPOINT_RESTORE (40), as root has them.
    const ALL: u64 = 0x1ff_ffff_ffff;

    #[test]
    fn root_with_every_capability_is_ok() {
        let check = privileges(&Ok(Credentials {
            euid: 0,
            effective: ALL,
        }));
        assert_eq!(check.status, Status::Ok, "{check:?}");
    }

    #[test]
    fn root_without_cap_bpf_fails_and_names_it() {
        let check = privileges(&Ok(Credentials {
            euid: 0,
            effective: ALL & !(1 << CAP_BPF),
        }));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
        assert!(check.detail.contains("CAP_BPF"), "{check:?}");
        assert!(!check.detail.contains("CAP_PERFMON"), "{check:?}");
        assert!(check.fix.unwrap().contains("--cap-add BPF"));
    }

    #[test]
    fn a_user_fails_even_with_the_capabilities() {
        let check = privileges(&Ok(Credentials {
            euid: 1000,
            effective: 1 << CAP_BPF | 1 << CAP_PERFMON,
        }));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("euid 1000"), "{check:?}");
        assert!(check.fix.unwrap().contains("sudo"));
    }
}
