//! What weft tells operators about itself: metrics, its log (and, later, tracing).

pub mod clusters;
pub mod log;
pub mod metrics;
pub mod process;
pub mod routes;
