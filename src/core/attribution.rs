//! Stage one, per input partition number: decode, lateness, de-duplication,
//! the join of payments and deliveries with their orders, and partial sums per
//! dimension key and 1-second bucket. Co-partitioning keeps all of it local;
//! the partial sums go to the aggregation stage, keyed by dimension.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use super::batch_log::{self, BatchLog, Horizon, Marks};
use super::engine::{Ahead, EngineConfig, Stats};
use super::fx::FxTable;
use super::interner::Interner;
use super::join::{
    Attach, Attribution, Dedup, JoinState, Joinable, OrderInfo, Waiting, NO_CHANNEL,
};
use super::milestone::BUCKET_MS;
use super::output::{DeadLetter, Dim, Output, DEAD_LETTER_KEY_BYTES, DEAD_LETTER_PAYLOAD_BYTES};
use super::slab::{Fingerprint, Seeds};
use super::state::{self, Progress};
use super::watermark::{PartitionId, Watermarks};
use super::FastSet;
use crate::decode::{decode, peek_str, FieldName, Rejection, MIN_EVENT_MS};

mod changelog;
mod partials;
use crate::model::{
    DeadReason, Delivery, DeliveryStatus, Event, InputTopic, Order, Payment, PaymentKind, Source,
};
use partials::{Contribution, PartialKey, PartialSums};

/// Key of the `total` dimension, and of orphans in `brand` and `country`.
pub const TOTAL_KEY: &str = "all";
/// An orphan's attribution: unknown keys are id 0 in `brand` and `country`; it has no channel.
const UNKNOWN: Attribution = Attribution {
    brand: 0,
    channel: NO_CHANNEL,
    country: 0,
};
pub const UNKNOWN_KEY: &str = "unknown";

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
}

/// Brand, channel and country names to ids, one table for all the attribution
/// tasks of an engine: the names are the same in every task, and one table
/// stays in cache, where twelve, one a task (an estimated 1.5 MB in all),
/// missed it at every order (docs/performance.md). Shared by handle: the
/// engine runs on one thread. Ids are the process's own, never written anywhere.
pub(crate) type Names = Rc<RefCell<[Interner; 3]>>;

/// A new [`Names`], with the ids every task relies on: [`UNKNOWN_KEY`] is
/// brand and country 0.
pub(crate) fn new_names() -> Names {
    let mut names: [Interner; 3] = Default::default();
    names[0].intern(UNKNOWN_KEY);
    names[2].intern(UNKNOWN_KEY);
    Rc::new(RefCell::new(names))
}

/// Partial sums since they were last taken, one set for all the attribution
/// tasks of an engine: a commit's keys repeat across tasks, and one set
/// holds each once, so it stays in cache and hands on half the entries that
/// one a task did (docs/performance.md). Shared by handle, as [`Names`].
/// A task is dropped only with all the others (they restore from the last
/// commit) or right after a commit, so no task's sums outlive it (`Engine::retain`).
pub(crate) type Partials = Rc<RefCell<PartialSums>>;

/// Takes every partial sum, with its key's name, in key order (by id: the
/// records made of them come out the same every run).
pub(crate) fn take_named(partials: &Partials, names: &Names) -> Vec<state::PartialEntry> {
    let keyed = partials.borrow_mut().take();
    let names = names.borrow();
    keyed
        .into_iter()
        .map(
            |(PartialKey(dim, id, bucket_ms), delta)| state::PartialEntry {
                dim,
                key: match dim {
                    Dim::Total => TOTAL_KEY,
                    d => names[d.index() - 1].name(id),
                }
                .into(),
                bucket_ms,
                delta,
            },
        )
        .collect()
}

/// `a == b`, inlined for the lengths ids have (8 to 16 bytes: two
/// overlapping words), where `==` on slices calls `memcmp` (1.1% of the
/// engine's samples, each record's key against its order id).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let word =
            |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
}

