//! The attribution changelog as a log of batches, not one record per id.
//!
//! A commit changes about one id per input event (an order, a payment id, a
//! delivery id). One Kafka record each made the changelog most of the job's
//! records: each one produced, acknowledged and stored by the broker one by one
//! (docs/performance.md). Instead, each commit writes its changes as entries
//! packed into a few large records (chunks of [`CHUNK_BYTES`]), keyed by the
//! task's batch number, which only grows (a restored task continues after the
//! largest it restored). A restore replays the batches in key order, which is
//! commit order: a later entry for an id replaces the one before, and a
//! removal entry forgets it.
//!
//! Compaction by key no longer drops old values, so the log drops whole
//! batches itself: a batch gets a tombstone once every value in it is certainly
//! gone from the state (swept after its TTL, or expired after its join
//! timeout) by a sweep or expiry that ran after the batch was written — and
//! only once every older batch is gone too, so an id's older value never
//! outlives its newer one. An entry with times far past the wall clock (only
//! with a `time.max_future` above an hour) would so hold every later batch: the attribution
//! task leaves it out of its batch's marks and writes it again at every
//! commit instead (`PIN_AHEAD_MS` in `attribution/changelog.rs`).

use std::collections::VecDeque;

use serde::Serialize;

/// Key prefix of a batch record (state keys of other kinds never start with it).
pub const BATCH_PREFIX: u8 = b's';
/// Format version, the first byte of every batch value. Version 4 adds two
/// short kinds of entry (`attribution/changelog.rs`): an order with nothing
/// waiting, and an order's first payment alone, which had the whole order
/// written again (a quarter of the bytes, docs/performance.md). Version 3
/// names each entry's id by its fingerprint (10 bytes), not by the id itself
/// (11 – 20 bytes for the benches' ids, 36 for a UUID: 60% of the bytes).
/// Versions 2 to 4 follow it with the chunk's base time, from which its
/// entries' times are written as differences (a few bytes, not six); version
/// 1 had none. Versions 1 to 3 are still read ([`Body`]): each is a subset of
/// the next.
const VERSION: u8 = 4;
pub const VERSION_3: u8 = 3;
pub const VERSION_2: u8 = 2;
pub const VERSION_1: u8 = 1;
/// A chunk is sent once it holds this many bytes (or a quarter of
/// `kafka.max_record_bytes` if less, see [`chunk_bytes`]): large enough that
/// per-record costs vanish.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The chunk size for records of at most `max_record_bytes`: a chunk goes once
/// it is full, so a record is one chunk plus its last entry (and the names it
/// put before it), and an entry is bounded (one order id with at most
/// `MAX_WAITING_PER_ORDER` events, about 25 KB) far below three quarters of
/// the smallest `max_record_bytes` allowed.
pub fn chunk_bytes(max_record_bytes: usize) -> usize {
    CHUNK_BYTES.min(max_record_bytes / 4)
}

/// When the values of one batch are certainly gone, as the task's sweeps and
/// expiries see it: the largest times it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Largest order time among its order values (swept at `order_ttl`).
    pub order_ts: Option<i64>,
    /// Largest time among its de-duplication ids (swept at `dedup_ttl`).
    pub id_ts: Option<i64>,
    /// Largest deadline among its waiting events (expired by the watermark).
    pub deadline: Option<i64>,
}

impl Marks {
    /// The marks of one order id's value: its order's time, if it has an order,
    /// and the deadlines of the events waiting for it.
    pub fn of_slot(order_ts: Option<i64>, deadlines: impl IntoIterator<Item = i64>) -> Marks {
        Marks {
            order_ts,
            id_ts: None,
            deadline: deadlines.into_iter().max(),
        }
    }

    /// The marks of one de-duplication id's value: the time it was seen at.
    pub fn of_id(ts: Option<i64>) -> Marks {
        Marks {
            id_ts: ts,
            ..Marks::default()
        }
    }

    /// The latest of all its times.
    pub fn latest(&self) -> Option<i64> {
        // `None` orders below every `Some`. Not an array of the three, whose
        // 16-byte loads of fields just stored 8 bytes at a time stalled (2.7%
        // of the core bench with the changelog, docs/performance.md).
        self.order_ts.max(self.id_ts).max(self.deadline)
    }

