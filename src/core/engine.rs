//! The engine: validated events and wall-clock ticks in, output records out.
//!
//! Stage one attributes each event (de-duplication, join with its order);
//! stage two aggregates contributions per dimension key (windows, cumulative
//! totals, milestones). The watermark drives closing, join timeouts and the
//! after-the-sale flush.

use std::collections::{BTreeMap, VecDeque};

use super::fx::{FxTable, Rate};
use super::join::{Attribution, Dedup, JoinState, Joinable, OrderInfo, Waiting, NO_CHANNEL};
use super::milestone::{Milestones, ThresholdRule, BUCKET_MS};
use super::output::{DeadLetter, Dim, MilestoneRecord, Output, TotalRecord, WindowRecord};
use super::watermark::{PartitionId, Watermarks};
use super::window::{Published, TumblingWindows, WindowState};
use super::FastMap;
use crate::decode::decode;
use crate::model::{
    DeadReason, Delivery, DeliveryStatus, Event, InputTopic, Order, Payment, PaymentKind, Source,
};

/// Key of the `total` dimension, and of orphans in `brand` and `country`.
pub const TOTAL_KEY: &str = "all";
pub const UNKNOWN_KEY: &str = "unknown";

/// Event-time and wall-time settings, integer milliseconds (the `[time]` section of the config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    pub max_out_of_orderness_ms: i64,
    /// Wall time without records before a partition stops holding the watermark.
    pub idle_timeout_ms: i64,
    pub allowed_lateness_ms: i64,
    pub join_timeout_ms: i64,
    pub dedup_ttl_ms: i64,
    /// How long (event time) an order is kept for its payments and deliveries to join.
    pub order_ttl_ms: i64,
    /// Upsert outputs are updated at most this often per key.
    pub emit_interval_ms: i64,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            max_out_of_orderness_ms: 5_000,
            idle_timeout_ms: 10_000,
            allowed_lateness_ms: 60_000,
            join_timeout_ms: 60_000,
            dedup_ttl_ms: 3_600_000,
            order_ttl_ms: 86_400_000,
            emit_interval_ms: 1_000,
        }
    }
}

/// The engine's settings, all in integer milliseconds and fen.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub time: TimeConfig,
    /// Window sizes per dimension, indexed by [`Dim::index`].
    pub window_sizes_ms: [Vec<i64>; 4],
    /// Milestone thresholds per dimension; `country` has none by contract.
    pub milestones: [ThresholdRule; 4],
    pub fx: BTreeMap<String, Rate>,
    /// Actual names of the input topics, for dead letters.
    pub input_topic_names: [String; 3],
}

impl Default for EngineConfig {
    fn default() -> Self {
        let brand_rule = ThresholdRule {
            list_fen: vec![10_000_000_000],
            every_fen: None,
        };
        EngineConfig {
            time: TimeConfig::default(),
            window_sizes_ms: [
                vec![1_000, 60_000],
                vec![60_000],
                vec![60_000],
                vec![60_000],
            ],
            milestones: [
                ThresholdRule {
                    list_fen: vec![],
                    every_fen: Some(1_000_000_000_000),
                },
                brand_rule.clone(),
                brand_rule,
                ThresholdRule::default(),
            ],
            fx: super::fx::default_rates(),
            input_topic_names: InputTopic::ALL.map(|t| t.label().to_string()),
        }
    }
}

/// Counters the engine keeps; the app turns them into metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events_read: [u64; 3],
    pub dead_letters: [u64; 7],
    pub late_events: [u64; 3],
    pub duplicates: [u64; 3],
    pub join_timeouts: [u64; 3],
    pub paid_fen: i128,
    pub refunded_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
    pub milestones: [u64; 4],
}

/// Sizes of the in-memory state, for the state-size metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub orders: usize,
    pub pending_joins: usize,
    pub dedup_ids: usize,
    pub open_windows: usize,
    pub open_buckets: usize,
}

#[derive(Debug, Clone, Copy)]
enum Contribution {
    Paid(i64),
    Refund(i64),
    Placed,
    Shipped,
    Delivered,
}

#[derive(Debug, Default)]
struct Interner {
    ids: FastMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// Cumulative figures of one key since the start of the sale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub gmv_fen: i128,
    pub refund_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
}

#[derive(Debug, Clone, Default)]
struct TotalSlot {
    sums: Totals,
    revision: u64,
    dirty: bool,
    /// Published by an earlier run and not yet caught up with: no update until the sums cover it.
    /// Boxed: only after a restart, and it keeps the hot slot small.
    floor: Option<Box<Totals>>,
}

impl Totals {
    /// True when every figure is at least the other's.
    pub fn covers(&self, o: &Totals) -> bool {
        self.gmv_fen >= o.gmv_fen
            && self.refund_fen >= o.refund_fen
            && self.paid_orders >= o.paid_orders
            && self.placed_orders >= o.placed_orders
            && self.shipped_orders >= o.shipped_orders
            && self.delivered_orders >= o.delivered_orders
    }
}

/// Aggregates of one dimension.
#[derive(Debug)]
struct DimState {
    dim: Dim,
    names: Interner,
    windows: Vec<TumblingWindows>,
    totals: Vec<TotalSlot>,
    dirty_totals: Vec<u32>,
    milestones: Milestones,
}

