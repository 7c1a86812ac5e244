//! The input consumer: reads the three input topics from the beginning
//! (state is rebuilt from input at this stage), commits only what the app says
//! is done, and exports per-partition lag from librdkafka's statistics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::telemetry::Metrics;

/// Client context that turns statistics into the consumer-lag metric.
pub struct LagContext {
    pub metrics: Option<Arc<Mutex<Metrics>>>,
    pub input_topics: Vec<String>,
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

impl ConsumerContext for LagContext {}

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
        // A deep prefetch queue keeps the loop fed while a fetch round trip is in flight;
        // with librdkafka's 64 MB default the loop waited on refills (docs/performance.md).
        ("queued.max.messages.kbytes", "262144"),
        ("queued.min.messages", "1000000"),
    ];
    let ctx = LagContext {
        metrics,
        input_topics: cfg.topics.inputs().iter().map(|s| s.to_string()).collect(),
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

/// Commits `offsets` (topic, partition, next offset) and waits for the broker.
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
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .context("committing input offsets")
}

/// Poll timeout while waiting for input.
pub const POLL_WAIT: Duration = Duration::from_millis(50);