    pub fn merge(&mut self, other: &Marks) {
        let later = |a: Option<i64>, b: Option<i64>| a.max(b);
        self.order_ts = later(self.order_ts, other.order_ts);
        self.id_ts = later(self.id_ts, other.id_ts);
        self.deadline = later(self.deadline, other.deadline);
    }
}

/// What the task has certainly forgotten: the last sweep and the last expiry,
/// each numbered so a batch can tell whether it ran after the batch was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Horizon {
    /// Sweeps done. A sweep walks the state in steps, so one may be under
    /// way when a batch is written, and have passed the slots of some of
    /// its entries already: only a sweep begun after it counts for it.
    pub sweeps: u64,
    pub sweeps_begun: u64,
    /// The last sweep done forgot orders placed before this, and ids seen before `ids_before_ms`.
    pub orders_before_ms: i64,
    pub ids_before_ms: i64,
    pub expiries: u64,
    /// The last expiry released every event waiting with a deadline up to this.
    pub expired_to_ms: i64,
}

#[derive(Debug)]
struct Batch {
    key: Vec<u8>,
    marks: Marks,
    /// The horizon's counters when it was written (sweeps begun).
    sweeps: u64,
    expiries: u64,
}

impl Batch {
    fn is_dead(&self, h: &Horizon) -> bool {
        let swept = h.sweeps > self.sweeps;
        let m = &self.marks;
        m.order_ts.is_none_or(|t| swept && t < h.orders_before_ms)
            && m.id_ts.is_none_or(|t| swept && t < h.ids_before_ms)
            && m.deadline
                .is_none_or(|d| h.expiries > self.expiries && d <= h.expired_to_ms)
    }
}

/// One task's live batches, oldest first.
#[derive(Debug)]
pub struct BatchLog {
    batches: VecDeque<Batch>,
    /// The chunk being filled, kept between commits for its capacity.
    buf: Vec<u8>,
    /// Number of the next batch: above every batch written or restored.
    next: u64,
    /// A chunk is sent once it holds this many bytes.
    chunk_bytes: usize,
}

impl Default for BatchLog {
    fn default() -> Self {
        BatchLog::new(CHUNK_BYTES)
    }
}

impl BatchLog {
    pub fn new(chunk_bytes: usize) -> Self {
        BatchLog {
            batches: VecDeque::new(),
            buf: Vec::new(),
            next: 0,
            chunk_bytes,
        }
    }

    /// Live batches (written or restored, not yet given a tombstone).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Tombstones for the oldest batches whose values are all gone.
    pub fn drop_dead(&mut self, h: &Horizon, mut f: impl FnMut(&[u8])) {
        while self.batches.front().is_some_and(|b| b.is_dead(h)) {
            let b = self.batches.pop_front().expect("checked");
            f(&b.key);
        }
    }

    /// Starts the next batch; its chunks go to `f` as they fill. `base_ms`:
    /// a time near those its entries hold (see [`VERSION`]).
    pub fn writer<'a, F: FnMut(&[u8], &[u8])>(
        &'a mut self,
        h: &Horizon,
        base_ms: i64,
        f: F,
    ) -> BatchWriter<'a, F> {
        self.buf.clear();
        self.next += 1;
        BatchWriter {
            n: self.next,
            log: self,
            base_ms,
            chunk: 0,
            marks: Marks::default(),
            sweeps: h.sweeps_begun,
            expiries: h.expiries,
            f,
        }
    }

    /// Registers a restored batch: it counts as written now, so it waits for
    /// the next sweep and expiry before it can go.
    pub fn restored(&mut self, key: &[u8], marks: Marks, h: &Horizon) {
        self.next = self.next.max(batch_number(key).unwrap_or(0));
        self.batches.push_back(Batch {
            key: key.to_vec(),
            marks,
            sweeps: h.sweeps_begun,
            expiries: h.expiries,
        });
    }
}

