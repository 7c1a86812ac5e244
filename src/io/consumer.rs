//! The input consumer: reads the three input topics from the beginning
//! (state is rebuilt from input at this stage), commits only what the app says
//! is done, and exports per-partition lag from librdkafka's statistics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::telemetry::Metrics;

/// Client context: statistics become the consumer-lag metric, and the
/// results of asynchronous commits become the commit metrics.
pub struct LagContext {
    pub metrics: Option<Arc<Mutex<Metrics>>>,
    pub input_topics: Vec<String>,
    /// When the commit in flight was sent (commits are asynchronous).
    commit_sent: Mutex<Option<Instant>>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let Some(metrics) = &self.metrics else { return };
        let Ok(m) = metrics.lock() else { return };
        for (name, topic) in &stats.topics {
            if !self.input_topics.contains(name) {
                continue;
            }
            for (p, part) in &topic.partitions {
                // -1 is librdkafka's "unknown" (internal partition or no offsets yet).
                if *p >= 0 && part.consumer_lag >= 0 {
                    m.consumer_lag
                        .with_label_values(&[name, &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        let sent = self.commit_sent.lock().ok().and_then(|mut s| s.take());
        if let Err(e) = &result {
            // The next commit carries the same or later offsets; results are already durable.
            tracing::warn!("committing input offsets failed: {e}");
        }
        if let (Some(m), Some(sent)) = (&self.metrics, sent) {
            if let Ok(m) = m.lock() {
                m.commit(result.is_ok(), sent.elapsed().as_secs_f64());
            }
        }
    }
}

pub type InputConsumer = BaseConsumer<LagContext>;

/// Creates the consumer (not yet assigned).
pub fn create(cfg: &Config, metrics: Option<Arc<Mutex<Metrics>>>) -> anyhow::Result<InputConsumer> {
    let ours = [
        ("group.id", cfg.kafka.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", "100"),
    ];
    let ctx = LagContext {
        metrics,
        input_topics: cfg.topics.inputs().iter().map(|s| s.to_string()).collect(),
        commit_sent: Mutex::new(None),
    };
    super::client_config(&cfg.kafka, &ours, &cfg.kafka.consumer_properties)
        .create_with_context(ctx)
        .context("creating the Kafka consumer (check kafka.* settings)")
}

/// Assigns every partition of the input topics from the beginning.
pub fn assign_from_beginning(
    c: &InputConsumer,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .context("building the assignment")?;
        }
    }
    c.assign(&tpl).context("assigning input partitions")
}

/// Commits `offsets` (topic, partition, next offset) without waiting: the
/// result arrives in [`LagContext::commit_callback`].
pub fn commit(c: &InputConsumer, offsets: &[(String, i32, i64)]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        if *o > 0 {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .context("building the commit")?;
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    c.commit(&tpl, rdkafka::consumer::CommitMode::Async)
        .context("committing input offsets")
}

/// Poll timeout while waiting for input.
pub const POLL_WAIT: Duration = Duration::from_millis(50);
