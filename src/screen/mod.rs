//! The live big screen: the whole sale's committed results, read back from
//! the output topics (never one instance's share in memory), served as a page,
//! server-sent events and JSON by `telemetry/http.rs`.
//!
//! - [`view`]: the plain struct fed output records, and the view it shows.
//! - [`reader`]: the `read_committed` reader on its own thread.

pub mod reader;
pub mod view;

pub use view::{Screen, View};