/// Writes one transaction's entries, chunk by chunk.
pub struct BatchWriter<'a, F: FnMut(&[u8], &[u8])> {
    log: &'a mut BatchLog,
    n: u64,
    base_ms: i64,
    chunk: u32,
    marks: Marks,
    sweeps: u64,
    expiries: u64,
    f: F,
}

impl<F: FnMut(&[u8], &[u8])> BatchWriter<'_, F> {
    /// The number of the chunk the next entry lands in: it changes when one is sent.
    pub fn chunk(&self) -> u32 {
        self.chunk
    }

    /// Appends one id's change of kind `kind` (the id, then what its kind
    /// says); the chunk is sent if this filled it.
    pub fn entry<E: Serialize + ?Sized>(&mut self, kind: u8, entry: &E, marks: Marks) {
        self.put(kind, entry);
        self.marks.merge(&marks);
        if self.log.buf.len() >= self.log.chunk_bytes {
            self.flush();
        }
    }

    /// Appends an entry of kind `kind` that is no id's value, and never sends
    /// the chunk: what the next [`BatchWriter::entry`] refers to lands in its chunk.
    pub fn put<V: Serialize + ?Sized>(&mut self, kind: u8, value: &V) {
        let buf = &mut self.log.buf;
        if buf.is_empty() {
            buf.push(VERSION);
            postcard::serialize_with_flavor(&self.base_ms, Append(buf)).expect("an i64 encodes");
        }
        buf.push(kind);
        postcard::serialize_with_flavor(value, Append(buf)).expect("state values always encode");
    }

    fn flush(&mut self) {
        if self.log.buf.is_empty() {
            return;
        }
        let key = batch_key(self.n, self.chunk);
        (self.f)(&key, &self.log.buf);
        self.log.buf.clear();
        self.log.batches.push_back(Batch {
            key,
            marks: std::mem::take(&mut self.marks),
            sweeps: self.sweeps,
            expiries: self.expiries,
        });
        self.chunk += 1;
    }

    /// Sends the last chunk.
    pub fn finish(mut self) {
        self.flush();
    }
}

/// postcard's output appended to a `Vec`, the same bytes as `to_extend`
/// writes: a short run (a varint, a country code) byte by byte, not through
/// `Extend`, whose copy of each run was a `memcpy` call, most of the
/// encoding's time (docs/performance.md).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 8 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// `s{n}.{chunk}`, zero-padded: keys sort in commit order.
fn batch_key(n: u64, chunk: u32) -> Vec<u8> {
    let mut key = vec![BATCH_PREFIX];
    key.extend_from_slice(format!("{n:020}.{chunk:06}").as_bytes());
    key
}

/// The batch number in a key [`batch_key`] wrote.
fn batch_number(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.get(1..21)?).ok()?.parse().ok()
}

/// A batch value, read.
#[derive(Debug, PartialEq, Eq)]
pub struct Body<'a> {
    pub version: u8,
    /// The base time of versions 2 and 3; 0 in version 1, whose times are whole.
    pub base_ms: i64,
    /// The entries: each is a kind byte, then what [`BatchWriter::entry`] or
    /// [`BatchWriter::put`] wrote, which [`take`] decodes (an entry's id,
    /// then its value).
    pub entries: &'a [u8],
}

pub fn body(value: &[u8]) -> Result<Body<'_>, String> {
    match value.split_first() {
        Some((&version @ (VERSION | VERSION_3 | VERSION_2), rest)) => {
            let (base_ms, entries) =
                postcard::take_from_bytes(rest).map_err(|e| format!("batch base time: {e}"))?;
            Ok(Body {
                version,
                base_ms,
                entries,
            })
        }
        Some((&VERSION_1, entries)) => Ok(Body {
            version: VERSION_1,
            base_ms: 0,
            entries,
        }),
        Some((v, _)) => Err(format!(
            "batch format version {v} (this build reads {VERSION_1} to {VERSION})"
        )),
        None => Err("empty batch value".into()),
    }
}

