//! The tasks of one job instance: an attribution task per input partition
//! number and an aggregation task per aggregation partition (see
//! `attribution.rs` and `aggregation.rs`). What they did goes out as data
//! ([`Engine::take_work`]): `gmv run` commits it through Kafka, [`LocalJob`]
//! (tests, benchmarks) through an in-memory repartition topic.
//!
//! [`LocalJob`]: super::local::LocalJob

use std::collections::BTreeMap;
use std::sync::Arc;

use super::aggregation::AggregationTask;
use super::attribution::AttributionTask;
use super::commit::{Stage, TaskSums, Work};
use super::fx::Rate;
use super::milestone::ThresholdRule;
use super::output::{Dim, Output};
use super::state::{self, PartialBatch};
use super::watermark::PartitionId;
use crate::model::{InputTopic, Source};

pub use super::attribution::{TOTAL_KEY, UNKNOWN_KEY};

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
    /// An event time further than this ahead of the job's wall clock is a
    /// producer's broken clock: `invalid_field`, so it cannot move a watermark.
    pub max_future_ms: i64,
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
            emit_interval_ms: 250,
            max_future_ms: 3_600_000,
        }
    }
}

/// The engine's settings, all in integer milliseconds and fen.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub time: TimeConfig,
    /// Window sizes per dimension, indexed by [`Dim::index`]; whole seconds.
    pub window_sizes_ms: [Vec<i64>; 4],
    /// Milestone thresholds per dimension; `country` has none by contract.
    pub milestones: [ThresholdRule; 4],
    pub fx: BTreeMap<String, Rate>,
    /// Actual names of the input topics, for dead letters.
    pub input_topic_names: [String; 3],
    /// Largest record the job may write (`kafka.max_record_bytes`): changelog
    /// chunks and repartition batches are cut well below it.
    pub max_record_bytes: usize,
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
            max_record_bytes: crate::config::DEFAULT_MAX_RECORD_BYTES,
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
    /// Events attributed to `unknown` at once: their order had
    /// `MAX_WAITING_PER_ORDER` events waiting already.
    pub join_overflows: [u64; 3],
    pub paid_fen: i128,
    pub refunded_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
    pub milestones: [u64; 4],
    /// Partial sums whose bucket had closed when they reached the aggregation stage.
    pub late_partials: u64,
}

/// Sizes of the in-memory state, for the state-size metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub orders: usize,
    pub pending_joins: usize,
    pub dedup_ids: usize,
    pub open_windows: usize,
    pub open_buckets: usize,
    /// Dimension keys (total, brands, channels, countries) with cumulative
    /// totals: kept for the whole sale, as the contract's totals need.
    pub keys: usize,
    /// Attribution changelog batches not given a tombstone yet.
    pub changelog_batches: usize,
    /// Changelog entries re-written at every commit (times far past the wall clock).
    pub changelog_pinned: usize,
    /// Bytes held by the order stores and de-duplication sets (their slabs
    /// and tables, as allocated: reserved room counts).
    pub order_bytes: usize,
}

/// Cumulative figures of one key since the start of the sale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub gmv_fen: i128,
    pub refund_fen: i128,
    pub paid_orders: u64,
    pub placed_orders: u64,
    pub shipped_orders: u64,
    pub delivered_orders: u64,
}

impl Totals {
    pub fn add(&mut self, d: &Totals) {
        self.gmv_fen += d.gmv_fen;
        self.refund_fen += d.refund_fen;
        self.paid_orders += d.paid_orders;
        self.placed_orders += d.placed_orders;
        self.shipped_orders += d.shipped_orders;
        self.delivered_orders += d.delivered_orders;
    }
}

/// The tasks one instance runs, and the counters they share.
#[derive(Debug)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    attribution: BTreeMap<i32, AttributionTask>,
    aggregation: BTreeMap<i32, AggregationTask>,
    stats: Stats,
}

impl Engine {
    /// An engine without tasks; the caller adds them as it restores them.
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg: Arc::new(cfg),
            attribution: BTreeMap::new(),
            aggregation: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// Records are cut below `bytes` from the next restore of each task on.
    pub fn set_max_record_bytes(&mut self, bytes: usize) {
        Arc::make_mut(&mut self.cfg).max_record_bytes = bytes;
    }

