//! Helpers shared by the integration tests and benchmarks; each uses a subset.
#![allow(dead_code)]
pub mod broker;
