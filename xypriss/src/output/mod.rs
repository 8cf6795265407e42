//! What xypriss tells the world. Today: the NDJSON event stream on stdout.

pub mod event;
pub mod ndjson;
