//! What xypriss tells the world: the NDJSON event stream on stdout, and the
//! same figures for Prometheus (`/metrics`).

pub mod event;
pub mod metrics;
pub mod ndjson;
