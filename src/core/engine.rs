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
use super::attribution::{self, new_names, AttributionTask, Names, Partials};
use super::commit::{Stage, Sums, Work};
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

/// An engine's tasks of one stage, by partition number: a slot per number up
/// to the largest held (boxed: 8 bytes a number, where a task is 1.5 KB).
/// Looked up twice per record (the hint, then the record), where a
/// `BTreeMap` compared its way down a node each time. Iterates in partition order.
#[derive(Debug)]
struct Tasks<T> {
    slots: Vec<Option<Box<T>>>,
    len: usize,
}

impl<T> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Tasks<T> {
    fn get(&self, p: &i32) -> Option<&T> {
        usize::try_from(*p)
            .ok()
            .and_then(|i| self.slots.get(i)?.as_deref())
    }

    fn get_mut(&mut self, p: &i32) -> Option<&mut T> {
        usize::try_from(*p)
            .ok()
            .and_then(|i| self.slots.get_mut(i)?.as_deref_mut())
    }

    /// Partition numbers are Kafka's, never negative.
    fn insert(&mut self, p: i32, t: T) {
        let i = usize::try_from(p).expect("a partition number is not negative");
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.len += self.slots[i].is_none() as usize;
        self.slots[i] = Some(Box::new(t));
    }

    fn retain(&mut self, mut keep: impl FnMut(&i32, &mut T) -> bool) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_mut().is_some_and(|t| !keep(&(i as i32), t)) {
                *slot = None;
                self.len -= 1;
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|t| &**t)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten().map(|t| &mut **t)
    }
}

/// What the reader knows of the records a few places on in its batch (of one
/// topic and partition), for [`Engine::prefetch`]. Two distances, as a hint
/// can only ask for what the hints before it have brought: an entry's
/// address is in its line of the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ahead<'a> {
    /// The key of the record `io::lanes::PREFETCH_AHEAD` on: its order's line
    /// of the index is asked for.
    pub line: Option<&'a [u8]>,
    /// The key of the record `io::lanes::ENTRY_AHEAD` on: its order's entry
    /// is asked for.
    pub entry: Option<&'a [u8]>,
    /// That record's value: the line of its payment or delivery id.
    pub entry_value: Option<&'a [u8]>,
}

impl<'a> Ahead<'a> {
    /// The line's hint alone, for a reader that hints one record at a time
    /// (the benches: their records are of any partition and topic).
    pub fn line(key: Option<&'a [u8]>) -> Self {
        Ahead {
            line: key,
            ..Ahead::default()
        }
    }

    /// The entry's hint alone (see [`Ahead::line`]).
    pub fn entry(key: Option<&'a [u8]>, value: &'a [u8]) -> Self {
        Ahead {
            entry: key,
            entry_value: Some(value),
            ..Ahead::default()
        }
    }
}

/// The tasks one instance runs, and the counters they share.
#[derive(Debug)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    attribution: Tasks<AttributionTask>,
    /// The attribution tasks' name table, shared.
    names: Names,
    /// The attribution tasks' partial sums, shared.
    partials: Partials,
    aggregation: Tasks<AggregationTask>,
    stats: Stats,
}

impl Engine {
    /// An engine without tasks; the caller adds them as it restores them.
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg: Arc::new(cfg),
            attribution: Tasks::default(),
            names: new_names(),
            partials: Partials::default(),
            aggregation: Tasks::default(),
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
        let task = AttributionTask::with_shared(
            partition,
            self.cfg.clone(),
            now_ms,
            self.names.clone(),
            self.partials.clone(),
        );
        self.attribution.insert(partition, task);
        self.attribution.get_mut(&partition).expect("just inserted")
    }

    pub fn add_aggregation(&mut self, partition: i32, source_count: usize) -> &mut AggregationTask {
        let task = AggregationTask::new(partition, self.cfg.clone(), source_count);
        self.aggregation.insert(partition, task);
        self.aggregation.get_mut(&partition).expect("just inserted")
    }

    /// Every task lists its state changes from now on, for the changelog
    /// records of [`Engine::take_work`] (`gmv run` does it per task, at its restore).
    pub fn track_changes(&mut self) {
        self.attribution
            .values_mut()
            .for_each(AttributionTask::track_changes);
        self.aggregation
            .values_mut()
            .for_each(AggregationTask::track_changes);
    }

    /// Drops every task but those `owned` says this instance keeps (the others
    /// are restored from their changelogs when they come back).
    pub fn retain(&mut self, owned: impl Fn(Stage, i32) -> bool) {
        let before = self.attribution.len();
        self.attribution
            .retain(|p, _| owned(Stage::Attribution, *p));
        if self.attribution.len() < before {
            // Tasks go all together (a failed commit: all restore from the last
            // one) or right after a commit, which took every sum: what is left
            // was counted by tasks that count it again once restored.
            let mut partials = self.partials.borrow_mut();
            if !self.attribution.is_empty() && !partials.is_empty() {
                tracing::error!(
                    kept = self.attribution.len(),
                    sums = partials.len(),
                    "attribution tasks dropped while others kept uncommitted sums: the sums are dropped"
                );
            }
            partials.clear();
        }
        self.aggregation
            .retain(|p, _| owned(Stage::Aggregation, *p));
    }

    /// Hints for records of `topic` and `partition` that [`Engine::on_record`]
    /// gets soon ([`Ahead`]), so that their look-ups do not wait on memory
    /// (docs/performance.md).
    pub fn prefetch(&self, partition: i32, topic: InputTopic, ahead: Ahead<'_>) {
        if let Some(t) = self.attribution.get(&partition) {
            t.prefetch(topic, ahead);
        }
    }

    /// Processes one input record in its partition's attribution task;
    /// its event time if it was a valid event ([`AttributionTask::on_record`]).
    pub fn on_record(
        &mut self,
        source: Source,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        out: &mut Vec<Output>,
    ) -> Option<i64> {
        match self.attribution.get_mut(&source.partition) {
            Some(t) => t.on_record(source, key, value, &mut self.stats, out),
            None => {
                tracing::warn!(
                    partition = source.partition,
                    "record of a partition this instance does not own"
                );
                None
            }
        }
    }

    /// Input partitions that turn idle at `now_ms` unless touched (see
    /// [`crate::core::watermark::Watermarks::turning_idle`]).
    pub fn turning_idle(&self, now_ms: i64) -> Vec<PartitionId> {
        self.attribution
            .values()
            .flat_map(|t| t.turning_idle(now_ms))
            .collect()
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

    /// Everything the tasks did since the last call, for one transaction: the
    /// attribution tasks' partial sums, merged and split over
    /// `aggregation_partitions`, with each task's progress; every task's
    /// changelog records (after `emit`, so revisions are current); and where
    /// each stopped reading.
    pub fn take_work(&mut self, aggregation_partitions: i32) -> Work {
        let mut work = Work::default();
        for t in self.attribution.values_mut() {
            let task = (Stage::Attribution, t.partition());
            t.drain_changes(|k, v| work.changes.push((task, k.to_vec(), v.map(<[u8]>::to_vec))));
            work.read.push((task, t.next_offsets().to_vec()));
        }
        // One entry per key and bucket for the instance (`Partials`).
        let r_count = aggregation_partitions.max(1);
        let mut split = vec![Vec::new(); r_count as usize];
        for e in attribution::take_named(&self.partials, &self.names) {
            split[state::aggregation_partition(e.dim, &e.key, r_count) as usize].push(e);
        }
        work.sums = Sums {
            split,
            progress: self
                .attribution
                .values()
                .map(|t| (t.partition(), t.progress()))
                .collect(),
        };
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
mod tests;
