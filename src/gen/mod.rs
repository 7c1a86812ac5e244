//! Traffic generator: realistic, deterministic Singles Day input.
pub mod traffic;
pub mod writer;
