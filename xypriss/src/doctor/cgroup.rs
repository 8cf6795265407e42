//! The memory cgroup hierarchy `run` would put its workers in: which one
//! ([`Hierarchy::find`](crate::supervise::cgroup::Hierarchy::find) chooses
//! it, as for `run`), and whether `run` may create its cgroups there.

use std::{io, path::PathBuf};

use super::{Check, Degrades};
use crate::supervise::cgroup::{CgroupError, Version};

const NAME: &str = "cgroup";

/// A usable memory hierarchy.
#[derive(Debug)]
pub struct Found {
    pub version: Version,
    /// Where it is mounted.
    pub path: PathBuf,
    /// Where `run` would create its pool's cgroup, and whether it may.
    pub dir: PathBuf,
    pub access: io::Result<()>,
}

pub fn cgroup(found: &Result<Found, CgroupError>) -> Check {
    let found = match found {
        Ok(found) => found,
        Err(CgroupError::NoMemoryController { reason }) => {
            return Check::fail(
                NAME,
                format!("no usable memory controller: {reason}"),
                "mount a cgroup v1 memory hierarchy (mkdir -p /sys/fs/cgroup/memory && \
                 mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory), or boot with \
                 cgroup_no_v1=memory to give memory to cgroup2",
                Degrades::Cgroups,
            );
        }
        Err(err) => {
            return Check::fail(
                NAME,
                err.to_string(),
                "mount /proc (mount -t proc proc /proc)",
                Degrades::Cgroups,
            );
        }
    };
    let version = match found.version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let at = found.path.display();
    match &found.access {
        Ok(()) => Check::ok(
            NAME,
            format!("{version} memory hierarchy at {at}: each worker gets a memory cgroup"),
        ),
        Err(err) => Check::fail(
            NAME,
            format!(
                "{version} memory hierarchy at {at}, but {} is not writable: {err}",
                found.dir.display()
            ),
            format!(
                "run it as root, or delegate {} to its user (chown -R USER {0})",
                found.dir.display()
            ),
            Degrades::Cgroups,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn v1(access: io::Result<()>) -> Result<Found, CgroupError> {
        Ok(Found {
            version: Version::V1,
            path: "/sys/fs/cgroup/memory".into(),
            dir: "/sys/fs/cgroup/memory/xypriss".into(),
            access,
        })
    }

    #[test]
    fn a_writable_hierarchy_is_ok() {
        let check = cgroup(&v1(Ok(())));
        assert_eq!(check.status, Status::Ok);
        assert!(check.detail.contains("v1"), "{check:?}");
    }

    #[test]
    fn no_memory_controller_means_workers_without_cgroups() {
        let check = cgroup(&Err(CgroupError::NoMemoryController {
            reason: "cgroup2 at /sys/fs/cgroup does not offer memory".into(),
        }));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Cgroups));
        assert!(check.detail.contains("does not offer memory"), "{check:?}");
        assert!(check.fix.unwrap().contains("mount -t cgroup -o memory"));
    }

    #[test]
    fn an_unwritable_hierarchy_fails() {
        let check = cgroup(&v1(Err(io::ErrorKind::PermissionDenied.into())));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.degrades, Some(Degrades::Cgroups));
        assert!(check.fix.unwrap().contains("/sys/fs/cgroup/memory/xypriss"));
    }
}
