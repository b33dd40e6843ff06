//! What weft tells operators about itself: metrics (and, later, tracing).

pub mod clusters;
pub mod metrics;
pub mod process;
pub mod routes;
