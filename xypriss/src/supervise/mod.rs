//! Worker processes: how many, how they are started, restarted and stopped,
//! the lifecycle they go through, and the cgroups they run in.

pub mod backoff;
pub mod cgroup;
pub mod lifecycle;
pub mod reap;
pub mod spawn;
pub mod watchdog;
pub mod workers;