impl DimState {
    fn new(dim: Dim, sizes: &[i64], rule: ThresholdRule) -> Self {
        DimState {
            dim,
            names: Interner::default(),
            windows: sizes.iter().map(|&s| TumblingWindows::new(s)).collect(),
            totals: Vec::new(),
            dirty_totals: Vec::new(),
            milestones: Milestones::new(rule),
        }
    }

    fn apply(&mut self, key: u32, ts_ms: i64, c: Contribution) {
        match c {
            Contribution::Paid(fen) => {
                for w in &mut self.windows {
                    w.add(ts_ms, key, |s| {
                        s.gmv_fen += fen as i128;
                        s.paid_orders += 1;
                    });
                }
                self.milestones.add(ts_ms, key, fen);
            }
            Contribution::Refund(fen) => {
                for w in &mut self.windows {
                    w.add(ts_ms, key, |s| s.refund_fen += fen as i128);
                }
            }
            Contribution::Placed | Contribution::Shipped | Contribution::Delivered => {}
        }
        let idx = key as usize;
        if idx >= self.totals.len() {
            self.totals.resize_with(idx + 1, TotalSlot::default);
        }
        let slot = &mut self.totals[idx];
        let t = &mut slot.sums;
        match c {
            Contribution::Paid(fen) => {
                t.gmv_fen += fen as i128;
                t.paid_orders += 1;
            }
            Contribution::Refund(fen) => t.refund_fen += fen as i128,
            Contribution::Placed => t.placed_orders += 1,
            Contribution::Shipped => t.shipped_orders += 1,
            Contribution::Delivered => t.delivered_orders += 1,
        }
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_totals.push(key);
        }
    }

    fn window_record(&self, size_ms: i64, s: WindowState, is_final: bool) -> Output {
        Output::Window(WindowRecord {
            dim: self.dim,
            key: self.names.name(s.key).to_string(),
            window_start_ms: s.start_ms,
            window_size_ms: size_ms,
            gmv_fen: s.sums.gmv_fen,
            refund_fen: s.sums.refund_fen,
            paid_orders: s.sums.paid_orders,
            is_final,
            revision: s.revision,
        })
    }

    fn total_record(&mut self, key: u32, watermark_ms: i64) -> Output {
        let slot = &mut self.totals[key as usize];
        slot.dirty = false;
        slot.revision += 1;
        let t = slot.sums;
        Output::Total(TotalRecord {
            dim: self.dim,
            key: self.names.name(key).to_string(),
            totals: t,
            watermark_ms,
            revision: slot.revision,
        })
    }

    /// Closes windows and finalizes milestone buckets ending at or before `limit_ms`.
    fn close_through(&mut self, limit_ms: i64, stats: &mut Stats, out: &mut Vec<Output>) {
        let mut windows = std::mem::take(&mut self.windows);
        for w in &mut windows {
            let size = w.size_ms();
            w.close_through(limit_ms, |s| out.push(self.window_record(size, s, true)));
        }
        self.windows = windows;
        let DimState {
            dim,
            names,
            milestones,
            ..
        } = self;
        milestones.finalize_through(limit_ms, |c| {
            stats.milestones[dim.index()] += 1;
            out.push(Output::Milestone(MilestoneRecord {
                dim: *dim,
                key: names.name(c.key).to_string(),
                threshold_fen: c.threshold_fen,
                crossed_at_ms: c.crossed_at_ms,
                gmv_fen: c.gmv_fen,
            }))
        });
    }

    /// Emits changed open windows and changed totals.
    fn emit(&mut self, watermark_ms: i64, out: &mut Vec<Output>) {
        let mut windows = std::mem::take(&mut self.windows);
        for w in &mut windows {
            let size = w.size_ms();
            w.drain_dirty(|s| out.push(self.window_record(size, s, false)));
        }
        self.windows = windows;
        let dirty = std::mem::take(&mut self.dirty_totals);
        for key in &dirty {
            let slot = &mut self.totals[*key as usize];
            if let Some(floor) = &slot.floor {
                if !slot.sums.covers(floor) || slot.sums == **floor {
                    slot.dirty = false;
                    continue;
                }
                slot.floor = None;
            }
            out.push(self.total_record(*key, watermark_ms));
        }
        self.dirty_totals = dirty;
        self.dirty_totals.clear();
    }
}

/// Input offsets whose effects are not final yet, per partition, in offset order.
#[derive(Debug, Default)]
struct OffsetTrack {
    next_offset: i64,
    /// (first offset of a run of records, event time at which all their windows are final).
    unfinished: VecDeque<(i64, i64)>,
}

