//! What xypriss tells the world: the event stream on stdout (NDJSON for
//! machines, human lines for a terminal), the running totals the status API
//! reports, and the same figures for Prometheus (`/metrics`).

pub mod event;
pub mod metrics;
pub mod ndjson;
pub mod pretty;
pub mod stderr;
