//! Worker processes: how many, how they are started, and how they are stopped.

pub mod listen;
pub mod notify;
pub mod spawn;
pub mod workers;
