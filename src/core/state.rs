//! What crosses Kafka between the two stages and what survives a crash: the
//! repartition batches, the changelog records, and the lineage that tells which
//! of them belong to committed transactions.
//!
//! Every record the job writes is tagged with the incarnation of the task that
//! wrote it (the offset of the marker it wrote to its changelog when it was
//! restored) and the task's transaction number. Each transaction ends with a
//! commit record in the task's changelog, which also holds where the task's
//! inputs resume. The changelog's order, not the consumer group, is the
//! authority: a record an older incarnation writes after a newer one's marker
//! never counts. Readers use `read_committed`, so aborted records never reach
//! them; the tags let a restored task skip what it counted before, and a
//! zombie's transaction that committed without offsets (so without the group
//! generation check, KIP-447) still does not count.

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
/// Key prefix of an incarnation's lineage record (`~lin|{inc}`).
pub const LINEAGE_PREFIX: &[u8] = b"~lin|";
/// Key prefix of an incarnation's commit record (`~com|{inc}`).
pub const COMMIT_PREFIX: &[u8] = b"~com|";

/// True for the bookkeeping records of a changelog (markers, lineage, commits), not state.
pub fn is_bookkeeping(key: &[u8]) -> bool {
    [MARKER_PREFIX, LINEAGE_PREFIX, COMMIT_PREFIX]
        .iter()
        .any(|p| key.starts_with(p))
}

/// The key of incarnation `inc`'s lineage or commit record.
pub fn bookkeeping_key(prefix: &[u8], inc: i64) -> Vec<u8> {
    [prefix, inc.to_string().as_bytes()].concat()
}

/// Written once by an incarnation, right after it restored and before it does any
/// work: what it restored from. It is also that incarnation's commit of
/// transaction `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// The committed transaction number it continued from.
    pub base: u64,
    /// Where the task's input partitions resume (per input; `None`: from the beginning).
    pub offsets: Vec<Option<i64>>,
    /// The committed transactions of every earlier incarnation.
    pub ranges: Vec<Range>,
}

/// Written with every transaction of an incarnation, after all its other records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub n: u64,
    /// Where the task's input partitions resume once `n` committed.
    pub offsets: Vec<Option<i64>>,
}

/// Incarnation `inc` committed transactions `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub inc: i64,
    pub first: u64,
    pub last: u64,
}

/// A bookkeeping record of a changelog partition, at its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Marker,
    Lineage(i64, LineageRecord),
    Commit(i64, CommitRecord),
}

/// What a new incarnation restores: which tagged records committed, the
/// transaction number to continue from, and where its inputs resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Committed ranges, by incarnation.
    pub ranges: Vec<Range>,
    pub base: u64,
    pub offsets: Vec<Option<i64>>,
}

impl Lineage {
    /// Resolves the bookkeeping records of a partition read up to (not including) the
    /// new incarnation's marker, in offset order.
    ///
    /// The newest incarnation that wrote its lineage record is the one to continue:
    /// its last commit record decides. A record counts only if it precedes the next
    /// incarnation's marker: whatever an older incarnation writes after that marker
    /// comes from a zombie (an instance that lost the task but has not noticed yet),
    /// whose transaction the new owner redoes. An incarnation that died before its
    /// lineage record did no work.
    pub fn resolve(entries: &[(i64, Entry)]) -> Lineage {
        // Per incarnation: its lineage record and last commit, both before the next marker.
        let mut current: Option<i64> = None;
        let mut found: Option<(i64, LineageRecord, Option<CommitRecord>)> = None;
        for (offset, e) in entries {
            match e {
                Entry::Marker => current = Some(*offset),
                Entry::Lineage(inc, rec) if Some(*inc) == current => {
                    found = Some((*inc, rec.clone(), None));
                }
                Entry::Commit(inc, rec) if Some(*inc) == current => {
                    if let Some((_, _, last)) = found.as_mut().filter(|f| f.0 == *inc) {
                        *last = Some(rec.clone());
                    }
                }
                _ => {} // a zombie's record, after a newer marker
            }
        }
        let Some((inc, lin, commit)) = found else {
            return Lineage::default();
        };
        let (n, offsets) = match commit {
            Some(c) if c.n >= lin.base => (c.n, c.offsets),
            _ => (lin.base, lin.offsets),
        };
        let mut ranges = lin.ranges;
        if n > lin.base {
            ranges.push(Range {
                inc,
                first: lin.base + 1,
                last: n,
            });
        }
        Lineage {
            ranges,
            base: n,
            offsets,
        }
    }

