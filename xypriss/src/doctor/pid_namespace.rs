//! The pid namespace. The BPF programs know tasks by the host's pids; a
//! worker registers itself by its own pid as its namespace numbers it. In a
//! pid namespace of its own (a container without `hostPID`), those differ,
//! and `run` would watch nobody: it polls /proc instead, and says why.

use super::{Check, Degrades};

const NAME: &str = "pid_namespace";

/// `own`: the inode of xypriss's pid namespace when it is not the host's.
pub fn pid_namespace(own: Option<u64>) -> Check {
    match own {
        None => Check::ok(NAME, "the host's: BPF and xypriss number tasks alike"),
        Some(inode) => Check::fail(
            NAME,
            format!(
                "pid:[{inode}], not the host's: BPF sees other pids than xypriss's workers have"
            ),
            "run xypriss in the host's pid namespace (Kubernetes: hostPID: true; docker: --pid=host)",
            Degrades::Observer,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_namespace_is_fine_and_another_degrades_to_proc() {
        let host = pid_namespace(None);
        assert!(host.fix.is_none(), "{host:?}");
        let own = pid_namespace(Some(4_026_532_178));
        assert!(own.detail.contains("pid:[4026532178]"), "{own:?}");
        assert!(own.fix.as_deref().unwrap().contains("hostPID"), "{own:?}");
        assert_eq!(own.degrades, Some(Degrades::Observer));
    }
}