    pub fn config(&self) -> &Arc<EngineConfig> {
        &self.cfg
    }

    pub fn add_attribution(&mut self, partition: i32, now_ms: i64) -> &mut AttributionTask {
        let task = AttributionTask::new(partition, self.cfg.clone(), now_ms);
        self.attribution.insert(partition, task);
        self.attribution.get_mut(&partition).expect("just inserted")
    }

    pub fn add_aggregation(&mut self, partition: i32, source_count: usize) -> &mut AggregationTask {
        let task = AggregationTask::new(partition, self.cfg.clone(), source_count);
        self.aggregation.insert(partition, task);
        self.aggregation.get_mut(&partition).expect("just inserted")
    }

    /// Drops every task (their state is restored from the changelogs when they come back).
    pub fn clear(&mut self) {
        self.attribution.clear();
        self.aggregation.clear();
    }

    /// Processes one input record in its partition's attribution task.
    pub fn on_record(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<Output>,
    ) {
        match self.attribution.get_mut(&source.partition) {
            Some(t) => t.on_record(source, key, value, &mut self.stats, out),
            None => tracing::warn!(
                partition = source.partition,
                "record of a partition this instance does not own"
            ),
        }
    }

    /// Input partition `part` has records fetched but not read yet: it is not idle.
    pub fn touch(&mut self, part: PartitionId, now_ms: i64) {
        if let Some(t) = self.attribution.get_mut(&part.1) {
            t.touch(part, now_ms);
        }
    }

    /// A batch read from the repartition topic, for the aggregation task of `partition`.
    pub fn receive(
        &mut self,
        partition: i32,
        offset: i64,
        batch: PartialBatch,
        out: &mut Vec<Output>,
    ) {
        match self.aggregation.get_mut(&partition) {
            Some(t) => t.receive(offset, batch, &mut self.stats, out),
            None => tracing::warn!(
                partition,
                "repartition record of a partition this instance does not own"
            ),
        }
    }

    /// Wall-clock tick: idleness, flushes, sweeps and expiries in every attribution task.
    pub fn on_tick(&mut self, now_ms: i64) {
        for t in self.attribution.values_mut() {
            t.on_tick(now_ms, &mut self.stats);
        }
    }

    /// Emits every changed open window and total now.
    pub fn emit(&mut self, out: &mut Vec<Output>) {
        for t in self.aggregation.values_mut() {
            t.emit(out);
        }
    }

