//! The attribution task's state as changelog records, and back: its changes
//! drained as batches (`batch_log`), the clocks, and a restore.

use serde::{Deserialize, Serialize};

use super::batch_log::BatchWriter;

use super::*;
use crate::core::join::SlotChange;

/// An order as saved in the changelog. Its names are numbers given in its
/// chunk (a [`NAME`] entry before the first order that uses one), not the
/// process's ids, and its times are differences: from the chunk's base time
/// (`batch_log::Body`), and from the order's time for its first payment.
/// Spelling the names out and the times whole made an order's entry about 50
/// bytes, and the changelog 53 bytes an event read (docs/performance.md).
#[derive(Debug, Serialize, Deserialize)]
struct SavedOrder {
    brand: u32,
    channel: Option<u32>,
    country: u32,
    ts: i64,
    /// `None`: not paid yet.
    paid_after: Option<i64>,
}

/// An order as version 1 of the format saved it (still read): names spelled
/// out, times whole, `i64::MAX` while not paid.
#[derive(Debug, Deserialize)]
struct SavedOrderV1<'a> {
    brand: &'a str,
    channel: Option<&'a str>,
    country: &'a str,
    ts_ms: i64,
    first_paid_ms: i64,
}

impl SavedOrder {
    /// The order, its times from `base_ms` and its names from the numbers
    /// its chunk gave them (`numbered`: the process's id of each, by dimension).
    fn info(&self, base_ms: i64, numbered: &[Vec<u32>; 3]) -> Result<OrderInfo, String> {
        let name = |dim: usize, n: u32| {
            numbered[dim]
                .get(n as usize)
                .copied()
                .ok_or_else(|| format!("name number {n} of dimension {dim} not given in its chunk"))
        };
        let ts_ms = base_ms.wrapping_add(self.ts);
        Ok(OrderInfo {
            attribution: Attribution {
                brand: name(0, self.brand)?,
                channel: self.channel.map_or(Ok(NO_CHANNEL), |c| name(1, c))?,
                country: name(2, self.country)?,
            },
            ts_ms,
            first_paid_ms: self.paid_after.map_or(i64::MAX, |d| ts_ms.wrapping_add(d)),
        })
    }
}

impl SavedOrderV1<'_> {
    /// The order, its names interned.
    fn info(&self, names: &mut [Interner; 3]) -> OrderInfo {
        OrderInfo {
            attribution: Attribution {
                brand: names[0].intern(self.brand),
                channel: self.channel.map_or(NO_CHANNEL, |c| names[1].intern(c)),
                country: names[2].intern(self.country),
            },
            ts_ms: self.ts_ms,
            first_paid_ms: self.first_paid_ms,
        }
    }
}

/// The changelog value of one order id (`O`: the order's format; `W`: a
/// slice written, a `Vec` read). Waiting events keep their times whole: few
/// orders have any.
#[derive(Debug, Serialize, Deserialize)]
struct SavedSlot<O, W> {
    order: Option<O>,
    waiting: W,
}

/// What keeps an order id's value in the state: its order's time and its events' deadlines.
fn slot_marks(order: Option<&OrderInfo>, waiting: &[Waiting]) -> Marks {
    Marks::of_slot(
        order.map(|o| o.ts_ms),
        waiting.iter().map(|x| x.deadline_ms),
    )
}

/// The numbers the names of one chunk have been given, as it is written: by
/// dimension, by the process's name id (0: not given yet, else the number + 1).
struct ChunkNames {
    chunk: u32,
    given: [Vec<u32>; 3],
    count: [u32; 3],
}

impl ChunkNames {
    fn new(names: &[Interner; 3]) -> Self {
        ChunkNames {
            chunk: 0,
            given: std::array::from_fn(|d| vec![0; names[d].len()]),
            count: [0; 3],
        }
    }