/// Stage one for one input partition number (the same partition of all three input topics).
#[derive(Debug)]
pub struct AttributionTask {
    partition: i32,
    cfg: Arc<EngineConfig>,
    fx: FxTable,
    wm: Watermarks,
    /// Brand, channel and country names: the engine's, shared.
    names: Names,
    joins: JoinState,
    payment_ids: Dedup,
    delivery_ids: Dedup,
    /// Partial sums since they were last taken: the engine's, shared.
    partials: Partials,
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
    /// The sweep under way, if one is (at `last_sweep_watermark_ms`): whether
    /// it counts for the changelog's batches.
    sweep_counted: Option<bool>,
    /// Entries written at every commit rather than left to hold their batch
    /// (see `changelog::PIN_AHEAD_MS`), by kind and id's fingerprint.
    pinned: FastSet<(u8, Fingerprint)>,
    /// Whether the changelog holds the keys of the stores' fingerprints
    /// (written in its first commit, or restored).
    seeds_saved: bool,
}

impl AttributionTask {
    /// A task with a name table and partial sums of its own (tests); an
    /// engine's tasks share them ([`AttributionTask::with_shared`]).
    pub fn new(partition: i32, cfg: Arc<EngineConfig>, now_ms: i64) -> Self {
        Self::with_shared(partition, cfg, now_ms, new_names(), Partials::default())
    }

