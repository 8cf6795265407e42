//! Worker processes: how many, how they are started, and how they are stopped.

pub mod spawn;
pub mod workers;
