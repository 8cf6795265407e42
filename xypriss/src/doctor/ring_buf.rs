//! BPF ring buffers: the programs send every record through one. Rather
//! than infer support from the version (5.8), the probe creates a ring
//! buffer map and closes it, which also finds what blocks the `bpf()` system
//! call itself, such as a container's seccomp profile.

use std::io;

use super::{Check, Degrades};

const NAME: &str = "ring_buffer";

/// `probe`: whether the kernel created a ring buffer map (`Ok(false)`: it
/// does not know the map type).
pub fn ring_buf(probe: &io::Result<bool>, root: bool) -> Check {
    match probe {
        Ok(true) => Check::ok(NAME, "created a BPF ring buffer map, and closed it"),
        Ok(false) => Check::fail(
            NAME,
            "the kernel does not know BPF ring buffer maps",
            "upgrade the kernel: ring buffers came in Linux 5.8; the observer is measured on 6.1 and later",
            Degrades::Observer,
        ),
        Err(err) if !root && err.kind() == io::ErrorKind::PermissionDenied => Check::warn(
            NAME,
            format!("cannot create a BPF map without root: {err}"),
            "run doctor as root to check",
        ),
        Err(err) => Check::fail(
            NAME,
            format!("creating a BPF ring buffer map failed: {err}"),
            "allow the bpf() system call: a container's seccomp profile may block it \
             (docker run --security-opt seccomp=unconfined …, or a profile allowing bpf)",
            Degrades::Observer,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn denied() -> io::Result<bool> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    #[test]
    fn a_created_map_is_ok() {
        assert_eq!(ring_buf(&Ok(true), true).status, Status::Ok);
    }

    #[test]
    fn an_unknown_map_type_means_proc_polling() {
        let check = ring_buf(&Ok(false), true);
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Observer));
    }

    #[test]
    fn refused_to_root_it_fails_refused_to_a_user_it_was_not_checked() {
        let root = ring_buf(&denied(), true);
        assert_eq!(root.status, Status::Fail);
        assert!(root.fix.unwrap().contains("seccomp"));
        let user = ring_buf(&denied(), false);
        assert_eq!(user.status, Status::Warn);
        assert!(user.fix.unwrap().contains("as root"));
    }
}
