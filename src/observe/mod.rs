//! What operators see: logs, Prometheus metrics and the health/readiness endpoints.

pub mod http;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;
