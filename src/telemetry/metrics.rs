//! The job's metrics (see docs/metrics.md), and their update from engine
//! counters and outputs. Labels are bounded: topics, reasons, dims, top N keys.

use std::collections::VecDeque;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::core::engine::{StateSize, Stats};
use crate::core::output::{Dim, MilestoneRecord, OutputTopic};
use crate::model::{DeadReason, InputTopic};

/// Milestones kept as labelled series; older ones are removed to bound cardinality.
const RECENT_MILESTONES: usize = 50;

pub struct Metrics {
    pub registry: Registry,
    paid_fen: IntCounter,
    refunded_fen: IntCounter,
    paid_orders: IntCounter,
    placed_orders: IntCounter,
    shipped_orders: IntCounter,
    delivered_orders: IntCounter,
    cumulative_gmv_fen: IntGauge,
    top_gmv_fen: IntGaugeVec,
    milestones: IntCounterVec,
    milestone_emitted: IntGaugeVec,
    recent_milestones: VecDeque<[String; 3]>,
    /// Keys currently exported per dimension, to remove those that leave the top N.
    top_keys: [Vec<String>; 4],
    pay_to_delivery: Histogram,
    events_read: IntCounterVec,
    dead_letters: IntCounterVec,
    late_events: IntCounterVec,
    duplicates: IntCounterVec,
    join_timeouts: IntCounterVec,
    join_overflows: IntCounterVec,
    late_partials: IntCounter,
    record_limit_bytes: IntGauge,
    watermark: prometheus::Gauge,
    watermark_lag: prometheus::Gauge,
    input_partitions: IntGaugeVec,
    tasks: IntGaugeVec,
    stage_partitions: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    batch_processing: Histogram,
    end_to_end_latency: Histogram,
    /// The same two latencies as HdrHistograms, for exact quantiles in the logs.
    batch_us: hdrhistogram::Histogram<u64>,
    end_to_end_ms: hdrhistogram::Histogram<u64>,
    output_records: IntCounterVec,
    output_errors: IntCounterVec,
    commits: IntCounterVec,
    pub commit_duration: Histogram,
    commit_wait_us: IntCounter,
    pub rebalances: IntCounter,
    /// Offsets of an input the broker deleted before the job read them.
    pub offsets_skipped: IntCounterVec,
    state_entries: IntGaugeVec,
    state_bytes: IntGauge,
    last: Stats,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("gmv".into()), None).expect("valid namespace");
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
        };
        let latency_buckets = exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
        let m = Metrics {
            paid_fen: counter("paid_fen_total", "GMV: value of paid payments counted, in fen"),
            refunded_fen: counter("refunded_fen_total", "Value of refunds counted, in fen"),
            paid_orders: counter("paid_orders_total", "Paid payments counted"),
            placed_orders: counter("placed_orders_total", "Orders placed (after de-duplication)"),
            shipped_orders: counter("shipped_orders_total", "Shipped delivery events counted"),
            delivered_orders: counter("delivered_orders_total", "Delivered delivery events counted"),
            cumulative_gmv_fen: reg(&r, IntGauge::new("cumulative_gmv_fen", "Cumulative GMV since the start of the sale, in fen").expect("valid metric")),
            top_gmv_fen: gauge_vec("top_gmv_fen", "Cumulative GMV of the top N keys per dimension, and key=other for the rest, in fen", &["dim", "key"]),
            milestones: counter_vec("milestones_total", "Milestones emitted", &["dim"]),
            milestone_emitted: gauge_vec(
                "milestone_emitted_timestamp_seconds",
                "Wall time a milestone was emitted (the 50 most recent)",
                &["dim", "key", "threshold_fen"],
            ),
            recent_milestones: VecDeque::new(),
            top_keys: Default::default(),
            pay_to_delivery: histogram(
                "pay_to_delivery_seconds",
                "Event time from an order's first payment to its delivery",
                exponential_buckets(60.0, 2.0, 14).expect("valid buckets"),
            ),
            events_read: counter_vec("events_read_total", "Input records read", &["topic"]),
            dead_letters: counter_vec("dead_letters_total", "Records sent to dead-letters", &["reason"]),
            late_events: counter_vec("late_events_total", "Events dropped as late", &["topic"]),
            duplicates: counter_vec("duplicates_dropped_total", "Repeated ids dropped within dedup_ttl", &["topic"]),
            join_timeouts: counter_vec("join_timeouts_total", "Payments and deliveries whose order did not come within join_timeout", &["topic"]),
            join_overflows: counter_vec("join_overflows_total", "Payments and deliveries counted under unknown at once: their order had the most events waiting already", &["topic"]),
            record_limit_bytes: reg(&r, IntGauge::new("record_limit_bytes", "Largest record the job writes: kafka.max_record_bytes, halved each time the broker refuses one for its size").expect("valid metric")),
            late_partials: counter("late_partials_total", "Partial sums whose bucket had closed when they reached the aggregation stage (a partition back from idleness behind the others)"),
            watermark: reg(&r, prometheus::Gauge::new("watermark_timestamp_seconds", "The job's event-time watermark").expect("valid metric")),
            watermark_lag: reg(&r, prometheus::Gauge::new("watermark_lag_seconds", "Wall time minus the watermark").expect("valid metric")),
            input_partitions: gauge_vec("input_partitions", "Assigned input partitions by idleness", &["state"]),
            stage_partitions: gauge_vec("stage_partitions", "Partitions the tasks of a stage come from: one input topic's (attribution), the repartition topic's (aggregation); every instance exports the same", &["stage"]),
            tasks: gauge_vec("tasks", "Tasks this instance owns, by stage; summed over the instances, one per input partition (attribution) and one per repartition partition (aggregation) when none is left unowned", &["stage"]),
            consumer_lag: gauge_vec("consumer_lag_messages", "Consumer lag per input partition (librdkafka statistics)", &["topic", "partition"]),
            batch_processing: histogram("batch_processing_seconds", "Time to decode and process one batch of input records", latency_buckets.clone()),
            end_to_end_latency: histogram(
                "end_to_end_latency_seconds",
                "From the newest input record's Kafka timestamp in a commit interval to that transaction's commit",
                latency_buckets.clone(),
            ),
            output_records: counter_vec("output_records_total", "Output records acknowledged by the broker", &["topic"]),
            output_errors: counter_vec("output_errors_total", "Output records the broker could not take", &["topic"]),
            commits: counter_vec("commits_total", "Offset commits", &["result"]),
            commit_duration: histogram("commit_duration_seconds", "Time of one offset commit", latency_buckets),
            // Integer microseconds: time that sums is kept in integers.
            commit_wait_us: counter("commit_wait_microseconds_total", "Time the loop waited for a commit to end before sending the next transaction"),
            rebalances: counter("rebalances_total", "Partition assignments changed"),
            offsets_skipped: counter_vec("input_offsets_skipped_total", "Offsets of an input the broker deleted (retention) before the job read them: their records are in no total", &["topic"]),
            state_entries: gauge_vec("state_entries", "Size of in-memory state", &["kind"]),
            state_bytes: reg(&r, IntGauge::new("state_bytes", "Bytes held by the order stores and de-duplication sets").expect("valid metric")),
            last: Stats::default(),
            batch_us: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            end_to_end_ms: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds"),
            registry: r.clone(),
        };
        reg(
            &r,
            IntGaugeVec::new(
                Opts::new("build_info", "Build of the job; always 1"),
                &["version"],
            )
            .expect("valid metric"),
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .ok();
        // Create every labelled series up front so dashboards and rules see zeros, not gaps.
        for t in InputTopic::ALL {
            for v in [&m.events_read, &m.late_events, &m.duplicates] {
                v.with_label_values(&[t.label()]);
            }
        }
        for t in [InputTopic::Payments, InputTopic::Deliveries] {
            m.join_timeouts.with_label_values(&[t.label()]);
            m.join_overflows.with_label_values(&[t.label()]);
        }
        for reason in DeadReason::ALL {
            m.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for t in OutputTopic::ALL {
            m.output_records.with_label_values(&[t.label()]);
            m.output_errors.with_label_values(&[t.label()]);
        }
        for d in [Dim::Total, Dim::Brand, Dim::Channel] {
            m.milestones.with_label_values(&[d.as_str()]);
        }
        for r in ["ok", "error"] {
            m.commits.with_label_values(&[r]);
        }
        m
    }

    /// Adds what the engine counted since the last call.
    pub fn sync_stats(&mut self, s: &Stats) {
        let d = |now: u64, before: u64| now.saturating_sub(before);
        let dm = |now: i128, before: i128| u64::try_from(now - before).unwrap_or(0);
        self.paid_fen.inc_by(dm(s.paid_fen, self.last.paid_fen));
        self.refunded_fen
            .inc_by(dm(s.refunded_fen, self.last.refunded_fen));
        self.paid_orders
            .inc_by(d(s.paid_orders, self.last.paid_orders));
        self.placed_orders
            .inc_by(d(s.placed_orders, self.last.placed_orders));
        self.shipped_orders
            .inc_by(d(s.shipped_orders, self.last.shipped_orders));
        self.delivered_orders
            .inc_by(d(s.delivered_orders, self.last.delivered_orders));
        self.late_partials
            .inc_by(d(s.late_partials, self.last.late_partials));
        for t in InputTopic::ALL {
            let i = t.index();
            let l = [t.label()];
            self.events_read
                .with_label_values(&l)
                .inc_by(d(s.events_read[i], self.last.events_read[i]));
            self.late_events
                .with_label_values(&l)
                .inc_by(d(s.late_events[i], self.last.late_events[i]));
            self.duplicates
                .with_label_values(&l)
                .inc_by(d(s.duplicates[i], self.last.duplicates[i]));
            if t != InputTopic::Orders {
                self.join_timeouts
                    .with_label_values(&l)
                    .inc_by(d(s.join_timeouts[i], self.last.join_timeouts[i]));
                self.join_overflows
                    .with_label_values(&l)
                    .inc_by(d(s.join_overflows[i], self.last.join_overflows[i]));
            }
        }
        for r in DeadReason::ALL {
            let i = r.index();
            self.dead_letters
                .with_label_values(&[r.as_str()])
                .inc_by(d(s.dead_letters[i], self.last.dead_letters[i]));
        }
        for dim in Dim::ALL {
            let i = dim.index();
            if s.milestones[i] > self.last.milestones[i] {
                self.milestones
                    .with_label_values(&[dim.as_str()])
                    .inc_by(s.milestones[i] - self.last.milestones[i]);
            }
        }
        self.last = s.clone();
    }

    pub fn set_watermark(&mut self, watermark_ms: i64, now_ms: i64) {
        if watermark_ms > 0 {
            self.watermark.set(watermark_ms as f64 / 1000.0);
            self.watermark_lag
                .set((now_ms - watermark_ms) as f64 / 1000.0);
        }
    }

    pub fn set_partitions(&self, assigned: usize, idle: usize) {
        self.input_partitions
            .with_label_values(&["active"])
            .set((assigned - idle) as i64);
        self.input_partitions
            .with_label_values(&["idle"])
            .set(idle as i64);
    }

    pub fn set_tasks(&self, attribution: usize, aggregation: usize) {
        by_stage(&self.tasks, attribution as i64, aggregation as i64);
    }

    /// The attribution tasks this instance owns, as last set.
    pub fn attribution_tasks(&self) -> i64 {
        self.tasks.with_label_values(&["attribution"]).get()
    }

    /// What `gmv_tasks` summed over the instances should reach (alert `GmvTasksUnowned`).
    pub fn set_stage_partitions(&self, attribution: i32, aggregation: i32) {
        by_stage(
            &self.stage_partitions,
            attribution.into(),
            aggregation.into(),
        );
    }

    pub fn set_state(&self, s: StateSize) {
        for (kind, v) in [
            ("orders", s.orders),
            ("pending_joins", s.pending_joins),
            ("dedup_ids", s.dedup_ids),
            ("open_windows", s.open_windows),
            ("open_buckets", s.open_buckets),
            ("keys", s.keys),
            ("changelog_batches", s.changelog_batches),
            ("changelog_pinned", s.changelog_pinned),
        ] {
            self.state_entries.with_label_values(&[kind]).set(v as i64);
        }
        self.state_bytes.set(s.order_bytes as i64);
    }

    /// Replaces the top-N series of one dimension.
    pub fn set_top(
        &mut self,
        dim: Dim,
        top: &[(String, i128)],
        other: i128,
        cumulative_total: Option<i128>,
    ) {
        if let Some(total) = cumulative_total {
            self.cumulative_gmv_fen.set(clamp(total));
        }
        let shown = &mut self.top_keys[dim.index()];
        for key in shown.iter() {
            if !top.iter().any(|(k, _)| k == key) {
                let _ = self.top_gmv_fen.remove_label_values(&[dim.as_str(), key]);
            }
        }
        *shown = top.iter().map(|(k, _)| k.clone()).collect();
        for (key, gmv) in top {
            self.top_gmv_fen
                .with_label_values(&[dim.as_str(), key])
                .set(clamp(*gmv));
        }
        self.top_gmv_fen
            .with_label_values(&[dim.as_str(), "other"])
            .set(clamp(other));
    }

    pub fn milestone_emitted(&mut self, m: &MilestoneRecord, now_ms: i64) {
        let labels = [
            m.dim.as_str().to_string(),
            m.key.clone(),
            m.threshold_fen.to_string(),
        ];
        let refs = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
        self.milestone_emitted
            .with_label_values(&refs)
            .set(now_ms / 1000);
        self.recent_milestones.push_back(labels);
        while self.recent_milestones.len() > RECENT_MILESTONES {
            if let Some(old) = self.recent_milestones.pop_front() {
                let _ = self
                    .milestone_emitted
                    .remove_label_values(&[&old[0], &old[1], &old[2]]);
            }
        }
    }

    pub fn pay_to_delivery(&self, millis: i64) {
        self.pay_to_delivery.observe(millis.max(0) as f64 / 1000.0);
    }

    /// One poll batch was decoded and processed in `seconds`.
    pub fn observe_batch(&mut self, seconds: f64) {
        self.batch_processing.observe(seconds);
        self.batch_us.saturating_record((seconds * 1e6) as u64);
    }

    /// An emit cycle's outputs were acknowledged `millis` after its newest input was written.
    pub fn observe_end_to_end(&mut self, millis: i64) {
        self.end_to_end_latency
            .observe(millis.max(0) as f64 / 1000.0);
        self.end_to_end_ms.saturating_record(millis.max(0) as u64);
    }

    /// Logs p50, p99, p99.9 and max of both latencies since the last call, then starts afresh.
    pub fn log_latencies(&mut self) {
        for (name, h, unit) in [
            ("batch processing", &mut self.batch_us, "us"),
            ("end to end", &mut self.end_to_end_ms, "ms"),
        ] {
            if h.is_empty() {
                continue;
            }
            tracing::info!(
                "{name} latency ({unit}): n={} p50={} p99={} p99.9={} max={}",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
            h.reset();
        }
    }

    pub fn commit(&self, ok: bool, seconds: f64) {
        self.commits
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.commit_duration.observe(seconds);
    }

    /// The loop waited `waited` for the commit in flight (it commits in the background).
    pub fn commit_waited(&self, waited: std::time::Duration) {
        self.commit_wait_us.inc_by(waited.as_micros() as u64);
    }

    pub fn encode(&self) -> String {
        encode(&self.registry)
    }

    pub fn set_record_limit(&self, bytes: usize) {
        self.record_limit_bytes.set(bytes as i64);
    }

    /// The registry, for readers on other threads (its metrics are atomics).
    pub fn registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// The delivery counters, for the producer's delivery reports (no lock).
    pub fn output_counters(&self) -> OutputCounters {
        OutputCounters {
            records: self.output_records.clone(),
            errors: self.output_errors.clone(),
        }
    }
}

/// A registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut buf = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut buf)
        .expect("text encoding");
    buf
}

