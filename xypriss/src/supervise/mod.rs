//! Worker processes: how many, how they are started, restarted and stopped,
//! and the lifecycle they go through.

pub mod backoff;
pub mod lifecycle;
pub mod reap;
pub mod spawn;
pub mod workers;
