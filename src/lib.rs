//! Exact, event-time GMV analytics for Singles Day traffic on Kafka.
//!
//! - [`config`]: one `Config` (file, `GMV_*` env, flags) with the contract's defaults.
//! - [`model`]: validated input events; [`decode`]: bytes → events or dead-letter reasons.
//! - [`core`]: the pure engine (join, dedup, FX, watermarks, windows, milestones).
//! - [`io`]: Kafka consumer, acknowledged producer, topic definitions and checks.
//! - [`telemetry`]: Prometheus metrics and the `/metrics`, `/healthz` server.
//! - [`app`]: the processing loop that wires io, core and telemetry.
//! - [`gen`]: the traffic generator; [`demo`]: the embedded, no-services demo.
//! - [`alloc`]: the memory allocator and its tuning.
pub mod alloc;
pub mod app;
pub mod config;
pub mod core;
pub mod decode;
pub mod demo;
pub mod gen;
pub mod io;
pub mod model;
pub mod screen;
pub mod telemetry;