    pub fn is_committed(&self, tag: Tag) -> bool {
        self.ranges
            .binary_search_by_key(&tag.inc, |r| r.inc)
            .is_ok_and(|i| {
                let r = self.ranges[i];
                r.first <= tag.n && tag.n <= r.last
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

    fn lin(base: u64, ranges: &[Range]) -> LineageRecord {
        LineageRecord {
            base,
            offsets: vec![Some(base as i64 * 100)],
            ranges: ranges.to_vec(),
        }
    }

    fn range(inc: i64, first: u64, last: u64) -> Range {
        Range { inc, first, last }
    }

    fn com(n: u64) -> CommitRecord {
        CommitRecord {
            n,
            offsets: vec![Some(n as i64 * 100)],
        }
    }

    #[test]
    fn lineage_keeps_exactly_the_committed_transactions() {
        // Incarnation 10 started fresh, committed 1..=3, died in 4 (its records of 4
        // are there, no commit). 50 restored from 3, committed 4 and 5. 90 is a new
        // incarnation that died before its lineage record: it did nothing.
        let log = [
            (10, Entry::Marker),
            (11, Entry::Lineage(10, lin(0, &[]))),
            (20, Entry::Commit(10, com(1))),
            (30, Entry::Commit(10, com(3))),
            (50, Entry::Marker),
            (51, Entry::Lineage(50, lin(3, &[range(10, 1, 3)]))),
            (60, Entry::Commit(50, com(4))),
            (70, Entry::Commit(50, com(5))),
            (90, Entry::Marker),
        ];
        let l = Lineage::resolve(&log);
        assert_eq!(l.base, 5);
        assert_eq!(l.offsets, vec![Some(500)]);
        let c = |inc, n| l.is_committed(Tag { inc, n });
        assert!(c(10, 1) && c(10, 3));
        assert!(!c(10, 4), "aborted when its writer died");
        assert!(c(50, 4) && c(50, 5) && !c(50, 6));
        assert!(!c(90, 6), "no work from an incarnation without lineage");
        assert!(!c(70, 4), "no such incarnation");
    }

    #[test]
    fn a_zombie_commit_after_the_next_marker_does_not_count() {
        // 10 committed 1 and 2; 50 took over (marker) while 10 still ran and then
        // committed 3: that commit comes after 50's marker, so 50's successor
        // must not count it, and resumes from 2 with 2's offsets.
        let log = [
            (10, Entry::Marker),
            (11, Entry::Lineage(10, lin(0, &[]))),
            (20, Entry::Commit(10, com(2))),
            (50, Entry::Marker),
            (55, Entry::Commit(10, com(3))),
            (56, Entry::Lineage(50, lin(2, &[range(10, 1, 2)]))),
        ];
        let l = Lineage::resolve(&log);
        assert_eq!((l.base, l.offsets.clone()), (2, vec![Some(200)]));
        assert!(l.is_committed(Tag { inc: 10, n: 2 }));
        assert!(!l.is_committed(Tag { inc: 10, n: 3 }));
        // Without 50's lineage record (it died at once), 10's pre-marker commit decides.
        let l = Lineage::resolve(&log[..5]);
        assert_eq!(l.base, 2);
        assert!(!l.is_committed(Tag { inc: 10, n: 3 }));
    }

    #[test]
    fn a_fresh_partition_starts_from_nothing() {
        let l = Lineage::resolve(&[(0, Entry::Marker)]);
        assert_eq!(l, Lineage::default());
        assert!(!l.is_committed(Tag { inc: 0, n: 1 }));
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
