//! Stage one, per input partition number: decode, lateness, de-duplication,
//! the join of payments and deliveries with their orders, and partial sums per
//! dimension key and 1-second bucket. Co-partitioning keeps all of it local;
//! the partial sums go to the aggregation stage, keyed by dimension.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch_log::{self, BatchLog, Horizon, Marks};
use super::engine::{EngineConfig, Stats};
use super::fx::FxTable;
use super::join::{
    Attach, Attribution, Dedup, JoinState, Joinable, OrderInfo, Waiting, NO_CHANNEL,
};
use super::milestone::BUCKET_MS;
use super::output::{DeadLetter, Dim, Output, DEAD_LETTER_KEY_BYTES, DEAD_LETTER_PAYLOAD_BYTES};
use super::state::{self, Delta, PartialEntry, Progress};
use super::watermark::{PartitionId, Watermarks};
use super::{FastMap, FastSet};
use crate::decode::{decode, Rejection, MIN_EVENT_MS};
use crate::model::{
    DeadReason, Delivery, DeliveryStatus, Event, InputTopic, Order, Payment, PaymentKind, Source,
};

/// Key of the `total` dimension, and of orphans in `brand` and `country`.
pub const TOTAL_KEY: &str = "all";
/// An orphan's attribution: unknown keys are id 0 in `brand` and `country`; it has no channel.
const UNKNOWN: Attribution = Attribution {
    brand: 0,
    channel: NO_CHANNEL,
    country: 0,
};
pub const UNKNOWN_KEY: &str = "unknown";

/// What a payment or delivery adds once attributed.
#[derive(Debug, Clone, Copy)]
enum Contribution {
    Paid(i64),
    Refund(i64),
    Placed,
    Shipped,
    Delivered,
}

impl Contribution {
    fn of(what: Joinable) -> Self {
        match what {
            Joinable::Payment {
                kind: PaymentKind::Paid,
                amount_fen,
            } => Contribution::Paid(amount_fen),
            Joinable::Payment {
                kind: PaymentKind::Refund,
                amount_fen,
            } => Contribution::Refund(amount_fen),
            Joinable::Delivery {
                status: DeliveryStatus::Shipped,
            } => Contribution::Shipped,
            Joinable::Delivery {
                status: DeliveryStatus::Delivered,
            } => Contribution::Delivered,
        }
    }

    fn add_to(self, d: &mut Delta) {
        match self {
            Contribution::Paid(fen) => {
                d.gmv_fen += fen as i128;
                d.paid_orders += 1;
            }
            Contribution::Refund(fen) => d.refund_fen += fen as i128,
            Contribution::Placed => d.placed_orders += 1,
            Contribution::Shipped => d.shipped_orders += 1,
            Contribution::Delivered => d.delivered_orders += 1,
        }
    }
}

/// Dimension key names to small ids, so hot maps hash integers.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: FastMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    pub(crate) fn id(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

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

/// Stage one for one input partition number (the same partition of all three input topics).
#[derive(Debug)]
pub struct AttributionTask {
    partition: i32,
    cfg: Arc<EngineConfig>,
    fx: FxTable,
    wm: Watermarks,
    /// Brand, channel and country names.
    names: [Interner; 3],
    joins: JoinState,
    payment_ids: Dedup,
    delivery_ids: Dedup,
    /// Partial sums since the last `take_partials`: (dim, key id, bucket start) → delta.
    partials: FastMap<(Dim, u32, i64), Delta>,
    last_sweep_watermark_ms: i64,
    /// Per input topic, the offset after the last record processed (`None`: none yet).
    next_offsets: [Option<i64>; 3],
    now_ms: i64,
    /// Interned id of each two-letter country code, `u32::MAX` until seen.
    country_ids: Box<[u32; 26 * 26]>,
    clock_changed: bool,
    /// The changelog's live batches, and what the state has forgotten since.
    log: BatchLog,
    horizon: Horizon,
    /// Entries written at every commit rather than left to hold their batch
    /// (see [`PIN_AHEAD_MS`]), by kind and id.
    pinned: FastSet<(u8, compact_str::CompactString)>,
}