/// Records acknowledged, and refused, per output topic.
#[derive(Clone)]
pub struct OutputCounters {
    records: IntCounterVec,
    errors: IntCounterVec,
}

impl OutputCounters {
    pub fn acked(&self, topic: OutputTopic, ok: bool) {
        let l = [topic.label()];
        if ok {
            self.records.with_label_values(&l).inc();
        } else {
            self.errors.with_label_values(&l).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn clamp(v: i128) -> i64 {
    v.clamp(0, i64::MAX as i128) as i64
}

/// Sets a gauge labelled by `stage`, both stages at once.
fn by_stage(gauge: &IntGaugeVec, attribution: i64, aggregation: i64) {
    for (stage, n) in [("attribution", attribution), ("aggregation", aggregation)] {
        gauge.with_label_values(&[stage]).set(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_engine_stats_by_delta() {
        let mut m = Metrics::new();
        let mut s = Stats {
            paid_fen: 500,
            ..Stats::default()
        };
        s.dead_letters[DeadReason::Late.index()] = 2;
        m.sync_stats(&s);
        s.paid_fen = 800;
        m.sync_stats(&s);
        let text = m.encode();
        assert!(text.contains("gmv_paid_fen_total 800"), "{text}");
        assert!(text.contains("gmv_dead_letters_total{reason=\"late\"} 2"));
        assert!(text.contains("gmv_dead_letters_total{reason=\"too_large\"} 0"));
    }

    #[test]
    fn latencies_go_to_prometheus_and_to_the_hdr_histograms_for_the_log() {
        let mut m = Metrics::new();
        m.observe_batch(0.002);
        m.observe_end_to_end(1_500);
        assert!(m
            .encode()
            .contains("gmv_end_to_end_latency_seconds_count 1"));
        assert_eq!((m.batch_us.len(), m.end_to_end_ms.max()), (1, 1_500));
        m.log_latencies();
        assert!(
            m.batch_us.is_empty() && m.end_to_end_ms.is_empty(),
            "each log covers the time since the last"
        );
    }

    #[test]
    fn top_series_are_replaced_and_milestone_series_bounded() {
        let mut m = Metrics::new();
        m.set_top(Dim::Brand, &[("a".into(), 5), ("b".into(), 3)], 1, Some(9));
        m.set_top(Dim::Brand, &[("c".into(), 7), ("a".into(), 6)], 2, Some(15));
        let text = m.encode();
        assert!(text.contains("gmv_top_gmv_fen{dim=\"brand\",key=\"c\"} 7"));
        assert!(!text.contains("key=\"b\""), "b left the top N");
        assert!(text.contains("gmv_cumulative_gmv_fen 15"));
        for i in 0..(RECENT_MILESTONES + 5) {
            let r = MilestoneRecord {
                dim: Dim::Brand,
                key: format!("k{i}"),
                threshold_fen: 1,
                crossed_at_ms: 0,
                gmv_fen: 1,
            };
            m.milestone_emitted(&r, 1_000);
        }
        assert_eq!(
            m.encode()
                .matches("gmv_milestone_emitted_timestamp_seconds{")
                .count(),
            RECENT_MILESTONES
        );
    }
}