    /// Everything the tasks did since the last call, for one transaction: each
    /// attribution task's partial sums split over `aggregation_partitions`, every
    /// task's changelog records (after `emit`, so revisions are current), and
    /// where each stopped reading.
    pub fn take_work(&mut self, aggregation_partitions: i32) -> Work {
        let mut work = Work::default();
        let r_count = aggregation_partitions.max(1);
        for t in self.attribution.values_mut() {
            let p = t.partition();
            let mut split = vec![Vec::new(); r_count as usize];
            for e in t.take_partials() {
                split[state::aggregation_partition(e.dim, &e.key, r_count) as usize].push(e);
            }
            work.sums.push(TaskSums {
                source: p,
                progress: t.progress(),
                split,
            });
            let task = (Stage::Attribution, p);
            t.drain_changes(|k, v| work.changes.push((task, k.to_vec(), v.map(<[u8]>::to_vec))));
            work.read.push((task, t.next_offsets().to_vec()));
        }
        for t in self.aggregation.values_mut() {
            let task = (Stage::Aggregation, t.partition());
            work.changes
                .extend(t.take_changes().into_iter().map(|(k, v)| (task, k, v)));
            work.read.push((task, vec![t.committable_offset()]));
        }
        work
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The aggregation watermark (minimum over this instance's aggregation tasks),
    /// or the attribution one when it has none.
    pub fn watermark_ms(&self) -> i64 {
        let agg = self.aggregation.values().map(|t| t.watermark_ms()).min();
        agg.or_else(|| self.attribution.values().map(|t| t.watermark_ms()).min())
            .unwrap_or(i64::MIN)
    }

    /// (assigned input partitions, of which idle).
    pub fn partitions(&self) -> (usize, usize) {
        self.attribution
            .values()
            .map(|t| t.partitions())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Sizes each attribution task's state for `per_task` orders at once (as
    /// `state.expected_orders` does at a restore); false if memory was refused.
    pub fn reserve_orders(&mut self, per_task: usize) -> bool {
        self.attribution.values_mut().all(|t| t.reserve(per_task))
    }

    pub fn state_size(&self) -> StateSize {
        let mut s = StateSize::default();
        for t in self.attribution.values() {
            let (o, w, d) = t.sizes();
            s.orders += o;
            s.pending_joins += w;
            s.dedup_ids += d;
            s.changelog_batches += t.changelog_batches();
            s.changelog_pinned += t.changelog_pinned();
            s.order_bytes += t.order_bytes();
        }
        for t in self.aggregation.values() {
            let (w, b, k) = t.sizes();
            s.open_windows += w;
            s.open_buckets += b;
            s.keys += k;
        }
        s
    }

    /// Current cumulative figures of one key, if an aggregation task here owns it.
    pub fn totals(&self, dim: Dim, key: &str) -> Option<Totals> {
        self.aggregation.values().find_map(|t| t.totals(dim, key))
    }

    /// The `n` keys of `dim` with the largest cumulative GMV here, and the sum of the rest.
    pub fn top_gmv(&self, dim: Dim, n: usize) -> (Vec<(String, i128)>, i128) {
        let mut all: Vec<(&str, i128)> = self
            .aggregation
            .values()
            .flat_map(|t| t.gmv_by_key(dim))
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let other = all.iter().skip(n).map(|(_, g)| g).sum();
        let top = all
            .into_iter()
            .take(n)
            .map(|(k, g)| (k.to_string(), g))
            .collect();
        (top, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::local::LocalJob;
    use crate::core::output::MilestoneRecord;
    use crate::model::DeadReason;

    struct Harness {
        e: LocalJob,
        out: Vec<Output>,
        offset: i64,
        now: i64,
    }

    /// Test times are relative to 2024-11-11T00:00:00Z (a whole minute): the
    /// contract rejects event times before 2000 and ahead of the wall clock.
    const T0: i64 = 1_731_283_200_000;

    fn order(id: &str, brand: &str, channel: Option<&str>, ts: i64) -> String {
        let ts = T0 + ts;
        let ch = channel.map_or("null".to_string(), |c| format!("\"{c}\""));
        format!(
            r#"{{"order_id":"{id}","user_id":"u","brand_id":"{brand}","channel_id":{ch},"country":"CN","device":"pc","currency":"CNY","amount_minor":100,"ts_ms":{ts}}}"#
        )
    }

    fn pay(id: &str, order: &str, kind: &str, fen: i64, ts: i64) -> String {
        let ts = T0 + ts;
        format!(
            r#"{{"payment_id":"{id}","order_id":"{order}","kind":"{kind}","currency":"CNY","amount_minor":{fen},"ts_ms":{ts}}}"#
        )
    }

    fn deliver(id: &str, order: &str, status: &str, ts: i64) -> String {
        let ts = T0 + ts;
        format!(r#"{{"delivery_id":"{id}","order_id":"{order}","status":"{status}","ts_ms":{ts}}}"#)
    }

    impl Harness {
        fn new(cfg: EngineConfig) -> Self {
            let e = LocalJob::new(cfg, &[0], 1, T0);
            Harness {
                e,
                out: vec![],
                offset: 0,
                now: T0,
            }
        }

        /// Feeds `v` keyed by its `order_id`, as the contract's producers do.
        fn feed(&mut self, topic: InputTopic, v: &str) {
            let key = serde_json::from_str::<serde_json::Value>(v).unwrap()["order_id"]
                .as_str()
                .unwrap()
                .to_string();
            self.feed_keyed(topic, Some(key.as_bytes()), v);
        }

        fn feed_keyed(&mut self, topic: InputTopic, key: Option<&[u8]>, v: &str) {
            self.offset += 1;
            let src = Source {
                topic,
                partition: 0,
                offset: self.offset,
            };
            self.e
                .engine_mut()
                .on_record(src, key, Some(v.as_bytes()), &mut self.out);
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
            // The aggregation stage learns the new watermark.
            self.e.commit(&mut self.out);
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
                        Some((
                            w.window_start_ms - T0,
                            w.gmv_fen,
                            w.refund_fen,
                            w.paid_orders,
                        ))
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

        /// Cumulative figures once every partial sum has reached the aggregation stage.
        fn totals(&mut self, dim: Dim, key: &str) -> Option<Totals> {
            self.e.commit(&mut self.out);
            self.e.engine().totals(dim, key)
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
            assert_eq!(h.totals(Dim::Brand, "b1").unwrap().placed_orders, 1);
            assert_eq!(h.e.engine().stats().join_timeouts, [0, 0, 0]);
        }
    }

    #[test]
    fn payment_without_order_times_out_to_unknown_and_a_later_order_does_not_move_it() {
        let mut h = Harness::new(EngineConfig::default());
        h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 700, 10_000));
        h.heartbeat(10_000);
        // Watermark at 70 s - 5 s: not yet past 10 s + 60 s.
        h.heartbeat(74_999);
        assert_eq!(
            h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
            0
        );
        h.heartbeat(75_000);
        assert_eq!(
            h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
            1
        );
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
            h.totals(Dim::Brand, "b1").unwrap().placed_orders,
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
        assert_eq!(
            h.e.engine().stats().late_events[InputTopic::Payments.index()],
            1
        );
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
        assert_eq!(h.e.engine().stats().duplicates, [1, 1, 1]);
        let t = h.totals(Dim::Brand, "b1").unwrap();
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
                seen[0].crossed_at_ms - T0,
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
        h.now += 1;
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
                        && w.window_start_ms == T0
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
        assert_eq!(
            h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
            1
        );
        h.feed(InputTopic::Payments, &pay("p2", "o1", "paid", 5, 59_500));
        assert_eq!(h.dead(DeadReason::Late), 1);
    }

    #[test]
    fn records_keyed_otherwise_or_timed_implausibly_are_invalid() {
        let mut h = Harness::new(EngineConfig::default());
        let p = pay("p1", "o1", "paid", 5, 1_000);
        h.feed_keyed(InputTopic::Payments, None, &p);
        h.feed_keyed(InputTopic::Payments, Some(b"o2"), &p);
        // Seconds instead of milliseconds.
        let seconds = format!(
            r#"{{"payment_id":"p2","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
            (T0 + 1_000) / 1000
        );
        h.feed(InputTopic::Payments, &seconds);
        // A broken producer clock: just over time.max_future ahead of the wall clock.
        h.feed(InputTopic::Payments, &pay("p3", "o1", "paid", 5, 3_600_001));
        assert_eq!(h.dead(DeadReason::InvalidField), 4);
        assert_eq!(h.e.engine().stats().paid_fen, 0);
        // Exactly max_future ahead is still plausible.
        h.feed(InputTopic::Payments, &pay("p4", "o1", "paid", 5, 3_600_000));
        assert_eq!(h.dead(DeadReason::InvalidField), 4);
        assert_eq!(h.e.engine().stats().paid_fen, 5);
    }

    #[test]
    fn events_beyond_the_most_waiting_for_one_order_go_to_unknown_at_once() {
        use crate::core::join::MAX_WAITING_PER_ORDER;
        let mut h = Harness::new(EngineConfig::default());
        let n = MAX_WAITING_PER_ORDER + 5;
        for i in 0..n {
            h.feed(
                InputTopic::Payments,
                &pay(&format!("p{i}"), "o1", "paid", 1, 1_000),
            );
        }
        assert_eq!(h.e.engine().stats().join_overflows, [0, 5, 0]);
        h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
        let b1 = h.totals(Dim::Brand, "b1").unwrap();
        let unknown = h.totals(Dim::Brand, "unknown").unwrap();
        let total = h.totals(Dim::Total, "all").unwrap();
        assert_eq!(
            (b1.gmv_fen, unknown.gmv_fen, total.gmv_fen),
            (MAX_WAITING_PER_ORDER as i128, 5, n as i128),
            "every payment counted once: the total, and its order's brand or unknown"
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
        assert_eq!(h.totals(Dim::Brand, "b1").unwrap().delivered_orders, 1);
    }
}