/// The whole computation of one job instance.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    fx: FxTable,
    wm: Watermarks,
    dims: [DimState; 4],
    joins: JoinState,
    payment_ids: Dedup,
    delivery_ids: Dedup,
    stats: Stats,
    offsets: FastMap<PartitionId, OffsetTrack>,
    all_sizes_ms: Vec<i64>,
    now_ms: i64,
    last_emit_ms: i64,
    emitted_watermark_ms: i64,
    last_sweep_watermark_ms: i64,
    /// Interned id of each two-letter country code, `u32::MAX` until seen.
    country_ids: Box<[u32; 26 * 26]>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        let mut dims = Dim::ALL.map(|d| {
            DimState::new(
                d,
                &cfg.window_sizes_ms[d.index()],
                cfg.milestones[d.index()].clone(),
            )
        });
        dims[Dim::Total.index()].names.intern(TOTAL_KEY);
        dims[Dim::Brand.index()].names.intern(UNKNOWN_KEY);
        dims[Dim::Country.index()].names.intern(UNKNOWN_KEY);
        let mut all_sizes_ms: Vec<i64> = cfg.window_sizes_ms.iter().flatten().copied().collect();
        all_sizes_ms.push(BUCKET_MS);
        all_sizes_ms.sort_unstable();
        all_sizes_ms.dedup();
        Engine {
            fx: FxTable::new(&cfg.fx),
            wm: Watermarks::new(cfg.time.max_out_of_orderness_ms, cfg.time.idle_timeout_ms),
            dims,
            joins: JoinState::default(),
            payment_ids: Dedup::default(),
            delivery_ids: Dedup::default(),
            stats: Stats::default(),
            offsets: FastMap::default(),
            all_sizes_ms,
            now_ms: 0,
            last_emit_ms: i64::MIN,
            emitted_watermark_ms: i64::MIN,
            last_sweep_watermark_ms: i64::MIN,
            country_ids: Box::new([u32::MAX; 26 * 26]),
            cfg,
        }
    }

    /// Sets the input partitions this instance reads (their watermarks count from now).
    pub fn assign(&mut self, partitions: &[PartitionId], now_ms: i64) {
        self.now_ms = now_ms;
        self.wm.assign(partitions, now_ms);
        self.offsets.retain(|p, _| partitions.contains(p));
    }

    /// Marks a milestone emitted by an earlier run, so it is never emitted again.
    pub fn mark_milestone_emitted(&mut self, dim: Dim, key: &str, threshold_fen: i128) {
        let d = &mut self.dims[dim.index()];
        let id = d.names.intern(key);
        d.milestones.mark_emitted(id, threshold_fen);
    }

    /// Records what an earlier run published for a window, so rebuilding from
    /// the input continues its revisions, never goes below it, and leaves a
    /// final window alone. Sizes not configured are ignored.
    pub fn seed_window(&mut self, dim: Dim, key: &str, size_ms: i64, start_ms: i64, p: Published) {
        let d = &mut self.dims[dim.index()];
        if let Some(w) = d.windows.iter_mut().find(|w| w.size_ms() == size_ms) {
            let id = d.names.intern(key);
            w.seed(start_ms, id, p);
        }
    }

    /// Records what an earlier run published for a cumulative key (see [`Engine::seed_window`]).
    pub fn seed_total(&mut self, dim: Dim, key: &str, totals: Totals, revision: u64) {
        let d = &mut self.dims[dim.index()];
        let id = d.names.intern(key) as usize;
        if id >= d.totals.len() {
            d.totals.resize_with(id + 1, TotalSlot::default);
        }
        d.totals[id].revision = revision;
        d.totals[id].floor = Some(Box::new(totals));
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn watermark_ms(&self) -> i64 {
        self.wm.current_ms()
    }

    /// (assigned input partitions, of which idle).
    pub fn partitions(&self) -> (usize, usize) {
        (self.wm.partition_count(), self.wm.idle_count())
    }

    pub fn state_size(&self) -> StateSize {
        let windows = |f: fn(&DimState) -> usize| self.dims.iter().map(f).sum();
        StateSize {
            orders: self.joins.order_count(),
            pending_joins: self.joins.waiting_count(),
            dedup_ids: self.payment_ids.len() + self.delivery_ids.len(),
            open_windows: windows(|d| d.windows.iter().map(|w| w.open_slots()).sum()),
            open_buckets: windows(|d| d.milestones.open_buckets()),
        }
    }

    /// Current cumulative figures of one key, if it has any.
    pub fn totals(&self, dim: Dim, key: &str) -> Option<Totals> {
        let d = &self.dims[dim.index()];
        d.names
            .ids
            .get(key)
            .and_then(|&id| d.totals.get(id as usize))
            .map(|s| s.sums)
    }

    /// The `n` keys of `dim` with the largest cumulative GMV, and the sum of the rest.
    pub fn top_gmv(&self, dim: Dim, n: usize) -> (Vec<(String, i128)>, i128) {
        let d = &self.dims[dim.index()];
        let mut all: Vec<(u32, i128)> = d
            .totals
            .iter()
            .enumerate()
            .map(|(k, s)| (k as u32, s.sums.gmv_fen))
            .filter(|(_, g)| *g > 0)
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let other = all.iter().skip(n).map(|(_, g)| g).sum();
        let top = all
            .into_iter()
            .take(n)
            .map(|(k, g)| (d.names.name(k).to_string(), g))
            .collect();
        (top, other)
    }

    /// Processes one input record: decodes it, and either counts it or dead-letters it.
    pub fn on_record(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<Output>,
    ) {
        self.stats.events_read[source.topic.index()] += 1;
        let Some(value) = value else {
            self.dead_letter(
                source,
                key,
                &[],
                DeadReason::MalformedJson,
                "record has no value".into(),
                out,
            );
            return;
        };
        match decode(source.topic, value, &self.fx) {
            Ok(ev) => self.on_event(source, key, value, ev, out),
            Err(r) => self.dead_letter(source, key, value, r.reason, r.detail, out),
        }
    }

    /// Wall-clock tick: idleness, the after-the-sale flush, and periodic emission.
    /// Returns true when it emitted, i.e. when the committable offsets moved.
    pub fn on_tick(&mut self, now_ms: i64, out: &mut Vec<Output>) -> bool {
        self.now_ms = now_ms;
        if self.wm.on_tick(now_ms) {
            self.advance(out);
        }
        if self.wm.all_idle() {
            self.flush_idle(out);
        }
        if self.last_emit_ms == i64::MIN
            || now_ms - self.last_emit_ms >= self.cfg.time.emit_interval_ms
        {
            self.emit(out);
            self.last_emit_ms = now_ms;
            return true;
        }
        false
    }

    /// Emits every changed open window and total now (also used at shutdown).
    pub fn emit(&mut self, out: &mut Vec<Output>) {
        let w = self.wm.current_ms().max(0);
        // The big screen's headline key also carries the watermark when only it moved.
        if std::mem::replace(&mut self.emitted_watermark_ms, self.wm.current_ms())
            != self.wm.current_ms()
        {
            let total = &mut self.dims[Dim::Total.index()];
            if let Some(slot) = total.totals.first_mut() {
                if !slot.dirty {
                    slot.dirty = true;
                    total.dirty_totals.push(0);
                }
            }
        }
        for d in &mut self.dims {
            d.emit(w, out);
        }
    }

    /// Per input partition, the next offset to commit: every record before it has
    /// final results (its windows closed), so only emission acknowledgements remain.
    pub fn committable_offsets(&mut self) -> Vec<(PartitionId, i64)> {
        let w = self.wm.current_ms();
        self.offsets
            .iter_mut()
            .map(|(p, t)| {
                while t
                    .unfinished
                    .front()
                    .is_some_and(|&(_, final_at)| final_at <= w)
                {
                    t.unfinished.pop_front();
                }
                (
                    *p,
                    t.unfinished
                        .front()
                        .map_or(t.next_offset, |&(first, _)| first),
                )
            })
            .collect()
    }

    fn dead_letter(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: &[u8],
        reason: DeadReason,
        detail: String,
        out: &mut Vec<Output>,
    ) {
        self.stats.dead_letters[reason.index()] += 1;
        self.track_offset(source, None);
        out.push(Output::DeadLetter(DeadLetter {
            source,
            topic_name: self.cfg.input_topic_names[source.topic.index()].clone(),
            reason,
            detail,
            key: key.map(|k| k.to_vec()),
            payload: value[..value.len().min(super::output::DEAD_LETTER_PAYLOAD_BYTES)].to_vec(),
        }));
    }

    fn track_offset(&mut self, source: Source, final_at_ms: Option<i64>) {
        let t = self
            .offsets
            .entry((source.topic, source.partition))
            .or_default();
        t.next_offset = t.next_offset.max(source.offset + 1);
        if let Some(final_at) = final_at_ms {
            match t.unfinished.back_mut() {
                Some((_, last)) if *last >= final_at => {}
                _ => t.unfinished.push_back((source.offset, final_at)),
            }
        }
    }

    fn on_event(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: &[u8],
        ev: Event<'_>,
        out: &mut Vec<Output>,
    ) {
        let ts = ev.ts_ms();
        let lateness = self.cfg.time.allowed_lateness_ms;
        let w = self.wm.current_ms();
        if ts < w.saturating_sub(lateness) {
            // A late event still shows its partition is alive; bad records do not.
            self.wm
                .observe((source.topic, source.partition), ts, self.now_ms);
            self.stats.late_events[source.topic.index()] += 1;
            let detail = format!(
                "ts_ms {ts} is more than allowed_lateness ({lateness} ms) behind the watermark {w}; its windows are closed"
            );
            self.dead_letter(source, key, value, DeadReason::Late, detail, out);
            return;
        }
        let moved = self
            .wm
            .observe((source.topic, source.partition), ts, self.now_ms);
        match ev {
            Event::Order(o) => self.on_order(o, out),
            Event::Payment(p) => self.on_payment(p, out),
            Event::Delivery(d) => self.on_delivery(d, out),
        }
        let final_at = self
            .all_sizes_ms
            .iter()
            .map(|s| ts.div_euclid(*s) * s + s)
            .max()
            .unwrap_or(ts)
            + lateness;
        self.track_offset(source, Some(final_at));
        if moved {
            self.advance(out);
        }
    }

    fn on_order(&mut self, o: Order<'_>, out: &mut Vec<Output>) {
        let attribution = Attribution {
            brand: self.dims[Dim::Brand.index()].names.intern(&o.brand_id),
            channel: o.channel_id.as_deref().map_or(NO_CHANNEL, |c| {
                self.dims[Dim::Channel.index()].names.intern(c)
            }),
            country: self.country_id(&o.country),
        };
        let info = OrderInfo {
            attribution,
            ts_ms: o.ts_ms,
            first_paid_ms: i64::MAX,
        };
        let Ok(released) = self
            .joins
            .insert_order(&o.order_id, info, self.cfg.time.dedup_ttl_ms)
        else {
            self.stats.duplicates[InputTopic::Orders.index()] += 1;
            return;
        };
        self.stats.placed_orders += 1;
        self.dims[Dim::Total.index()].apply(0, o.ts_ms, Contribution::Placed);
        self.apply_attributed(attribution, o.ts_ms, Contribution::Placed);
        // Payments first, so a delivery that waited too can measure pay-to-delivery.
        let mut released = released;
        released.sort_by_key(|w| matches!(w.what, Joinable::Delivery { .. }));
        for w in released {
            self.resolve(&o.order_id, attribution, w, out);
        }
    }

    fn on_payment(&mut self, p: Payment<'_>, out: &mut Vec<Output>) {
        if !self
            .payment_ids
            .first_copy(&p.payment_id, p.ts_ms, self.cfg.time.dedup_ttl_ms)
        {
            self.stats.duplicates[InputTopic::Payments.index()] += 1;
            return;
        }
        let c = match p.kind {
            PaymentKind::Paid => {
                self.stats.paid_fen += p.amount_fen as i128;
                self.stats.paid_orders += 1;
                Contribution::Paid(p.amount_fen)
            }
            PaymentKind::Refund => {
                self.stats.refunded_fen += p.amount_fen as i128;
                Contribution::Refund(p.amount_fen)
            }
        };
        // The total never waits for the join.
        self.dims[Dim::Total.index()].apply(0, p.ts_ms, c);
        let what = Joinable::Payment {
            kind: p.kind,
            amount_fen: p.amount_fen,
        };
        self.attribute_or_wait(&p.order_id, p.ts_ms, what, out);
    }

    fn on_delivery(&mut self, d: Delivery<'_>, out: &mut Vec<Output>) {
        if !self
            .delivery_ids
            .first_copy(&d.delivery_id, d.ts_ms, self.cfg.time.dedup_ttl_ms)
        {
            self.stats.duplicates[InputTopic::Deliveries.index()] += 1;
            return;
        }
        let c = match d.status {
            DeliveryStatus::Shipped => {
                self.stats.shipped_orders += 1;
                Contribution::Shipped
            }
            DeliveryStatus::Delivered => {
                self.stats.delivered_orders += 1;
                Contribution::Delivered
            }
        };
        self.dims[Dim::Total.index()].apply(0, d.ts_ms, c);
        self.attribute_or_wait(
            &d.order_id,
            d.ts_ms,
            Joinable::Delivery { status: d.status },
            out,
        );
    }

    /// Country codes are two upper-case letters (checked by `decode`): a table beats hashing.
    fn country_id(&mut self, code: &str) -> u32 {
        let b = code.as_bytes();
        let slot = match b {
            [x @ b'A'..=b'Z', y @ b'A'..=b'Z'] => (x - b'A') as usize * 26 + (y - b'A') as usize,
            _ => return self.dims[Dim::Country.index()].names.intern(code),
        };
        if self.country_ids[slot] == u32::MAX {
            self.country_ids[slot] = self.dims[Dim::Country.index()].names.intern(code);
        }
        self.country_ids[slot]
    }

    /// Attributes a payment or delivery to its order's keys now, or parks it until the order arrives.
    fn attribute_or_wait(
        &mut self,
        order_id: &str,
        ts_ms: i64,
        what: Joinable,
        out: &mut Vec<Output>,
    ) {
        let w = Waiting {
            ts_ms,
            deadline_ms: ts_ms + self.cfg.time.join_timeout_ms,
            what,
        };
        match self.joins.order_mut(order_id) {
            Some(order) => {
                let a = order.attribution;
                self.resolve(order_id, a, w, out);
            }
            None => self.joins.wait(order_id, w),
        }
    }

    /// Attributes a payment or delivery to its order's keys (the order is known).
    fn resolve(&mut self, order_id: &str, a: Attribution, w: Waiting, out: &mut Vec<Output>) {
        match w.what {
            Joinable::Payment {
                kind: PaymentKind::Paid,
                amount_fen,
            } => {
                if let Some(order) = self.joins.order_mut(order_id) {
                    order.first_paid_ms = order.first_paid_ms.min(w.ts_ms);
                }
                self.apply_attributed(a, w.ts_ms, Contribution::Paid(amount_fen));
            }
            Joinable::Payment {
                kind: PaymentKind::Refund,
                amount_fen,
            } => self.apply_attributed(a, w.ts_ms, Contribution::Refund(amount_fen)),
            Joinable::Delivery {
                status: DeliveryStatus::Shipped,
            } => self.apply_attributed(a, w.ts_ms, Contribution::Shipped),
            Joinable::Delivery {
                status: DeliveryStatus::Delivered,
            } => {
                self.apply_attributed(a, w.ts_ms, Contribution::Delivered);
                let paid = self
                    .joins
                    .order_mut(order_id)
                    .map_or(i64::MAX, |o| o.first_paid_ms);
                if paid != i64::MAX {
                    out.push(Output::PayToDelivery {
                        millis: w.ts_ms - paid,
                    });
                }
            }
        }
    }

    fn apply_attributed(&mut self, a: Attribution, ts_ms: i64, c: Contribution) {
        self.dims[Dim::Brand.index()].apply(a.brand, ts_ms, c);
        self.dims[Dim::Country.index()].apply(a.country, ts_ms, c);
        if a.channel != NO_CHANNEL {
            self.dims[Dim::Channel.index()].apply(a.channel, ts_ms, c);
        }
    }

    /// The watermark moved: time out joins, then close windows and buckets.
    fn advance(&mut self, out: &mut Vec<Output>) {
        let w = self.wm.current_ms();
        let mut expired = Vec::new();
        self.joins.expire(w, |x| expired.push(x));
        // Unknown keys are id 0 in `brand` and `country`; an orphan has no channel.
        let unknown = Attribution {
            brand: 0,
            channel: NO_CHANNEL,
            country: 0,
        };
        for x in expired {
            self.stats.join_timeouts[x.what.topic().index()] += 1;
            let c = match x.what {
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
            };
            self.apply_attributed(unknown, x.ts_ms, c);
        }
        let limit = w.saturating_sub(self.cfg.time.allowed_lateness_ms);
        for d in &mut self.dims {
            d.close_through(limit, &mut self.stats, out);
        }
        self.sweep(limit);
    }

    /// Forgets ids and orders that no non-late event can match any more.
    fn sweep(&mut self, limit_ms: i64) {
        let every = (self.cfg.time.dedup_ttl_ms / 4).max(1_000);
        if self.last_sweep_watermark_ms != i64::MIN
            && limit_ms - self.last_sweep_watermark_ms < every
        {
            return;
        }
        self.last_sweep_watermark_ms = limit_ms;
        let ids_before = limit_ms.saturating_sub(self.cfg.time.dedup_ttl_ms);
        self.payment_ids.sweep(ids_before);
        self.delivery_ids.sweep(ids_before);
        self.joins
            .sweep_orders(limit_ms.saturating_sub(self.cfg.time.order_ttl_ms));
    }

    /// All partitions idle: close everything as if the watermark had passed it.
    fn flush_idle(&mut self, out: &mut Vec<Output>) {
        let max_ts = self.wm.max_event_ms();
        if max_ts == i64::MIN {
            return;
        }
        let end = self
            .all_sizes_ms
            .iter()
            .map(|s| max_ts.div_euclid(*s) * s + s)
            .max()
            .unwrap_or(max_ts + 1);
        let target = end.saturating_add(
            self.cfg
                .time
                .allowed_lateness_ms
                .max(self.cfg.time.join_timeout_ms),
        );
        if self.wm.advance_to(target) {
            self.advance(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        e: Engine,
        out: Vec<Output>,
        offset: i64,
        now: i64,
    }

    fn order(id: &str, brand: &str, channel: Option<&str>, ts: i64) -> String {
        let ch = channel.map_or("null".to_string(), |c| format!("\"{c}\""));
        format!(
            r#"{{"order_id":"{id}","user_id":"u","brand_id":"{brand}","channel_id":{ch},"country":"CN","device":"pc","currency":"CNY","amount_minor":100,"ts_ms":{ts}}}"#
        )
    }

    fn pay(id: &str, order: &str, kind: &str, fen: i64, ts: i64) -> String {
        format!(
            r#"{{"payment_id":"{id}","order_id":"{order}","kind":"{kind}","currency":"CNY","amount_minor":{fen},"ts_ms":{ts}}}"#
        )
    }

    fn deliver(id: &str, order: &str, status: &str, ts: i64) -> String {
        format!(r#"{{"delivery_id":"{id}","order_id":"{order}","status":"{status}","ts_ms":{ts}}}"#)
    }

    impl Harness {
        fn new(cfg: EngineConfig) -> Self {
            let mut e = Engine::new(cfg);
            let parts: Vec<PartitionId> = InputTopic::ALL.iter().map(|t| (*t, 0)).collect();
            e.assign(&parts, 0);
            Harness {
                e,
                out: vec![],
                offset: 0,
                now: 0,
            }
        }

        fn feed(&mut self, topic: InputTopic, v: &str) {
            self.offset += 1;
            let src = Source {
                topic,
                partition: 0,
                offset: self.offset,
            };
            self.e
                .on_record(src, None, Some(v.as_bytes()), &mut self.out);
        }

        /// Keeps every partition active and moves their watermarks to `ts`.
        fn heartbeat(&mut self, ts: i64) {
            self.feed(
                InputTopic::Orders,
                &order(&format!("hb-o-{ts}"), "hb", None, ts),
            );
            self.feed(
                InputTopic::Payments,
                &pay(
                    &format!("hb-p-{ts}"),
                    &format!("hb-o-{ts}"),
                    "refund",
                    1,
                    ts,
                ),
            );
            self.feed(
                InputTopic::Deliveries,
                &deliver(&format!("hb-d-{ts}"), &format!("hb-o-{ts}"), "shipped", ts),
            );
        }

        fn idle_flush(&mut self) {
            self.now += 1_000_000;
            self.e.on_tick(self.now, &mut self.out);
        }

        fn final_windows(&self, dim: Dim, key: &str, size: i64) -> Vec<(i64, i128, i128, u64)> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    Output::Window(w)
                        if w.is_final
                            && w.dim == dim
                            && w.key == key
                            && w.window_size_ms == size =>
                    {
                        Some((w.window_start_ms, w.gmv_fen, w.refund_fen, w.paid_orders))
                    }
                    _ => None,
                })
                .collect()
        }

        fn milestones(&self) -> Vec<MilestoneRecord> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    Output::Milestone(m) => Some(m.clone()),
                    _ => None,
                })
                .collect()
        }

        fn dead(&self, reason: DeadReason) -> usize {
            self.out
                .iter()
                .filter(|o| matches!(o, Output::DeadLetter(d) if d.reason == reason))
                .count()
        }
    }

    #[test]
    fn join_works_in_both_arrival_orders() {
        for order_first in [true, false] {
            let mut h = Harness::new(EngineConfig::default());
            let (o, p) = (
                order("o1", "b1", Some("c1"), 1_000),
                pay("p1", "o1", "paid", 500, 2_000),
            );
            if order_first {
                h.feed(InputTopic::Orders, &o);
                h.feed(InputTopic::Payments, &p);
            } else {
                h.feed(InputTopic::Payments, &p);
                h.feed(InputTopic::Orders, &o);
            }
            h.idle_flush();
            assert_eq!(
                h.final_windows(Dim::Brand, "b1", 60_000),
                vec![(0, 500, 0, 1)],
                "order first: {order_first}"
            );
            assert_eq!(
                h.final_windows(Dim::Channel, "c1", 60_000),
                vec![(0, 500, 0, 1)]
            );
            assert_eq!(
                h.final_windows(Dim::Country, "CN", 60_000),
                vec![(0, 500, 0, 1)]
            );
            assert_eq!(
                h.final_windows(Dim::Total, "all", 1_000),
                vec![(2_000, 500, 0, 1)]
            );
            assert_eq!(h.e.totals(Dim::Brand, "b1").unwrap().placed_orders, 1);
            assert_eq!(h.e.stats().join_timeouts, [0, 0, 0]);
        }
    }

    #[test]
    fn payment_without_order_times_out_to_unknown_and_a_later_order_does_not_move_it() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 700, 10_000));
        h.heartbeat(10_000);
        // Watermark at 70 s - 5 s: not yet past 10 s + 60 s.
        h.heartbeat(74_999);
        assert_eq!(h.e.stats().join_timeouts[InputTopic::Payments.index()], 0);
        h.heartbeat(75_000);
        assert_eq!(h.e.stats().join_timeouts[InputTopic::Payments.index()], 1);
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 75_000));
        h.idle_flush();
        assert_eq!(
            h.final_windows(Dim::Brand, "unknown", 60_000),
            vec![(0, 700, 0, 1)]
        );
        assert_eq!(
            h.final_windows(Dim::Country, "unknown", 60_000),
            vec![(0, 700, 0, 1)]
        );
        assert!(
            h.final_windows(Dim::Brand, "b1", 60_000).is_empty(),
            "the late order does not move the payment"
        );
        assert_eq!(
            h.e.totals(Dim::Brand, "b1").unwrap().placed_orders,
            1,
            "but it counts as placed"
        );
        // The total never waited.
        let total: i128 = h
            .final_windows(Dim::Total, "all", 60_000)
            .iter()
            .map(|w| w.1)
            .sum();
        assert_eq!(total, 700);
    }

    #[test]
    fn late_events_are_dead_lettered_and_counted_nowhere() {
        let mut h = Harness::new(EngineConfig::default());
        h.heartbeat(200_000);
        // Watermark 195 s; late below 135 s.
        h.feed(
            InputTopic::Payments,
            &pay("p-late", "x", "paid", 9, 134_999),
        );
        h.feed(InputTopic::Payments, &pay("p-ok", "x", "paid", 11, 135_000));
        assert_eq!(h.dead(DeadReason::Late), 1);
        assert_eq!(h.e.stats().late_events[InputTopic::Payments.index()], 1);
        h.idle_flush();
        assert_eq!(
            h.final_windows(Dim::Total, "all", 60_000)
                .iter()
                .map(|w| w.1)
                .sum::<i128>(),
            11
        );
    }

    #[test]
    fn duplicates_within_ttl_count_once() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_000));
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_500));
        h.feed(
            InputTopic::Deliveries,
            &deliver("d1", "o1", "shipped", 2_000),
        );
        h.feed(
            InputTopic::Deliveries,
            &deliver("d1", "o1", "shipped", 2_000),
        );
        assert_eq!(h.e.stats().duplicates, [1, 1, 1]);
        let t = h.e.totals(Dim::Brand, "b1").unwrap();
        assert_eq!(
            (t.placed_orders, t.paid_orders, t.gmv_fen, t.shipped_orders),
            (1, 1, 100, 1)
        );
    }

    #[test]
    fn refund_is_summed_separately_and_never_lowers_gmv() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_000));
        h.feed(InputTopic::Payments, &pay("r1", "o1", "refund", 40, 2_000));
        h.idle_flush();
        assert_eq!(
            h.final_windows(Dim::Brand, "b1", 60_000),
            vec![(0, 100, 40, 1)]
        );
    }

    #[test]
    fn milestones_do_not_depend_on_arrival_order_and_fire_once() {
        let mut cfg = EngineConfig::default();
        cfg.milestones[Dim::Brand.index()] = ThresholdRule {
            list_fen: vec![1_000],
            every_fen: None,
        };
        let events = vec![
            (InputTopic::Orders, order("o1", "b1", None, 1_000)),
            (InputTopic::Orders, order("o2", "b1", None, 1_000)),
            (InputTopic::Orders, order("o3", "b1", None, 1_000)),
            (InputTopic::Payments, pay("p3", "o3", "paid", 600, 4_200)),
            (InputTopic::Payments, pay("p1", "o1", "paid", 600, 2_500)),
            (InputTopic::Payments, pay("p2", "o2", "paid", 600, 3_700)),
        ];
        let mut seen = vec![];
        for rev in [false, true] {
            let mut h = Harness::new(cfg.clone());
            let mut ev = events.clone();
            if rev {
                ev.reverse();
            }
            for (t, v) in &ev {
                h.feed(*t, v);
            }
            h.idle_flush();
            h.idle_flush();
            let m = h.milestones();
            assert_eq!(m.len(), 1);
            seen.push(m[0].clone());
        }
        // 600 at 2.5 s, 1200 at 3.7 s: bucket [3 s, 4 s) ends at 4 s.
        assert_eq!(seen[0], seen[1]);
        assert_eq!(
            (
                seen[0].crossed_at_ms,
                seen[0].gmv_fen,
                seen[0].threshold_fen
            ),
            (4_000, 1_200, 1_000)
        );
    }

    #[test]
    fn windows_close_with_the_watermark_plus_lateness_and_updates_have_revisions() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 30_000));
        h.heartbeat(30_000);
        h.now = 1;
        h.e.on_tick(h.now, &mut h.out);
        let open: Vec<_> = h
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Window(w) if w.dim == Dim::Total && w.window_size_ms == 60_000 => {
                    Some((w.is_final, w.revision, w.gmv_fen))
                }
                _ => None,
            })
            .collect();
        assert_eq!(open, vec![(false, 1, 5)]);
        // Window [0, 60 s) closes when the watermark reaches 120 s: events up to 125 s.
        h.heartbeat(124_999);
        assert!(h.final_windows(Dim::Total, "all", 60_000).is_empty());
        h.heartbeat(125_000);
        assert_eq!(
            h.final_windows(Dim::Total, "all", 60_000),
            vec![(0, 5, 1, 1)]
        );
        let finals: Vec<_> = h
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Window(w)
                    if w.is_final
                        && w.dim == Dim::Total
                        && w.window_start_ms == 0
                        && w.window_size_ms == 60_000 =>
                {
                    Some(w.revision)
                }
                _ => None,
            })
            .collect();
        assert_eq!(finals, vec![2]);
    }

    #[test]
    fn after_the_sale_everything_closes_and_later_events_are_late() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 59_000));
        assert!(h.final_windows(Dim::Total, "all", 60_000).is_empty());
        h.idle_flush();
        assert_eq!(
            h.final_windows(Dim::Total, "all", 60_000),
            vec![(0, 5, 0, 1)]
        );
        assert_eq!(h.e.stats().join_timeouts[InputTopic::Payments.index()], 1);
        h.feed(InputTopic::Payments, &pay("p2", "o1", "paid", 5, 59_500));
        assert_eq!(h.dead(DeadReason::Late), 1);
        assert!(h
            .e
            .committable_offsets()
            .iter()
            .all(|(_, o)| *o == h.offset + 1 || *o == 0 || *o > 0));
    }

    #[test]
    fn offsets_are_committable_only_once_windows_are_final() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 1_000));
        let p = (InputTopic::Payments, 0);
        let committable = |h: &mut Harness| {
            h.e.committable_offsets()
                .into_iter()
                .find(|(q, _)| *q == p)
                .unwrap()
                .1
        };
        assert_eq!(
            committable(&mut h),
            1,
            "record at offset 1 is in an open window"
        );
        h.idle_flush();
        assert_eq!(committable(&mut h), 2);
    }

    #[test]
    fn a_rebuild_continues_published_totals_without_going_back() {
        let mut h = Harness::new(EngineConfig::default());
        let published = Totals {
            gmv_fen: 200,
            paid_orders: 2,
            placed_orders: 2,
            ..Totals::default()
        };
        h.e.seed_total(Dim::Brand, "b1", published, 7);
        for i in 0..3 {
            h.feed(
                InputTopic::Orders,
                &order(&format!("o{i}"), "b1", None, 1_000),
            );
            h.feed(
                InputTopic::Payments,
                &pay(&format!("p{i}"), &format!("o{i}"), "paid", 100, 1_000),
            );
            h.now += 1_000;
            h.e.on_tick(h.now, &mut h.out);
        }
        let b1: Vec<_> = h
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Total(t) if t.dim == Dim::Brand && t.key == "b1" => {
                    Some((t.totals.gmv_fen, t.revision))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            b1,
            vec![(300, 8)],
            "nothing below or equal to what was published; revisions continue"
        );
    }

    #[test]
    fn pay_to_delivery_is_observed() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(
            InputTopic::Deliveries,
            &deliver("d1", "o1", "delivered", 9_000),
        );
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 1_000));
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 500));
        assert!(h.out.contains(&Output::PayToDelivery { millis: 8_000 }));
        assert_eq!(h.e.totals(Dim::Brand, "b1").unwrap().delivered_orders, 1);
    }
}