impl AttributionTask {
    pub fn new(partition: i32, cfg: Arc<EngineConfig>, now_ms: i64) -> Self {
        let mut wm = Watermarks::new(cfg.time.max_out_of_orderness_ms, cfg.time.idle_timeout_ms);
        let parts: Vec<PartitionId> = InputTopic::ALL.iter().map(|t| (*t, partition)).collect();
        wm.assign(&parts, now_ms);
        let mut names: [Interner; 3] = Default::default();
        names[0].intern(UNKNOWN_KEY);
        names[2].intern(UNKNOWN_KEY);
        let log = BatchLog::new(batch_log::chunk_bytes(cfg.max_record_bytes));
        AttributionTask {
            partition,
            fx: FxTable::new(&cfg.fx),
            cfg,
            wm,
            names,
            joins: JoinState::default(),
            payment_ids: Dedup::default(),
            delivery_ids: Dedup::default(),
            partials: FastMap::default(),
            last_sweep_watermark_ms: i64::MIN,
            next_offsets: [None; 3],
            now_ms,
            country_ids: Box::new([u32::MAX; 26 * 26]),
            clock_changed: false,
            log,
            horizon: Horizon::default(),
            pinned: FastSet::default(),
        }
    }

    /// Records every state change from now on, for [`AttributionTask::drain_changes`].
    pub fn track_changes(&mut self) {
        self.joins.track_changes();
        self.payment_ids.track_changes();
        self.delivery_ids.track_changes();
    }

