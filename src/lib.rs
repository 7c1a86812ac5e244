//! Exact, event-time GMV analytics for Singles Day traffic on Kafka.
//!
//! - [`model`]: validated input events; [`decode`]: bytes → events or dead-letter reasons.
//! - [`core`]: the pure engine (join, dedup, FX, watermarks, windows, milestones).
pub mod app;
pub mod config;
pub mod core;
pub mod decode;
pub mod io;
pub mod model;
pub mod telemetry;
