//! What crosses Kafka between the two stages and what survives a crash: the
//! repartition batches and the encoding of changelog records.
//!
//! Both are written in the same Kafka transactions as the consumer offsets and
//! read with `read_committed` (see `commit.rs`): whatever a reader sees was
//! committed together with the offsets after the input that made it, so it
//! needs no tags, sequence checks or bookkeeping records of its own.

use serde::{Deserialize, Serialize};

use super::output::Dim;

/// Key prefix a changelog written before the one commit path used for its
/// bookkeeping (markers, lineage and commit records); state keys never start with
/// `~` otherwise, so a restore recognises such a changelog and says how to upgrade.
pub const OLD_BOOKKEEPING_PREFIXES: [&[u8]; 3] = [b"~inc|", b"~lin|", b"~com|"];

/// Sums one attribution task adds to one key in one 1-second event-time bucket:
/// the same figures as a cumulative total.
pub type Delta = super::engine::Totals;

/// One key's delta in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialEntry {
    pub dim: Dim,
    /// Names are short: stored inline, no allocation per entry (encoded as a string).
    pub key: compact_str::CompactString,
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

/// What one instance's attribution tasks send one aggregation partition in
/// one transaction: their partial sums for the keys that partition owns,
/// merged (one entry per key and bucket, whichever tasks it came from: sums add
/// up in any grouping), and the progress of each task that moved. A partition
/// gets one whenever there are sums for it or progress moved, so each learns
/// every task's watermark. A batch larger than a record may be is sent as
/// several, in order: only the last carries the progress, so no window closes
/// before all its sums are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialBatch {
    /// (attribution task, its progress now); empty on all but the last record.
    pub progress: Vec<(i32, Progress)>,
    pub entries: Vec<PartialEntry>,
}

/// Key of a repartition record: the format's version. Records of the
/// versions before it (keyed `b2:{task}`, one task's sums each, or by the bare
/// task) would decode into the wrong fields: the aggregation stage refuses
/// them instead (README, "Upgrading").
pub const BATCH_KEY: &str = "b3";

/// Upper bound of the encoded size of one task's progress in a batch.
pub const MAX_PROGRESS_BYTES: usize = 40;

impl PartialEntry {
    /// Upper bound of its encoded size: the key, and at most 96 bytes for the
    /// dimension, the key's length, the bucket and the six sums as varints.
    pub fn max_encoded_len(&self) -> usize {
        self.key.len() + 96
    }
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

/// [`encode`] into a buffer the caller reuses (replacing what it held).
pub fn encode_into<T: Serialize>(v: &T, buf: &mut Vec<u8>) {
    buf.clear();
    *buf = postcard::to_extend(v, std::mem::take(buf)).expect("state values always encode");
}

/// Decodes what [`encode`] wrote; an error means a corrupt or foreign record.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// What compaction leaves of a changelog after `changes`: the latest value per
/// key, tombstones removing it (the crash simulations of both stages use it).
#[cfg(test)]
pub(crate) fn compact_into(
    log: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) {
    for (k, v) in changes {
        match v {
            Some(v) => log.insert(k, v),
            None => log.remove(&k),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips() {
        let b = PartialBatch {
            progress: vec![
                (3, Progress::default()),
                (
                    i32::MAX,
                    Progress {
                        watermark_ms: i64::MAX,
                        max_event_ms: i64::MIN,
                        idle: true,
                    },
                ),
            ],
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
        let progress = encode(&b.progress[1]).len();
        assert!(progress <= MAX_PROGRESS_BYTES, "{progress} bytes");
        assert!(decode::<PartialBatch>(&encode(&b)[..5]).is_err());
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
