//! Worker processes: how many, how they are started, restarted and stopped,
//! the lifecycle they go through, the cgroups they run in, and the sockets
//! and readiness protocol they share with xypriss.

pub mod backoff;
pub mod cgroup;
pub mod control;
pub mod exec;
pub mod identity;
pub mod lifecycle;
pub mod listen;
pub mod notify;
pub mod oom_score_adj;
pub mod pid_namespace;
pub mod priority;
pub mod reap;
pub mod socket_ready;
pub mod spawn;
pub mod watchdog;
pub mod workers;
