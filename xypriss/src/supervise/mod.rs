//! Worker processes: how many, how they are started, the cgroups they run in,
//! and how they are stopped.

pub mod cgroup;
pub mod spawn;
pub mod workers;
