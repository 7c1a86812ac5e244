//! The pure core: join, de-duplication, FX, watermarks, windows and
//! milestones. No I/O, no clock, no runtime: events and wall time in, outputs out.

pub mod aggregation;
pub mod attribution;
pub mod batch_log;
pub mod commit;
pub mod engine;
pub mod fx;
mod interner;
pub mod join;
pub mod local;
pub mod milestone;
pub mod output;
pub mod slab;
pub mod state;
pub mod watermark;
pub mod window;

/// Hash map used on the hot path: fast hashing, still DoS-resistant (random
/// keys), and `entry_ref` so a key is hashed once and copied only when inserted.
pub type FastMap<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;
/// Hash set counterpart of [`FastMap`].
pub type FastSet<K> = hashbrown::HashSet<K, ahash::RandomState>;

pub use engine::{Ahead, Engine, EngineConfig};
pub use local::LocalJob;
pub use output::Output;