    /// Sizes the order store and the payment-id set for `orders` at once, so they
    /// do not grow (and copy every entry) while they fill; false if the memory
    /// was refused (they then grow as needed).
    pub fn reserve(&mut self, orders: usize) -> bool {
        self.joins.reserve(orders) && self.payment_ids.reserve(orders)
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn watermark_ms(&self) -> i64 {
        self.wm.current_ms()
    }

    pub fn progress(&self) -> Progress {
        Progress {
            watermark_ms: self.wm.current_ms(),
            max_event_ms: self.wm.max_event_ms(),
            idle: self.wm.all_idle(),
        }
    }

    /// (partitions, of which idle).
    pub fn partitions(&self) -> (usize, usize) {
        (self.wm.partition_count(), self.wm.idle_count())
    }

    /// Per input topic, the offset to commit: after the last record processed.
    pub fn next_offsets(&self) -> [Option<i64>; 3] {
        self.next_offsets
    }

    /// (orders, waiting events, de-duplication ids) held.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.joins.order_count(),
            self.joins.waiting_count(),
            self.payment_ids.len() + self.delivery_ids.len(),
        )
    }

    /// Processes one input record: decodes it, and either counts it or dead-letters it.
    pub fn on_record(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        self.next_offsets[source.topic.index()] = Some(source.offset + 1);
        stats.events_read[source.topic.index()] += 1;
        let Some(value) = value else {
            self.dead_letter(
                source,
                key,
                &[],
                DeadReason::MalformedJson,
                "record has no value".into(),
                stats,
                out,
            );
            return;
        };
        let checked =
            decode(source.topic, value, &self.fx).and_then(|ev| self.check(key, &ev).map(|()| ev));
        match checked {
            Ok(ev) => self.on_event(source, key, value, ev, stats, out),
            Err(r) => self.dead_letter(source, key, value, r.reason, r.detail, stats, out),
        }
    }

    /// The contract's checks that need more than the value: the record's key
    /// is its `order_id` (a record keyed otherwise may sit on another partition
    /// than its order, and its join would silently fail), and its event time is
    /// neither before 2000 (seconds, not milliseconds) nor more than
    /// `max_future` ahead of the wall clock (one such record would move the
    /// watermark and make every other record late).
    fn check(&self, key: Option<&[u8]>, ev: &Event<'_>) -> Result<(), Rejection> {
        let invalid = |detail: String| Rejection {
            reason: DeadReason::InvalidField,
            detail,
        };
        let order_id = ev.order_id();
        match key {
            None => {
                return Err(invalid(format!(
                    "the record has no key; input records are keyed by their `order_id` (`{order_id}`)"
                )))
            }
            Some(k) if k != order_id.as_bytes() => {
                return Err(invalid(format!(
                    "the record's key ({} bytes) differs from its `order_id` `{order_id}`: it may sit on another partition than its order",
                    k.len()
                )))
            }
            Some(_) => {}
        }
        let ts = ev.ts_ms();
        if ts < MIN_EVENT_MS {
            return Err(invalid(format!(
                "`ts_ms` {ts} is before 2000-01-01 ({MIN_EVENT_MS}): seconds instead of milliseconds?"
            )));
        }
        let ahead = ts.saturating_sub(self.now_ms);
        if ahead > self.cfg.time.max_future_ms {
            return Err(invalid(format!(
                "`ts_ms` {ts} is {ahead} ms ahead of the job's clock (time.max_future_ms is {}): the producer's clock is wrong",
                self.cfg.time.max_future_ms
            )));
        }
        Ok(())
    }

    /// `part` has records fetched and waiting: not idle (see [`Watermarks::touch`]).
    pub fn touch(&mut self, part: PartitionId, now_ms: i64) {
        self.wm.touch(part, now_ms);
    }

    /// Wall-clock tick: idleness; when every partition of the task is idle, the
    /// after-the-sale flush (joins time out as if the watermark had passed them).
    pub fn on_tick(&mut self, now_ms: i64, stats: &mut Stats) {
        self.now_ms = now_ms;
        if self.wm.on_tick(now_ms) {
            self.advance(stats);
        }
        if self.wm.all_idle() {
            let max_ts = self.wm.max_event_ms();
            if max_ts == i64::MIN {
                return;
            }
            let t = &self.cfg.time;
            let target = flush_target(max_ts, &self.cfg.window_sizes_ms)
                .saturating_add(t.allowed_lateness_ms.max(t.join_timeout_ms));
            if self.wm.advance_to(target) {
                tracing::info!(
                    partition = self.partition,
                    watermark_ms = target,
                    "every input partition of the task is idle: closing what it holds (the after-the-sale flush)"
                );
                self.advance(stats);
            }
        }
    }

    /// Partial sums since the last call, with names. In this task's key order
    /// (by interned id): sums add up in any order, so names need not be compared.
    pub fn take_partials(&mut self) -> Vec<PartialEntry> {
        self.take_partial_ids()
            .into_iter()
            .map(|(dim, id, bucket_ms, delta)| PartialEntry {
                dim,
                key: self.key_name(dim, id).into(),
                bucket_ms,
                delta,
            })
            .collect()
    }

    /// [`AttributionTask::take_partials`] with this task's key ids instead of names.
    fn take_partial_ids(&mut self) -> Vec<(Dim, u32, i64, Delta)> {
        let mut keyed: Vec<_> = self
            .partials
            .drain()
            .map(|((dim, id, bucket_ms), delta)| (dim, id, bucket_ms, delta))
            .collect();
        keyed.sort_unstable_by_key(|&(dim, id, bucket_ms, _)| (dim, id, bucket_ms));
        keyed
    }

    /// The name of this task's key id `id` in `dim`.
    fn key_name(&self, dim: Dim, id: u32) -> &str {
        match dim {
            Dim::Total => TOTAL_KEY,
            d => self.names[d.index() - 1].name(id),
        }
    }

    #[allow(clippy::too_many_arguments)] // the record's parts, as they come
    fn dead_letter(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: &[u8],
        reason: DeadReason,
        detail: String,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        stats.dead_letters[reason.index()] += 1;
        out.push(Output::DeadLetter(DeadLetter {
            source,
            topic_name: self.cfg.input_topic_names[source.topic.index()].clone(),
            reason,
            detail,
            key: key.map(|k| k[..k.len().min(DEAD_LETTER_KEY_BYTES)].to_vec()),
            payload: value[..value.len().min(DEAD_LETTER_PAYLOAD_BYTES)].to_vec(),
        }));
    }

    fn on_event(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: &[u8],
        ev: Event<'_>,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let ts = ev.ts_ms();
        let lateness = self.cfg.time.allowed_lateness_ms;
        let w = self.wm.current_ms();
        let part = (source.topic, source.partition);
        if ts < w.saturating_sub(lateness) {
            // A late event still shows its partition is alive; bad records do not.
            self.wm.observe(part, ts, self.now_ms);
            stats.late_events[source.topic.index()] += 1;
            let detail = format!(
                "ts_ms {ts} is more than allowed_lateness ({lateness} ms) behind the watermark {w}; its windows are closed"
            );
            self.dead_letter(source, key, value, DeadReason::Late, detail, stats, out);
            return;
        }
        let moved = self.wm.observe(part, ts, self.now_ms);
        self.clock_changed = true;
        match ev {
            Event::Order(o) => self.on_order(o, stats, out),
            Event::Payment(p) => self.on_payment(p, stats, out),
            Event::Delivery(d) => self.on_delivery(d, stats, out),
        }
        if moved {
            self.advance(stats);
        }
    }

    fn on_order(&mut self, o: Order<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
        let attribution = Attribution {
            brand: self.names[0].intern(&o.brand_id),
            channel: o
                .channel_id
                .as_deref()
                .map_or(NO_CHANNEL, |c| self.names[1].intern(c)),
            country: self.country_id(&o.country),
        };
        let info = OrderInfo {
            attribution,
            ts_ms: o.ts_ms,
            first_paid_ms: i64::MAX,
        };
        let Ok((order, released)) =
            self.joins
                .insert_order(&o.order_id, info, self.cfg.time.dedup_ttl_ms)
        else {
            stats.duplicates[InputTopic::Orders.index()] += 1;
            return;
        };
        stats.placed_orders += 1;
        self.add(Dim::Total, 0, o.ts_ms, Contribution::Placed);
        self.apply_attributed(attribution, o.ts_ms, Contribution::Placed);
        // `order` carries the released payments' first paid time: a delivery that
        // waited too measures pay-to-delivery from it.
        for w in released {
            self.resolve(order, w, out);
        }
    }

    fn on_payment(&mut self, p: Payment<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
        if !self
            .payment_ids
            .first_copy(&p.payment_id, p.ts_ms, self.cfg.time.dedup_ttl_ms)
        {
            stats.duplicates[InputTopic::Payments.index()] += 1;
            return;
        }
        let c = match p.kind {
            PaymentKind::Paid => {
                stats.paid_fen += p.amount_fen as i128;
                stats.paid_orders += 1;
                Contribution::Paid(p.amount_fen)
            }
            PaymentKind::Refund => {
                stats.refunded_fen += p.amount_fen as i128;
                Contribution::Refund(p.amount_fen)
            }
        };
        // The total never waits for the join.
        self.add(Dim::Total, 0, p.ts_ms, c);
        let what = Joinable::Payment {
            kind: p.kind,
            amount_fen: p.amount_fen,
        };
        self.attribute_or_wait(&p.order_id, p.ts_ms, what, stats, out);
    }

    fn on_delivery(&mut self, d: Delivery<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
        if !self
            .delivery_ids
            .first_copy(&d.delivery_id, d.ts_ms, self.cfg.time.dedup_ttl_ms)
        {
            stats.duplicates[InputTopic::Deliveries.index()] += 1;
            return;
        }
        let c = match d.status {
            DeliveryStatus::Shipped => {
                stats.shipped_orders += 1;
                Contribution::Shipped
            }
            DeliveryStatus::Delivered => {
                stats.delivered_orders += 1;
                Contribution::Delivered
            }
        };
        self.add(Dim::Total, 0, d.ts_ms, c);
        let what = Joinable::Delivery { status: d.status };
        self.attribute_or_wait(&d.order_id, d.ts_ms, what, stats, out);
    }

    /// Country codes are two upper-case letters (checked by `decode`): a table beats hashing.
    fn country_id(&mut self, code: &str) -> u32 {
        let slot = match code.as_bytes() {
            [x @ b'A'..=b'Z', y @ b'A'..=b'Z'] => (x - b'A') as usize * 26 + (y - b'A') as usize,
            _ => return self.names[2].intern(code),
        };
        if self.country_ids[slot] == u32::MAX {
            self.country_ids[slot] = self.names[2].intern(code);
        }
        self.country_ids[slot]
    }

    /// Attributes a payment or delivery to its order's keys now, or parks it until the order arrives.
    fn attribute_or_wait(
        &mut self,
        order_id: &str,
        ts_ms: i64,
        what: Joinable,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let w = Waiting {
            ts_ms,
            deadline_ms: ts_ms + self.cfg.time.join_timeout_ms,
            what,
        };
        match self.joins.attach(order_id, w) {
            Attach::Joined(order) => self.resolve(order, w, out),
            Attach::Parked => {}
            Attach::Full => {
                stats.join_overflows[w.what.topic().index()] += 1;
                self.apply_attributed(UNKNOWN, ts_ms, Contribution::of(w.what));
            }
        }
    }

    /// Attributes a payment or delivery to its order's keys (`order` as it is
    /// now, the event already attached to it).
    fn resolve(&mut self, order: OrderInfo, w: Waiting, out: &mut Vec<Output>) {
        let delivered = matches!(
            w.what,
            Joinable::Delivery {
                status: DeliveryStatus::Delivered
            }
        );
        if delivered && order.first_paid_ms != i64::MAX {
            out.push(Output::PayToDelivery {
                millis: w.ts_ms - order.first_paid_ms,
            });
        }
        self.apply_attributed(order.attribution, w.ts_ms, Contribution::of(w.what));
    }

    fn apply_attributed(&mut self, a: Attribution, ts_ms: i64, c: Contribution) {
        self.add(Dim::Brand, a.brand, ts_ms, c);
        self.add(Dim::Country, a.country, ts_ms, c);
        if a.channel != NO_CHANNEL {
            self.add(Dim::Channel, a.channel, ts_ms, c);
        }
    }

    fn add(&mut self, dim: Dim, key: u32, ts_ms: i64, c: Contribution) {
        let bucket = ts_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        c.add_to(self.partials.entry((dim, key, bucket)).or_default());
    }

    /// The watermark moved: time out joins, and forget what no event can match any more.
    fn advance(&mut self, stats: &mut Stats) {
        self.clock_changed = true;
        let w = self.wm.current_ms();
        let mut expired = Vec::new();
        self.joins.expire(w, |x| expired.push(x));
        self.horizon.expiries += 1;
        self.horizon.expired_to_ms = w;
        for x in expired {
            stats.join_timeouts[x.what.topic().index()] += 1;
            self.apply_attributed(UNKNOWN, x.ts_ms, Contribution::of(x.what));
        }
        let limit = w.saturating_sub(self.cfg.time.allowed_lateness_ms);
        let every = (self.cfg.time.dedup_ttl_ms / 4).max(1_000);
        if self.last_sweep_watermark_ms != i64::MIN && limit - self.last_sweep_watermark_ms < every
        {
            return;
        }
        self.last_sweep_watermark_ms = limit;
        let ids_before = limit.saturating_sub(self.cfg.time.dedup_ttl_ms);
        self.payment_ids.sweep(ids_before);
        self.delivery_ids.sweep(ids_before);
        let orders_before = limit.saturating_sub(self.cfg.time.order_ttl_ms);
        self.joins.sweep_orders(orders_before);
        self.horizon.sweeps += 1;
        self.horizon.orders_before_ms = orders_before;
        self.horizon.ids_before_ms = ids_before;
    }

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
        let (names, pinned) = (&self.names, &mut self.pinned);
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

    /// Entries re-written at every commit (see [`PIN_AHEAD_MS`]).
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
                    let slot = slot.map(|s| {
                        let order = s.order.map(|o| OrderInfo {
                            attribution: Attribution {
                                brand: self.names[0].intern(o.brand),
                                channel: o.channel.map_or(NO_CHANNEL, |c| self.names[1].intern(c)),
                                country: self.names[2].intern(o.country),
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
/// `pin_after` and it is pinned instead (see [`PIN_AHEAD_MS`]).
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

/// End of the last window or bucket holding `max_ts`: where the after-the-sale flush starts.
pub(crate) fn flush_target(max_ts: i64, window_sizes_ms: &[Vec<i64>; 4]) -> i64 {
    window_sizes_ms
        .iter()
        .flatten()
        .chain([&BUCKET_MS])
        .map(|s| max_ts.div_euclid(*s) * s + s)
        .max()
        .unwrap_or(max_ts + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(topic: InputTopic, offset: i64) -> Source {
        Source {
            topic,
            partition: 2,
            offset,
        }
    }

    /// Test times are relative to 2024-11-11T00:00:00Z: the contract rejects
    /// event times before 2000 and ahead of the wall clock, which is `NOW`.
    const T0: i64 = 1_731_283_200_000;
    const NOW: i64 = T0 + 100_000_000;

    /// Feeds `value` with its `ts_ms` moved by `T0`, keyed by its `order_id`.
    fn feed(
        a: &mut AttributionTask,
        topic: InputTopic,
        offset: i64,
        value: &[u8],
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let mut v: serde_json::Value = serde_json::from_slice(value).unwrap();
        v["ts_ms"] = (T0 + v["ts_ms"].as_i64().unwrap()).into();
        let key = v["order_id"].as_str().unwrap().to_string();
        let value = serde_json::to_vec(&v).unwrap();
        a.on_record(
            src(topic, offset),
            Some(key.as_bytes()),
            Some(&value),
            stats,
            out,
        );
    }

    #[test]
    fn state_round_trips_through_the_changelog() {
        let cfg = Arc::new(EngineConfig::default());
        let mut a = AttributionTask::new(2, cfg.clone(), NOW);
        a.track_changes();
        let (mut stats, mut out) = (Stats::default(), vec![]);
        let order = br#"{"order_id":"o1","user_id":"u","brand_id":"b1","channel_id":"c1","country":"FR","device":"pc","currency":"EUR","amount_minor":100,"ts_ms":10000}"#;
        let pay = br#"{"payment_id":"p1","order_id":"o1","kind":"paid","currency":"EUR","amount_minor":100,"ts_ms":11000}"#;
        let early = br#"{"payment_id":"p2","order_id":"o2","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":12000}"#;
        let ship = br#"{"delivery_id":"d1","order_id":"o1","status":"shipped","ts_ms":13000}"#;
        feed(&mut a, InputTopic::Orders, 0, order, &mut stats, &mut out);
        feed(&mut a, InputTopic::Payments, 0, pay, &mut stats, &mut out);
        feed(&mut a, InputTopic::Payments, 1, early, &mut stats, &mut out);
        feed(
            &mut a,
            InputTopic::Deliveries,
            0,
            ship,
            &mut stats,
            &mut out,
        );
        let changes = a.take_changes();
        assert_eq!(
            changes.len(),
            2,
            "one batch (o1, o2, p1, p2, d1) and the clock"
        );

        let mut b = AttributionTask::new(2, cfg, NOW);
        for (k, v) in &changes {
            b.restore(k, v.as_deref().unwrap()).unwrap();
        }
        assert_eq!(b.sizes(), a.sizes());
        assert_eq!(b.watermark_ms(), a.watermark_ms());
        assert_eq!(
            b.joins.order("o1").map(|o| o.first_paid_ms),
            Some(T0 + 11_000)
        );
        assert_eq!(
            b.names[1].name(b.joins.order("o1").unwrap().attribution.channel),
            "c1"
        );
        // The restored task knows the duplicates and releases the waiting payment to its order.
        a.take_partials();
        for t in [&mut a, &mut b] {
            feed(t, InputTopic::Payments, 2, pay, &mut stats, &mut out);
            let o2 = br#"{"order_id":"o2","user_id":"u","brand_id":"b2","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":12500}"#;
            feed(t, InputTopic::Orders, 1, o2, &mut stats, &mut out);
        }
        let by_name = |mut v: Vec<PartialEntry>| {
            v.sort_by(|x, y| (x.dim, &x.key, x.bucket_ms).cmp(&(y.dim, &y.key, y.bucket_ms)));
            v
        };
        // The restored task interned the names in another order: compare by name.
        let (pa, pb) = (by_name(a.take_partials()), by_name(b.take_partials()));
        assert_eq!(pa, pb);
        assert!(pb.iter().any(|e| e.key == "b2" && e.delta.gmv_fen == 5));
        assert!(
            !pb.iter().any(|e| e.delta.paid_orders > 0 && e.key == "b1"),
            "p1 was a duplicate"
        );
    }

    use std::collections::BTreeMap;

    /// Sums of the partial sums, by (dim, key, bucket).
    type Sums = BTreeMap<(Dim, String, i64), Delta>;

    fn add(sums: &mut Sums, entries: Vec<PartialEntry>) {
        for e in entries {
            let d = sums
                .entry((e.dim, e.key.to_string(), e.bucket_ms))
                .or_default();
            d.gmv_fen += e.delta.gmv_fen;
            d.refund_fen += e.delta.refund_fen;
            d.paid_orders += e.delta.paid_orders;
            d.placed_orders += e.delta.placed_orders;
            d.shipped_orders += e.delta.shipped_orders;
            d.delivered_orders += e.delta.delivered_orders;
        }
    }

    /// Runs `records` through one task without a crash, then again committing
    /// every few hundred records and crashing (losing what is not committed) at
    /// random, each restart restoring the compacted changelog and replaying;
    /// asserts the sums are the same. Returns (crashes, batches written, the
    /// changelog's keys at the end).
    fn crash_and_compare(
        cfg: EngineConfig,
        records: &[crate::gen::traffic::GeneratedRecord],
    ) -> (usize, u64, usize) {
        use rand::{Rng, SeedableRng};
        let cfg = Arc::new(cfg);
        let feed = |t: &mut AttributionTask, i: usize, stats: &mut Stats, out: &mut Vec<Output>| {
            let r = &records[i];
            t.on_record(
                Source {
                    topic: r.topic,
                    partition: 0,
                    offset: i as i64,
                },
                r.key.as_deref().map(str::as_bytes),
                Some(&r.value),
                stats,
                out,
            );
        };
        // The wall clock at the end of the traffic: a live job's, as far as
        // pinning goes (nothing here ticks, so no partition turns idle).
        let now = records.iter().map(|r| r.emit_ms).max().unwrap_or(0);
        let (mut stats, mut out) = (Stats::default(), vec![]);
        let mut want = Sums::new();
        let mut t = AttributionTask::new(0, cfg.clone(), now);
        for i in 0..records.len() {
            feed(&mut t, i, &mut stats, &mut out);
        }
        add(&mut want, t.take_partials());

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut got = Sums::new();
        let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let (mut committed, mut n) = (0, 0);
        let r_topic = |i: usize| records[i].topic.index();
        let mut t = AttributionTask::new(0, cfg.clone(), now);
        t.track_changes();
        let (mut i, mut crashes) = (0, 0);
        while i < records.len() {
            feed(&mut t, i, &mut stats, &mut out);
            i += 1;
            if rng.gen_ratio(1, 300) || i == records.len() {
                add(&mut got, t.take_partials());
                n += 1;
                state::compact_into(&mut changelog, t.take_changes());
                assert_eq!(t.next_offsets()[r_topic(i - 1)], Some(i as i64));
                committed = i;
            } else if rng.gen_ratio(1, 1_000) {
                crashes += 1;
                t = AttributionTask::new(0, cfg.clone(), now);
                for (k, v) in &changelog {
                    t.restore(k, v).unwrap();
                }
                t.track_changes();
                // Every input resumes at its committed offset.
                i = committed;
            }
        }
        let diff: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| format!("{k:?}: want {v:?} got {:?}", got.get(k)))
            .collect();
        assert!(diff.is_empty(), "{diff:#?}");
        assert_eq!(want.len(), got.len());
        (crashes, n, changelog.len())
    }

    fn traffic(
        seed: u64,
        n: usize,
        orders_per_sec: f64,
    ) -> Vec<crate::gen::traffic::GeneratedRecord> {
        use crate::gen::traffic::{Traffic, TrafficConfig};
        Traffic::new(TrafficConfig {
            seed,
            orders_per_sec,
            brands: 50,
            ..TrafficConfig::default()
        })
        .take(n)
        .collect()
    }

    #[test]
    fn crashes_between_commits_change_no_sum() {
        let (crashes, _, _) =
            crash_and_compare(EngineConfig::default(), &traffic(11, 40_000, 2_000.0));
        assert!(crashes > 10, "{crashes} crashes");
    }

    /// With TTLs of seconds, orders and ids are swept, payments time out, and
    /// whole batches of the changelog get tombstones while the crashes go on.
    #[test]
    fn crashes_with_short_ttls_change_no_sum_and_the_changelog_stays_small() {
        let mut cfg = EngineConfig::default();
        cfg.time.dedup_ttl_ms = 2_000;
        cfg.time.order_ttl_ms = 3_000;
        cfg.time.join_timeout_ms = 1_000;
        cfg.time.allowed_lateness_ms = 1_000;
        // Deliveries come minutes after payments: without these (for orders that
        // never come) the deliveries partition would hold the watermark back.
        // And one order from a clock a year ahead (accepted only with a
        // time.max_future that large): it is never swept, and must not keep
        // the batches after it from their tombstones.
        cfg.time.max_future_ms = 400 * 86_400_000;
        let mut records = Vec::new();
        for (i, r) in traffic(12, 60_000, 100.0).into_iter().enumerate() {
            if i == 100 {
                records.push(crate::gen::traffic::GeneratedRecord {
                    topic: InputTopic::Orders,
                    key: Some("future".into()),
                    value: format!(
                        r#"{{"order_id":"future","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
                        r.emit_ms + 365 * 86_400_000
                    )
                    .into_bytes(),
                    ..r.clone()
                });
            }
            if i % 200 == 0 {
                records.push(crate::gen::traffic::GeneratedRecord {
                    topic: InputTopic::Deliveries,
                    key: Some(format!("none{i}")),
                    value: format!(
                        r#"{{"delivery_id":"dx{i}","order_id":"none{i}","status":"shipped","ts_ms":{}}}"#,
                        r.emit_ms
                    )
                    .into_bytes(),
                    ..r.clone()
                });
            }
            records.push(r);
        }
        let (crashes, written, kept) = crash_and_compare(cfg, &records);
        assert!(crashes > 10, "{crashes} crashes");
        // 60,000 records of about 30 s of event time; about 4 s of it live at the end.
        assert!(
            kept * 4 < written as usize,
            "{kept} changelog keys kept of {written} batches written"
        );
    }

    #[test]
    fn forgotten_ids_are_removal_entries_and_dead_batches_tombstones() {
        let mut cfg = EngineConfig::default();
        cfg.time.dedup_ttl_ms = 1_000;
        cfg.time.order_ttl_ms = 1_000;
        let cfg = Arc::new(cfg);
        let mut a = AttributionTask::new(2, cfg.clone(), NOW);
        a.track_changes();
        let (mut stats, mut out) = (Stats::default(), vec![]);
        let pay = |id: &str, ts: i64| {
            format!(
                r#"{{"payment_id":"{id}","order_id":"x{id}","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{ts}}}"#
            )
        };
        let p1 = pay("p1", 1_000);
        feed(
            &mut a,
            InputTopic::Payments,
            0,
            p1.as_bytes(),
            &mut stats,
            &mut out,
        );
        let first = a.take_changes();
        let batch = |c: &[(Vec<u8>, Option<Vec<u8>>)]| {
            c.iter()
                .filter(|(k, v)| k[0] == batch_log::BATCH_PREFIX && v.is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let first_batch = batch(&first);
        assert_eq!(first_batch.len(), 1);
        // Far later on every partition: p1 is forgotten, its payment times out to unknown.
        for t in InputTopic::ALL {
            let v = match t {
                InputTopic::Payments => pay("p9", 10_000_000),
                InputTopic::Orders => r#"{"order_id":"o9","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":10000000}"#.into(),
                InputTopic::Deliveries => r#"{"delivery_id":"d9","order_id":"o9","status":"shipped","ts_ms":10000000}"#.into(),
            };
            feed(&mut a, t, 5, v.as_bytes(), &mut stats, &mut out);
        }
        assert_eq!(stats.join_timeouts[InputTopic::Payments.index()], 1);
        let second = a.take_changes();
        // The first batch held only what is now gone: a tombstone, in the same transaction.
        assert!(
            second.contains(&(first_batch[0].0.clone(), None)),
            "{second:?}"
        );
        // The new batch says p1 and its waiting payment are forgotten: a restore
        // from both batches (as an uncompacted log holds them) does not bring them back.
        let mut b = AttributionTask::new(2, cfg, NOW);
        for (k, v) in first_batch.iter().chain(&batch(&second)) {
            b.restore(k, v.as_deref().unwrap()).unwrap();
        }
        assert_eq!(b.sizes(), a.sizes());
        assert!(b.joins.order("xp1").is_none() && b.payment_ids.len() == 1);
        assert!(b
            .restore(b"op1", b"")
            .unwrap_err()
            .contains("cannot be restored"));
    }

    #[test]
    fn no_changelog_record_exceeds_the_record_limit() {
        // The smallest limit allowed, one order id with the most events waiting
        // (at the largest amounts and times), and many ids of the largest size.
        let cfg = EngineConfig {
            max_record_bytes: crate::config::MIN_MAX_RECORD_BYTES as usize,
            ..EngineConfig::default()
        };
        let mut a = AttributionTask::new(2, Arc::new(cfg), NOW);
        a.track_changes();
        let (mut stats, mut out) = (Stats::default(), vec![]);
        let waiting_for = "w".repeat(64);
        for i in 0..crate::core::join::MAX_WAITING_PER_ORDER + 10 {
            let v = format!(
                r#"{{"payment_id":"{i:064}","order_id":"{waiting_for}","kind":"refund","currency":"CNY","amount_minor":1000000000000,"ts_ms":99999999}}"#
            );
            feed(
                &mut a,
                InputTopic::Payments,
                i as i64,
                v.as_bytes(),
                &mut stats,
                &mut out,
            );
        }
        for i in 0..5_000 {
            let v = format!(
                r#"{{"order_id":"{i:064}","user_id":"u","brand_id":"{i:064}","channel_id":"{i:064}","country":"CN","device":"pc","currency":"CNY","amount_minor":5,"ts_ms":99999999}}"#
            );
            feed(
                &mut a,
                InputTopic::Orders,
                i,
                v.as_bytes(),
                &mut stats,
                &mut out,
            );
        }
        assert_eq!(stats.join_overflows[InputTopic::Payments.index()], 10);
        let changes = a.take_changes();
        assert!(changes.len() > 3, "{} records", changes.len());
        for (k, v) in &changes {
            let size = k.len() + v.as_ref().map_or(0, Vec::len);
            assert!(
                size <= crate::config::MIN_MAX_RECORD_BYTES as usize,
                "{size} bytes"
            );
        }
    }
}
