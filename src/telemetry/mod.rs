//! Prometheus metrics and the HTTP server that serves them with `/healthz`.

pub mod http;
pub mod metrics;

pub use metrics::Metrics;