    pub(crate) fn with_shared(
        partition: i32,
        cfg: Arc<EngineConfig>,
        now_ms: i64,
        names: Names,
        partials: Partials,
    ) -> Self {
        let mut wm = Watermarks::new(cfg.time.max_out_of_orderness_ms, cfg.time.idle_timeout_ms);
        let parts: Vec<PartitionId> = InputTopic::ALL.iter().map(|t| (*t, partition)).collect();
        wm.assign(&parts, now_ms);
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
            partials,
            last_sweep_watermark_ms: i64::MIN,
            next_offsets: [None; 3],
            now_ms,
            country_ids: Box::new([u32::MAX; 26 * 26]),
            clock_changed: false,
            log,
            horizon: Horizon::default(),
            sweep_counted: None,
            pinned: FastSet::default(),
            seeds_saved: false,
        }
    }

    /// Ends a restore, if there was one, and records every state change from
    /// now on, for [`AttributionTask::drain_changes`]. What the last sweep
    /// dropped is not in the changelog as removed (a sweep forgets millions
    /// of ids at once, and the batches it empties get tombstones instead), so
    /// a restore may bring some of it back: the same sweep runs again here,
    /// with the restored clock.
    pub fn track_changes(&mut self) {
        self.sweep(self.last_sweep_watermark_ms, false);
        self.sweep_step(usize::MAX);
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

    /// Bytes held by the order store and the de-duplication sets.
    pub fn order_bytes(&self) -> usize {
        self.joins.heap_bytes() + self.payment_ids.heap_bytes() + self.delivery_ids.heap_bytes()
    }

    /// (orders, waiting events, de-duplication ids) held.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.joins.order_count(),
            self.joins.waiting_count(),
            self.payment_ids.len() + self.delivery_ids.len(),
        )
    }

    /// Processes one input record: decodes it, and either counts it or
    /// dead-letters it. Returns its event time if it was a valid event (late
    /// or not): how far its input partition has been read, in event time.
    pub fn on_record(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) -> Option<i64> {
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
            return None;
        };
        // Matched, not chained, and read where `decode` wrote it: each step
        // of a chain, and each move out of the `Result`, copied the event
        // (about 170 bytes for an order; docs/performance.md).
        let decoded = decode(source.topic, value, &self.fx);
        let ev = match decoded {
            Ok(ref ev) => ev,
            Err(r) => {
                self.dead_letter(source, key, value, r.reason, r.detail, stats, out);
                return None;
            }
        };
        if let Err(r) = self.check(key, ev) {
            self.dead_letter(source, key, value, r.reason, r.detail, stats, out);
            return None;
        }
        self.on_event(source, key, value, ev, stats, out);
        Some(ev.ts_ms())
    }

    /// Asks the CPU for the state records of `topic` will look up, a few
    /// records before each is processed ([`Ahead`]): every input record's key
    /// is its `order_id` (a record keyed otherwise is dead-lettered, and the
    /// hint is then wasted, not wrong).
    pub fn prefetch(&self, topic: InputTopic, ahead: Ahead<'_>) {
        if let Some(id) = ahead.line {
            self.joins.prefetch(id);
        }
        if let Some(id) = ahead.entry {
            self.joins.prefetch_entry(id);
        }
        let Some(value) = ahead.entry_value else {
            return;
        };
        // The id a payment or delivery is de-duplicated by, found by a scan
        // (`peek_str`): its line of the index was the loop's costliest wait
        // once the order's were hinted (docs/performance.md).
        static PAYMENT_ID: LazyLock<FieldName> = LazyLock::new(|| FieldName::new("\"payment_id\""));
        static DELIVERY_ID: LazyLock<FieldName> =
            LazyLock::new(|| FieldName::new("\"delivery_id\""));
        match topic {
            InputTopic::Orders => {}
            InputTopic::Payments => {
                if let Some(id) = peek_str(value, &PAYMENT_ID) {
                    self.payment_ids.prefetch(id);
                }
            }
            InputTopic::Deliveries => {
                if let Some(id) = peek_str(value, &DELIVERY_ID) {
                    self.delivery_ids.prefetch(id);
                }
            }
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
            Some(k) if !same_bytes(k, order_id.as_bytes()) => {
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

    /// See [`Watermarks::turning_idle`].
    pub fn turning_idle(&self, now_ms: i64) -> impl Iterator<Item = PartitionId> + '_ {
        self.wm.turning_idle(now_ms)
    }

    /// `part` has records fetched and waiting: not idle (see [`Watermarks::touch`]).
    pub fn touch(&mut self, part: PartitionId, now_ms: i64) {
        self.wm.touch(part, now_ms);
    }

    /// Wall-clock tick: idleness; when every partition of the task is idle, the
    /// after-the-sale flush (joins time out as if the watermark had passed them).
    pub fn on_tick(&mut self, now_ms: i64, stats: &mut Stats) {
        self.now_ms = now_ms;
        self.sweep_step(SWEEP_STEP);
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

    /// Partial sums since they were last taken (tests; the engine takes its
    /// tasks' with [`take_named`]).
    #[cfg(test)]
    pub fn take_partials(&mut self) -> Vec<state::PartialEntry> {
        take_named(&self.partials, &self.names)
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
        ev: &Event<'_>,
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

    fn on_order(&mut self, o: &Order<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
        let country = self.country_id(&o.country);
        let attribution = {
            let names = &mut *self.names.borrow_mut();
            Attribution {
                brand: names[0].intern(&o.brand_id),
                channel: o
                    .channel_id
                    .as_deref()
                    .map_or(NO_CHANNEL, |c| names[1].intern(c)),
                country,
            }
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
        self.add(o.ts_ms, Contribution::Placed, true, Some(attribution));
        // `order` carries the released payments' first paid time: a delivery that
        // waited too measures pay-to-delivery from it.
        for w in released {
            self.resolve(order, w, out);
        }
    }

    fn on_payment(&mut self, p: &Payment<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
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
        self.add(p.ts_ms, c, true, None);
        let what = Joinable::Payment {
            kind: p.kind,
            amount_fen: p.amount_fen,
        };
        self.attribute_or_wait(&p.order_id, p.ts_ms, what, stats, out);
    }

    fn on_delivery(&mut self, d: &Delivery<'_>, stats: &mut Stats, out: &mut Vec<Output>) {
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
        self.add(d.ts_ms, c, true, None);
        let what = Joinable::Delivery { status: d.status };
        self.attribute_or_wait(&d.order_id, d.ts_ms, what, stats, out);
    }

    /// Country codes are two upper-case letters (checked by `decode`): a table beats hashing.
    fn country_id(&mut self, code: &str) -> u32 {
        let slot = match code.as_bytes() {
            [x @ b'A'..=b'Z', y @ b'A'..=b'Z'] => (x - b'A') as usize * 26 + (y - b'A') as usize,
            _ => return self.names.borrow_mut()[2].intern(code),
        };
        if self.country_ids[slot] == u32::MAX {
            self.country_ids[slot] = self.names.borrow_mut()[2].intern(code);
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
                self.add(ts_ms, Contribution::of(w.what), false, Some(UNKNOWN));
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
        self.add(
            w.ts_ms,
            Contribution::of(w.what),
            false,
            Some(order.attribution),
        );
    }

    /// Adds `c` at `ts_ms` to the total if `total`, and to the keys of `a` if any.
    fn add(&mut self, ts_ms: i64, c: Contribution, total: bool, a: Option<Attribution>) {
        let mut keys = [(Dim::Total, 0); 4];
        let mut n = total as usize;
        if let Some(a) = a {
            keys[n] = (Dim::Brand, a.brand);
            keys[n + 1] = (Dim::Country, a.country);
            n += 2;
            if a.channel != NO_CHANNEL {
                keys[n] = (Dim::Channel, a.channel);
                n += 1;
            }
        }
        self.partials.borrow_mut().add(ts_ms, c, &keys[..n]);
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
            self.add(x.ts_ms, Contribution::of(x.what), false, Some(UNKNOWN));
        }
        let limit = w.saturating_sub(self.cfg.time.allowed_lateness_ms);
        let every = (self.cfg.time.dedup_ttl_ms / 4).max(1_000);
        if self.last_sweep_watermark_ms != i64::MIN && limit - self.last_sweep_watermark_ms < every
        {
            return;
        }
        self.sweep(limit, true);
    }

    /// Starts forgetting what no event can match any more, as of `limit`
    /// (a sweep still under way is finished first, at its own), and walks
    /// its first step. `counted`: it counts for the changelog's batches
    /// (a restore's does not: its batches wait for the next).
    fn sweep(&mut self, limit: i64, counted: bool) {
        self.sweep_step(usize::MAX);
        self.last_sweep_watermark_ms = limit;
        let Some((orders_before, ids_before)) = self.forget_before() else {
            return;
        };
        self.payment_ids.sweep(ids_before);
        self.delivery_ids.sweep(ids_before);
        self.joins.sweep_orders(orders_before);
        self.horizon.sweeps_begun += counted as u64;
        self.sweep_counted = Some(counted);
        self.sweep_step(SWEEP_STEP);
    }

    /// Walks up to `count` more slots of each store in the sweep under way;
    /// once it has walked them all, the changelog's horizon moves.
    fn sweep_step(&mut self, count: usize) {
        let Some(counted) = self.sweep_counted else {
            return;
        };
        // Each walks its own steps (no short-circuit).
        let done = self.payment_ids.sweep_step(count)
            & self.delivery_ids.sweep_step(count)
            & self.joins.sweep_step(count);
        if done {
            self.sweep_counted = None;
            let (orders_before, ids_before) = self.forget_before().expect("a sweep ran");
            self.horizon.orders_before_ms = orders_before;
            self.horizon.ids_before_ms = ids_before;
            self.horizon.sweeps += counted as u64;
        }
    }

    /// What the last sweep begun (at `last_sweep_watermark_ms`) forgets:
    /// orders placed before the first time, ids seen before the second
    /// (`None` before the first sweep).
    fn forget_before(&self) -> Option<(i64, i64)> {
        let limit = self.last_sweep_watermark_ms;
        let t = &self.cfg.time;
        (limit != i64::MIN).then(|| {
            (
                limit.saturating_sub(t.order_ttl_ms),
                limit.saturating_sub(t.dedup_ttl_ms),
            )
        })
    }
}

/// Slots of each store a sweep walks per tick (each commit, every 100 ms by
/// default), after its first step: about 3 ms of a task's loop for its three
/// stores. A sweep walked at once stalled the loop for 1.2 s at 50 M open
/// orders (four tasks of 12.5 M orders and 16 M ids each, every 15 minutes of
/// event time: docs/performance.md); in steps it takes about 100 ticks there
/// (10 s), far within the 15 minutes before the next.
/// (In unit tests, a few slots: their sweeps take ticks too.)
const SWEEP_STEP: usize = if cfg!(test) { 16 } else { 1 << 17 };

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
mod tests;
