//! What crosses Kafka between the two stages and what survives a crash: the
//! repartition batches, the changelog records, and the lineage that tells which
//! of them belong to committed transactions.
//!
//! Every record the job writes is tagged with the incarnation of the task that
//! wrote it (the offset of the marker it wrote to its changelog when it was
//! restored) and the task's transaction number. That lets readers ignore records
//! of aborted transactions even on brokers that show them to `read_committed`
//! readers, and ignore zombies: a newer incarnation has a larger marker offset.

use serde::{Deserialize, Serialize};

use super::output::Dim;

/// The transaction that wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// Offset of the incarnation's marker in the task's changelog partition.
    pub inc: i64,
    /// The task's transaction number; every incarnation continues from the committed one.
    pub n: u64,
}

impl Tag {
    /// Kafka header carrying the tag of a changelog record (tombstones have no value).
    pub const HEADER: &'static str = "gmv-tag";

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.inc.to_be_bytes());
        b[8..].copy_from_slice(&self.n.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Tag> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(Tag {
            inc: i64::from_be_bytes(b[..8].try_into().ok()?),
            n: u64::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// Key prefix of changelog markers; state keys never start with it.
pub const MARKER_PREFIX: &[u8] = b"~inc|";

/// Written to a task's changelog when an instance restores it; its offset names the incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The task's committed transaction number when it was restored.
    pub base: u64,
}

/// Which tagged records of one task belong to committed transactions.
///
/// Incarnation `k` (marker at offset `inc_k`, restored from `base_k`) wrote
/// transactions `base_k + 1, base_k + 2, ...`; the next incarnation restored from
/// `base_{k+1}`, so exactly those up to `base_{k+1}` committed. For the newest one
/// the committed number is read from the consumer group's offsets.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// (incarnation, first transaction, last committed transaction), by incarnation.
    ranges: Vec<(i64, u64, u64)>,
}

impl Lineage {
    /// `markers`: (offset, base) in offset order; `committed_n`: the task's committed transaction number.
    pub fn new(markers: &[(i64, Marker)], committed_n: u64) -> Self {
        let ranges = markers
            .iter()
            .enumerate()
            .map(|(i, (inc, m))| {
                let end = markers
                    .get(i + 1)
                    .map_or(committed_n, |(_, next)| next.base);
                (*inc, m.base + 1, end)
            })
            .collect();
        Lineage { ranges }
    }

    pub fn is_committed(&self, tag: Tag) -> bool {
        self.ranges
            .binary_search_by_key(&tag.inc, |r| r.0)
            .is_ok_and(|i| {
                let (_, first, last) = self.ranges[i];
                first <= tag.n && tag.n <= last
            })
    }
}

/// Sums one attribution task adds to one key in one 1-second event-time bucket:
/// the same figures as a cumulative total.
pub type Delta = super::engine::Totals;

/// One key's delta in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialEntry {
    pub dim: Dim,
    pub key: String,
    pub bucket_ms: i64,
    pub delta: Delta,
}

/// Where an attribution task's event time stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The task's watermark; `i64::MIN` before it has data.
    pub watermark_ms: i64,
    /// Largest event time it has seen.
    pub max_event_ms: i64,
    /// Every partition of the task has been idle for `idle_timeout`.
    pub idle: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            watermark_ms: i64::MIN,
            max_event_ms: i64::MIN,
            idle: false,
        }
    }
}

/// What one attribution task sends one aggregation partition in one transaction:
/// its partial sums for the keys that partition owns, and its progress. Every
/// partition gets one per transaction, so each learns every task's watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialBatch {
    /// The attribution task (input partition number).
    pub source: i32,
    pub tag: Tag,
    /// The transaction number the writing incarnation was restored from.
    pub base: u64,
    pub progress: Progress,
    pub entries: Vec<PartialEntry>,
}

/// Stable partition of an aggregation key (`{dim}|{key}`), FNV-1a: the same on every instance.
pub fn aggregation_partition(dim: Dim, key: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in dim.as_str().bytes().chain([b'|']).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// Encodes a state value or batch compactly.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("state values always encode")
}

/// Decodes what [`encode`] wrote; an error means a corrupt or foreign record.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_through_its_header_bytes() {
        let t = Tag {
            inc: 1234567,
            n: 42,
        };
        assert_eq!(Tag::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(Tag::from_bytes(b"short"), None);
    }

    #[test]
    fn batch_round_trips() {
        let b = PartialBatch {
            source: 3,
            tag: Tag { inc: 7, n: 9 },
            base: 8,
            progress: Progress {
                watermark_ms: 1_000,
                max_event_ms: 6_000,
                idle: true,
            },
            entries: vec![PartialEntry {
                dim: Dim::Brand,
                key: "b|x".into(),
                bucket_ms: -1_000,
                delta: Delta {
                    gmv_fen: i128::MAX / 3,
                    refund_fen: 5,
                    paid_orders: 1,
                    placed_orders: 2,
                    shipped_orders: 3,
                    delivered_orders: u64::MAX,
                },
            }],
        };
        assert_eq!(decode::<PartialBatch>(&encode(&b)).unwrap(), b);
        assert!(decode::<PartialBatch>(&encode(&b)[..5]).is_err());
    }

    #[test]
    fn lineage_keeps_exactly_the_committed_transactions() {
        // Incarnation at offset 10 restored from 0 and got to commit 3 (then crashed in 4);
        // the one at 50 restored from 3, committed 4 and 5; the one at 90 restored from 5.
        let markers = [
            (10, Marker { base: 0 }),
            (50, Marker { base: 3 }),
            (90, Marker { base: 5 }),
        ];
        let l = Lineage::new(&markers, 7);
        let c = |inc, n| l.is_committed(Tag { inc, n });
        assert!(c(10, 1) && c(10, 3));
        assert!(!c(10, 4), "aborted when its writer died");
        assert!(c(50, 4) && c(50, 5) && !c(50, 6));
        assert!(c(90, 6) && c(90, 7));
        assert!(!c(90, 8), "not committed yet");
        assert!(!c(70, 4), "no such incarnation");
    }

    #[test]
    fn keys_spread_over_partitions_and_always_land_on_the_same_one() {
        let mut seen = [0; 4];
        for i in 0..1000 {
            let p = aggregation_partition(Dim::Brand, &format!("brand-{i}"), 4);
            assert_eq!(
                p,
                aggregation_partition(Dim::Brand, &format!("brand-{i}"), 4)
            );
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }
}
