//! Whether xypriss runs in the host's pid namespace. Two things number
//! processes by the host's pids and go wrong elsewhere: the BPF programs
//! (which see the host's pids while workers register by their own), and the
//! pool cgroups' names (`<pool>.<xypriss pid>`), which every xypriss on the
//! machine reads to find pools whose owner is gone.

use std::os::unix::fs::MetadataExt as _;

/// The kernel's initial pid namespace's inode (`PROC_PID_INIT_INO`): the
/// same on every Linux.
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The inode of this process's pid namespace when it is not the host's
/// (the kernel's initial one).
pub fn own_pid_namespace() -> Option<u64> {
    let inode = std::fs::metadata("/proc/self/ns/pid").ok()?.ino();
    (inode != INIT_PID_NAMESPACE).then_some(inode)
}
