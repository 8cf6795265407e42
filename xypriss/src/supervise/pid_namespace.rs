//! Whether xypriss runs in the host's pid namespace. Two things number
//! processes by the host's pids and go wrong elsewhere: the BPF programs
//! (which see the host's pids while workers register by their own), and the
//! pool cgroups' names (`<pool>.<xypriss pid>.flock`), by which the watchdog
//! of an xypriss in a pid namespace of its own finds its pools.

pub use crate::observe::host::own_pid_namespace;