/// Decodes what [`BatchWriter::put`] wrote at the start of `rest` (after
/// its kind byte); returns it and what follows it.
pub fn take<'a, V: serde::Deserialize<'a>>(
    rest: &'a [u8],
) -> Result<(V, &'a [u8]), postcard::Error> {
    postcard::take_from_bytes(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon() -> Horizon {
        Horizon {
            sweeps: 1,
            sweeps_begun: 1,
            orders_before_ms: 1_000,
            ids_before_ms: 2_000,
            expiries: 1,
            expired_to_ms: 3_000,
        }
    }

    /// A log of one transaction per entry, in order, all written at horizon `h`.
    fn log_of(h: &Horizon, entries: &[(u8, &str, Option<i64>, Marks)]) -> BatchLog {
        let mut log = BatchLog::default();
        for (kind, id, v, m) in entries {
            let mut w = log.writer(h, 0, |_, _| {});
            w.entry(*kind, &(id, v), *m);
            w.finish();
        }
        log
    }

    fn marks(order: Option<i64>, id: Option<i64>, deadline: Option<i64>) -> Marks {
        Marks {
            order_ts: order,
            id_ts: id,
            deadline,
        }
    }

    fn dropped(log: &mut BatchLog, h: &Horizon) -> Vec<String> {
        let mut out = Vec::new();
        log.drop_dead(h, |k| out.push(String::from_utf8(k.to_vec()).unwrap()));
        out
    }

    /// `Append` writes what postcard's own `to_extend` does, byte for byte:
    /// runs short and long, varints of every width, absent values.
    #[test]
    fn append_writes_postcards_bytes() {
        type V<'a> = (
            &'a str,
            Option<(&'a str, Option<&'a str>, i64, Vec<(i64, u8)>)>,
        );
        let long = "x".repeat(300);
        let values: Vec<V> = vec![
            ("o-1", None),
            ("", Some(("BR", None, 0, vec![]))),
            (
                "order-with-a-longer-id",
                Some((
                    "brand-42",
                    Some("live-7"),
                    -1_733_000_000_000,
                    vec![(i64::MIN, 1), (i64::MAX, 0)],
                )),
            ),
            (&long, Some((&long, Some(""), 127, vec![(128, 2); 40]))),
        ];
        for v in &values {
            let want = postcard::to_extend(v, vec![9]).unwrap();
            let mut got = vec![9];
            postcard::serialize_with_flavor(v, Append(&mut got)).unwrap();
            assert_eq!(got, want, "{v:?}");
        }
    }

    #[test]
    fn entries_round_trip_in_order_and_keys_sort_by_transaction() {
        let mut log = BatchLog::default();
        let mut out = Vec::new();
        log.restored(&batch_key(8, 0), Marks::default(), &Horizon::default());
        let mut w = log.writer(&Horizon::default(), -1_733, |k, v| {
            out.push((k.to_vec(), v.to_vec()))
        });
        w.entry(b'p', &("p1", Some(5i64)), Marks::default());
        w.put(b'n', &(1u8, "brand-1"));
        w.entry(b'd', &("d1", None::<i64>), Marks::default());
        w.finish();
        assert_eq!(out.len(), 1);
        let (key, value) = &out[0];
        assert_eq!(
            key, b"s00000000000000000009.000000",
            "after the restored batch 8"
        );
        let b = body(value).unwrap();
        assert_eq!((b.version, b.base_ms), (VERSION, -1_733));
        let rest = b.entries;
        assert_eq!(rest[0], b'p');
        let ((id, v), rest) = take::<(&str, Option<i64>)>(&rest[1..]).unwrap();
        assert_eq!((id, v), ("p1", Some(5)));
        assert_eq!(rest[0], b'n');
        let ((dim, name), rest) = take::<(u8, &str)>(&rest[1..]).unwrap();
        assert_eq!((dim, name), (1, "brand-1"));
        assert_eq!(rest[0], b'd');
        let ((id, v), rest) = take::<(&str, Option<i64>)>(&rest[1..]).unwrap();
        assert_eq!((id, v, rest.len()), ("d1", None, 0));
        assert!(batch_key(9, 1) < batch_key(10, 0));
        assert_eq!(batch_number(&batch_key(12, 3)), Some(12));
        assert!(body(&[5, 0]).unwrap_err().contains("version 5"));
        assert_eq!(body(&[VERSION_3, 0]).unwrap().version, VERSION_3);
        // Version 1 had no base time: what follows its version byte is entries.
        let v1 = body(&[VERSION_1, b'p']).unwrap();
        assert_eq!((v1.base_ms, v1.entries), (0, &b"p"[..]));
    }

    #[test]
    fn large_batches_split_into_chunks() {
        let mut log = BatchLog::default();
        let mut out = Vec::new();
        let mut w = log.writer(&Horizon::default(), 0, |k, v| {
            out.push((k.to_vec(), v.len()))
        });
        let id = "x".repeat(1_000);
        for i in 0..600 {
            w.entry(b'p', &(format!("{id}{i}"), Some(1i64)), Marks::default());
        }
        w.finish();
        assert_eq!(out.len(), 3, "about 600 kB in 256 kB chunks");
        assert!(out.iter().all(|(_, len)| *len <= CHUNK_BYTES + 1_100));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn a_batch_goes_only_after_a_later_sweep_or_expiry_passed_all_it_holds() {
        let h0 = horizon();
        let mut log = log_of(
            &h0,
            &[
                (b'o', "o1", Some(1), marks(Some(500), None, None)),
                (b'p', "p1", Some(1), marks(None, Some(1_500), None)),
                (b'o', "o2", Some(1), marks(None, None, Some(2_500))),
                (b'o', "o1", None, Marks::default()),
            ],
        );
        // Nothing ran since they were written, though their times are past the horizon.
        assert!(dropped(&mut log, &h0).is_empty());
        // An expiry alone frees none: the oldest batch waits for a sweep.
        let h1 = Horizon { expiries: 2, ..h0 };
        assert!(dropped(&mut log, &h1).is_empty());
        // A sweep: the order and id batches go; the waiting event's deadline is not passed yet.
        let h2 = Horizon {
            sweeps: 2,
            sweeps_begun: 2,
            expiries: 2,
            expired_to_ms: 2_000,
            ..h0
        };
        assert_eq!(dropped(&mut log, &h2).len(), 2);
        assert_eq!(log.len(), 2);
        let h3 = Horizon {
            expired_to_ms: 2_500,
            ..h2
        };
        // The waiting batch goes, and the removal-only batch after it holds no value.
        assert_eq!(dropped(&mut log, &h3).len(), 2);
        assert!(log.is_empty());
    }

    #[test]
    fn a_live_batch_keeps_every_newer_one() {
        let h0 = horizon();
        let mut log = log_of(
            &h0,
            &[
                (b'o', "o1", Some(1), marks(Some(9_999), None, None)),
                (b'p', "p1", Some(1), marks(None, Some(0), None)),
            ],
        );
        let h1 = Horizon {
            sweeps: 2,
            sweeps_begun: 2,
            expiries: 2,
            ..h0
        };
        assert!(dropped(&mut log, &h1).is_empty(), "o1 is not swept yet");
        assert_eq!(log.len(), 2);
        // Restored batches count as written at the restore.
        let mut restored = BatchLog::default();
        restored.restored(b"s1", marks(None, Some(0), None), &h1);
        assert!(dropped(&mut restored, &h1).is_empty());
        let h2 = Horizon {
            sweeps: 3,
            sweeps_begun: 3,
            ..h1
        };
        assert_eq!(dropped(&mut restored, &h2), ["s1"]);
    }

    /// A sweep under way when a batch is written may have passed its
    /// entries' slots already: its end frees nothing of the batch; the end of
    /// the next one does.
    #[test]
    fn a_sweep_under_way_at_the_write_does_not_count() {
        let under_way = Horizon {
            sweeps_begun: 2,
            ..horizon()
        };
        let mut log = log_of(
            &under_way,
            &[(b'p', "p1", Some(1), marks(None, Some(0), None))],
        );
        let done = Horizon {
            sweeps: 2,
            ..under_way
        };
        assert!(dropped(&mut log, &done).is_empty());
        let next_done = Horizon {
            sweeps: 3,
            sweeps_begun: 3,
            ..done
        };
        assert_eq!(dropped(&mut log, &next_done).len(), 1);
    }
}
