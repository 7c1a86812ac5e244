//! The attribution task's state as changelog records, and back: its changes
//! drained as batches (`batch_log`), the clocks, and a restore.

use serde::{Deserialize, Serialize};

use super::*;

/// An order as saved in the changelog: names, not ids, since ids are per process.
/// Borrowed both ways: written from the interned names, read from the record.
#[derive(Debug, Serialize, Deserialize)]
struct SavedOrder<'a> {
    brand: &'a str,
    channel: Option<&'a str>,
    country: &'a str,
    ts_ms: i64,
    first_paid_ms: i64,
}

/// The changelog value of one order id (`W`: a slice written, a `Vec` read).
#[derive(Debug, Serialize, Deserialize)]
struct SavedSlot<'a, W> {
    #[serde(borrow)]
    order: Option<SavedOrder<'a>>,
    waiting: W,
}

impl<W: AsRef<[Waiting]>> SavedSlot<'_, W> {
    /// What keeps it in the state: its order's time and its events' deadlines.
    fn marks(&self) -> Marks {
        Marks::of_slot(
            self.order.as_ref().map(|o| o.ts_ms),
            self.waiting.as_ref().iter().map(|x| x.deadline_ms),
        )
    }
}

/// The changelog value of the task's clocks.
#[derive(Debug, Serialize, Deserialize)]
struct SavedClock {
    /// (topic index, partition, largest event time).
    clocks: Vec<(u8, i32, i64)>,
    watermark_ms: i64,
    last_sweep_watermark_ms: i64,
}

/// An entry whose times lie more than this past the wall clock would keep its
/// batch, and every later one, from getting a tombstone for that long: it is
/// written again at every commit instead. With the default `time.max_future`
/// (1 h) no event time gets that far ahead; a larger one lets it.
const PIN_AHEAD_MS: i64 = 3_600_000;
/// At most this many such entries are re-written per commit; beyond it they
/// hold their batches (and the changelog grows until their TTLs pass).
const MAX_PINNED: usize = 100_000;

/// Kinds of the entries of a changelog batch.
const ORDER: u8 = b'o';
const PAYMENT_ID: u8 = b'p';
const DELIVERY_ID: u8 = b'd';
const CLOCK_KEY: &[u8] = b"~clock";