    /// Forgets the numbers given if the writer is in another chunk now: call
    /// before [`ChunkNames::number`] for each entry.
    fn follow<F: FnMut(&[u8], &[u8])>(&mut self, w: &BatchWriter<'_, F>) {
        if w.chunk() != self.chunk {
            self.chunk = w.chunk();
            self.given.iter_mut().for_each(|g| g.fill(0));
            self.count = [0; 3];
        }
    }

    /// The number of name `id` of dimension `dim` in the writer's chunk,
    /// given it (with a [`NAME`] entry) if it has none there yet.
    fn number<F: FnMut(&[u8], &[u8])>(
        &mut self,
        w: &mut BatchWriter<'_, F>,
        names: &[Interner; 3],
        dim: usize,
        id: u32,
    ) -> u32 {
        let given = &mut self.given[dim][id as usize];
        if *given == 0 {
            w.put(NAME, &(dim as u8, names[dim].name(id)));
            self.count[dim] += 1;
            *given = self.count[dim];
        }
        *given - 1
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

/// Kinds of the entries of a changelog batch. An order id's value in full:
/// its order (if any) and the events waiting for it, or its removal.
const ORDER: u8 = b'o';
/// An order id holding an order with nothing waiting, the most common value:
/// the order alone, three bytes shorter than as an [`ORDER`] (version 4).
const PLACED: u8 = b'O';
/// An order's first payment time alone, from the chunk's base time, for an
/// order written before (version 4).
const FIRST_PAID: u8 = b'f';
const PAYMENT_ID: u8 = b'p';
const DELIVERY_ID: u8 = b'd';
/// The next number of a dimension's names in its chunk: (dimension, name).
const NAME: u8 = b'n';
const CLOCK_KEY: &[u8] = b"~clock";
/// The keys of the three stores' fingerprints (orders, payment ids, delivery
/// ids), which the entries name their ids by. Written once, in the task's
/// first commit, and never again; it sorts before every batch key, so a
/// restore, in key order, reads it first.
const SEEDS_KEY: &[u8] = b"keys";

impl AttributionTask {
    /// Hands every state change since the last call to `f` as changelog
    /// records: tombstones for batches no longer needed, then this transaction's
    /// batch (see [`batch_log`]), then the clocks.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
        if !std::mem::replace(&mut self.seeds_saved, true) {
            let seeds = (
                self.joins.seeds(),
                self.payment_ids.seeds(),
                self.delivery_ids.seeds(),
            );
            f(SEEDS_KEY, Some(&state::encode(&seeds)));
        }
        self.log.drop_dead(&self.horizon, |key| f(key, None));
        // Pinned entries go into this batch again, as they are now.
        let pinned = std::mem::take(&mut self.pinned);
        for &(kind, fp) in &pinned {
            match kind {
                ORDER => self.joins.touch(fp),
                PAYMENT_ID => self.payment_ids.touch(fp),
                _ => self.delivery_ids.touch(fp),
            }
        }
        let pin_after = self.now_ms.saturating_add(PIN_AHEAD_MS);
        let (names, pinned) = (&*self.names.borrow(), &mut self.pinned);
        let mut counted =
            |kind, fp, marks: Marks| unless_pinned(pinned, pin_after, kind, fp, marks);
        // Entries' times are written from the latest event time: most are near it.
        let base_ms = match self.wm.max_event_ms() {
            i64::MIN => self.now_ms,
            t => t,
        };
        let mut w = self
            .log
            .writer(&self.horizon, base_ms, |k, v| f(k, Some(v)));
        let mut numbers = ChunkNames::new(names);
        self.joins.drain_changes(|fp, change| {
            let id = &fp.to_bytes();
            let (order, waiting) = match change {
                SlotChange::Removed => {
                    let marks = counted(ORDER, fp, Marks::default());
                    return w.entry(ORDER, &(id, None::<()>), marks);
                }
                SlotChange::FirstPaid(o) => {
                    let marks = counted(ORDER, fp, slot_marks(Some(&o), &[]));
                    let after_base = o.first_paid_ms.wrapping_sub(base_ms);
                    return w.entry(FIRST_PAID, &(id, after_base), marks);
                }
                SlotChange::Slot(order, waiting) => (order, waiting),
            };
            let marks = counted(ORDER, fp, slot_marks(order.as_ref(), waiting));
            numbers.follow(&w);
            let order = order.map(|o| {
                let a = o.attribution;
                SavedOrder {
                    brand: numbers.number(&mut w, names, 0, a.brand),
                    channel: (a.channel != NO_CHANNEL)
                        .then(|| numbers.number(&mut w, names, 1, a.channel)),
                    country: numbers.number(&mut w, names, 2, a.country),
                    ts: o.ts_ms.wrapping_sub(base_ms),
                    paid_after: (o.first_paid_ms != i64::MAX)
                        .then(|| o.first_paid_ms.wrapping_sub(o.ts_ms)),
                }
            });
            match order {
                Some(order) if waiting.is_empty() => w.entry(PLACED, &(id, order), marks),
                order => w.entry(ORDER, &(id, Some(SavedSlot { order, waiting })), marks),
            }
        });
        for (kind, ids) in [
            (PAYMENT_ID, &mut self.payment_ids),
            (DELIVERY_ID, &mut self.delivery_ids),
        ] {
            ids.drain_changes(|fp, seen_ms| {
                let marks = counted(kind, fp, Marks::of_id(seen_ms));
                let since_base = seen_ms.map(|t| t.wrapping_sub(base_ms));
                w.entry(kind, &(fp.to_bytes(), since_base), marks);
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
        if key == SEEDS_KEY {
            let (orders, payments, deliveries): (Seeds, Seeds, Seeds) =
                state::decode(value).map_err(|e| format!("changelog keys: {e}"))?;
            let taken = self.joins.set_seeds(orders)
                & self.payment_ids.set_seeds(payments)
                & self.delivery_ids.set_seeds(deliveries);
            if !taken {
                return Err("changelog keys after ids were restored".into());
            }
            self.seeds_saved = true;
            return Ok(());
        }
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
        let body = batch_log::body(value)?;
        let base_ms = body.base_ms;
        // The process's id of each name the chunk numbered, by dimension.
        let mut numbered: [Vec<u32>; 3] = Default::default();
        let mut rest = body.entries;
        while let Some((&kind, entry)) = rest.split_first() {
            let e = |e: postcard::Error| format!("entry of kind {:?}: {e}", kind as char);
            let (id, entry_marks, after) = match kind {
                NAME => {
                    let ((dim, name), after) = batch_log::take::<(u8, &str)>(entry).map_err(e)?;
                    let names = &mut *self.names.borrow_mut();
                    let Some(interner) = names.get_mut(dim as usize) else {
                        return Err(format!("name {name:?} of unknown dimension {dim}"));
                    };
                    numbered[dim as usize].push(interner.intern(name));
                    rest = after;
                    continue;
                }
                ORDER | PLACED | FIRST_PAID | PAYMENT_ID | DELIVERY_ID => {
                    let (fp, entry) = match body.version {
                        batch_log::VERSION_1 | batch_log::VERSION_2 => {
                            let (id, entry) = batch_log::take::<&str>(entry).map_err(e)?;
                            let fp = match kind {
                                PAYMENT_ID => self.payment_ids.fingerprint(id),
                                DELIVERY_ID => self.delivery_ids.fingerprint(id),
                                _ => self.joins.fingerprint(id),
                            };
                            (fp, entry)
                        }
                        _ => {
                            let (b, entry) = batch_log::take::<[u8; 10]>(entry).map_err(e)?;
                            let fp = Fingerprint::from_bytes(b)
                                .ok_or("an entry names no id (a free slot's fingerprint)")?;
                            (fp, entry)
                        }
                    };
                    let (entry_marks, after) = match kind {
                        PAYMENT_ID | DELIVERY_ID => {
                            let (ts, after) = batch_log::take::<Option<i64>>(entry).map_err(e)?;
                            let ts = ts.map(|t| base_ms.wrapping_add(t));
                            match kind {
                                PAYMENT_ID => self.payment_ids.restore(fp, ts),
                                _ => self.delivery_ids.restore(fp, ts),
                            }
                            (Marks::of_id(ts), after)
                        }
                        _ => self
                            .restore_order(kind, body.version, base_ms, &numbered, fp, entry)
                            .map_err(|m| format!("order {fp:?}: {m}"))?,
                    };
                    (fp, entry_marks, after)
                }
                other => return Err(format!("unknown entry kind {:?}", other as char)),
            };
            // Orders are pinned as [`ORDER`]s, whichever kind they were written as.
            let pinned_as = if kind == PAYMENT_ID || kind == DELIVERY_ID {
                kind
            } else {
                ORDER
            };
            marks.merge(&unless_pinned(
                &mut self.pinned,
                pin_after,
                pinned_as,
                id,
                entry_marks,
            ));
            rest = after;
        }
        Ok(marks)
    }

    /// Puts back the order id of `fp` from the entry of `kind` at the start
    /// of `entry` (in the format of batch `version`); its marks, and what
    /// follows it.
    fn restore_order<'a>(
        &mut self,
        kind: u8,
        version: u8,
        base_ms: i64,
        numbered: &[Vec<u32>; 3],
        fp: Fingerprint,
        entry: &'a [u8],
    ) -> Result<(Marks, &'a [u8]), String> {
        let e = |e: postcard::Error| e.to_string();
        if kind == FIRST_PAID {
            let (after_base, after) = batch_log::take::<i64>(entry).map_err(e)?;
            let order = self
                .joins
                .restore_first_paid(fp, base_ms.wrapping_add(after_base));
            return Ok((slot_marks(order.as_ref(), &[]), after));
        }
        if kind == PLACED {
            let (order, after) = batch_log::take::<SavedOrder>(entry).map_err(e)?;
            let order = order.info(base_ms, numbered)?;
            self.joins.restore(fp, Some((Some(order), Vec::new())));
            return Ok((slot_marks(Some(&order), &[]), after));
        }
        let (slot, after) = if version == batch_log::VERSION_1 {
            let (slot, after) =
                batch_log::take::<Option<SavedSlot<SavedOrderV1, Vec<Waiting>>>>(entry)
                    .map_err(e)?;
            let names = &mut *self.names.borrow_mut();
            (
                slot.map(|s| (s.order.map(|o| o.info(names)), s.waiting)),
                after,
            )
        } else {
            let (slot, after) =
                batch_log::take::<Option<SavedSlot<SavedOrder, Vec<Waiting>>>>(entry).map_err(e)?;
            let slot = slot
                .map(|s| {
                    let order = s.order.map(|o| o.info(base_ms, numbered)).transpose()?;
                    Ok::<_, String>((order, s.waiting))
                })
                .transpose()?;
            (slot, after)
        };
        let marks = slot
            .as_ref()
            .map_or(Marks::default(), |(o, w)| slot_marks(o.as_ref(), w));
        self.joins.restore(fp, slot);
        Ok((marks, after))
    }
}

/// The marks an entry adds to its batch: none when its times lie beyond
/// `pin_after` and it is pinned instead (see `PIN_AHEAD_MS`).
#[inline]
fn unless_pinned(
    pinned: &mut FastSet<(u8, Fingerprint)>,
    pin_after: i64,
    kind: u8,
    fp: Fingerprint,
    marks: Marks,
) -> Marks {
    if marks.latest().is_some_and(|t| t > pin_after) && pinned.len() < MAX_PINNED {
        pinned.insert((kind, fp));
        return Marks::default();
    }
    marks
}
