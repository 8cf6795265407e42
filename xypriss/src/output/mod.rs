//! What xypriss tells the world: the event stream on stdout, NDJSON for
//! machines or human lines for a terminal, and the running totals the status
//! API reports.

pub mod event;
pub mod ndjson;
pub mod pretty;