impl AttributionTask {
    /// Hands every state change since the last call to `f` as changelog
    /// records: tombstones for batches no longer needed, then this transaction's
    /// batch (see [`batch_log`]), then the clocks.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
        self.log.drop_dead(&self.horizon, |key| f(key, None));
        // Pinned entries go into this batch again, as they are now.
        let pinned = std::mem::take(&mut self.pinned);
        for (kind, id) in &pinned {
            match *kind {
                ORDER => self.joins.touch(id),
                PAYMENT_ID => self.payment_ids.touch(id),
                _ => self.delivery_ids.touch(id),
            }
        }
        let pin_after = self.now_ms.saturating_add(PIN_AHEAD_MS);
        let (names, pinned) = (&*self.names.borrow(), &mut self.pinned);
        let mut counted =
            |kind, id: &str, marks: Marks| unless_pinned(pinned, pin_after, kind, id, marks);
        let mut w = self.log.writer(&self.horizon, |k, v| f(k, Some(v)));
        self.joins.drain_changes(|id, slot| {
            let value = slot.map(|(order, waiting)| {
                let order = order.map(|o| {
                    let a = o.attribution;
                    SavedOrder {
                        brand: names[0].name(a.brand),
                        channel: (a.channel != NO_CHANNEL).then(|| names[1].name(a.channel)),
                        country: names[2].name(a.country),
                        ts_ms: o.ts_ms,
                        first_paid_ms: o.first_paid_ms,
                    }
                });
                SavedSlot { order, waiting }
            });
            let marks = value.as_ref().map_or(Marks::default(), SavedSlot::marks);
            w.entry(ORDER, id, value.as_ref(), counted(ORDER, id, marks));
        });
        for (kind, ids) in [
            (PAYMENT_ID, &mut self.payment_ids),
            (DELIVERY_ID, &mut self.delivery_ids),
        ] {
            ids.drain_changes(|id, seen_ms| {
                let marks = counted(kind, id, Marks::of_id(seen_ms));
                w.entry(kind, id, seen_ms.as_ref(), marks);
            });
        }
        w.finish();
        if std::mem::take(&mut self.clock_changed) {
            let clock = SavedClock {
                clocks: self
                    .wm
                    .clocks()
                    .into_iter()
                    .map(|((t, p), ts)| (t.index() as u8, p, ts))
                    .collect(),
                watermark_ms: self.wm.current_ms(),
                last_sweep_watermark_ms: self.last_sweep_watermark_ms,
            };
            f(CLOCK_KEY, Some(&state::encode(&clock)));
        }
    }

    /// Live changelog batches (written or restored, without a tombstone yet).
    pub fn changelog_batches(&self) -> usize {
        self.log.len()
    }

    /// Entries re-written at every commit (see `PIN_AHEAD_MS`).
    pub fn changelog_pinned(&self) -> usize {
        self.pinned.len()
    }

    /// [`AttributionTask::drain_changes`] collected.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        self.drain_changes(|k, v| out.push((k.to_vec(), v.map(<[u8]>::to_vec))));
        out
    }

    /// Puts back one changelog record (the latest committed value of its key);
    /// batches must come in key order, which is the order they were committed in.
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        if key == CLOCK_KEY {
            let c: SavedClock =
                state::decode(value).map_err(|e| format!("changelog clock: {e}"))?;
            let clocks: Vec<(PartitionId, i64)> = c
                .clocks
                .iter()
                .filter_map(|(t, p, ts)| InputTopic::ALL.get(*t as usize).map(|t| ((*t, *p), *ts)))
                .collect();
            self.wm.restore(&clocks, c.watermark_ms, self.now_ms);
            self.last_sweep_watermark_ms = c.last_sweep_watermark_ms;
            return Ok(());
        }
        match key.first() {
            Some(&batch_log::BATCH_PREFIX) => {
                let marks = self.restore_batch(value).map_err(|e| {
                    format!("changelog record {:?}: {e}", String::from_utf8_lossy(key))
                })?;
                self.log.restored(key, marks, &self.horizon);
                Ok(())
            }
            _ => Err(format!(
                "unknown changelog key {:?} (changelogs of gmv before batched state records cannot be restored: start with empty changelog topics)",
                String::from_utf8_lossy(key)
            )),
        }
    }

    /// Replays the entries of one batch, oldest first; returns its marks.
    fn restore_batch(&mut self, value: &[u8]) -> Result<Marks, String> {
        let mut marks = Marks::default();
        let pin_after = self.now_ms.saturating_add(PIN_AHEAD_MS);
        let mut rest = batch_log::body(value)?;
        while let Some((&kind, entry)) = rest.split_first() {
            let e = |e: postcard::Error| format!("entry of kind {:?}: {e}", kind as char);
            let (id, entry_marks, after) = match kind {
                ORDER => {
                    let ((id, slot), rest) =
                        batch_log::take_entry::<SavedSlot<Vec<Waiting>>>(entry).map_err(e)?;
                    let entry_marks = slot.as_ref().map_or(Marks::default(), SavedSlot::marks);
                    let names = &mut *self.names.borrow_mut();
                    let slot = slot.map(|s| {
                        let order = s.order.map(|o| OrderInfo {
                            attribution: Attribution {
                                brand: names[0].intern(o.brand),
                                channel: o.channel.map_or(NO_CHANNEL, |c| names[1].intern(c)),
                                country: names[2].intern(o.country),
                            },
                            ts_ms: o.ts_ms,
                            first_paid_ms: o.first_paid_ms,
                        });
                        (order, s.waiting)
                    });
                    self.joins.restore(id, slot);
                    (id, entry_marks, rest)
                }
                PAYMENT_ID | DELIVERY_ID => {
                    let ((id, ts), rest) = batch_log::take_entry::<i64>(entry).map_err(e)?;
                    match kind {
                        PAYMENT_ID => self.payment_ids.restore(id, ts),
                        _ => self.delivery_ids.restore(id, ts),
                    }
                    (id, Marks::of_id(ts), rest)
                }
                other => return Err(format!("unknown entry kind {:?}", other as char)),
            };
            marks.merge(&unless_pinned(
                &mut self.pinned,
                pin_after,
                kind,
                id,
                entry_marks,
            ));
            rest = after;
        }
        Ok(marks)
    }
}

/// The marks an entry adds to its batch: none when its times lie beyond
/// `pin_after` and it is pinned instead (see `PIN_AHEAD_MS`).
fn unless_pinned(
    pinned: &mut FastSet<(u8, compact_str::CompactString)>,
    pin_after: i64,
    kind: u8,
    id: &str,
    marks: Marks,
) -> Marks {
    if marks.latest().is_some_and(|t| t > pin_after) && pinned.len() < MAX_PINNED {
        pinned.insert((kind, id.into()));
        return Marks::default();
    }
    marks
}
