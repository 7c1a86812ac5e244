//! The input partitions read in step. Each assigned (input topic, partition)
//! gets its own librdkafka queue (a lane), and the loop reads next from the lane
//! whose last record is the oldest by Kafka timestamp, as Kafka Streams picks a
//! task's next record. From the one queue librdkafka fills in fetch order, a
//! job catching up read all of `payments` before most of `orders`: every payment
//! then waited in the join for its order and was written to the changelog twice
//! (docs/performance.md). Order within a partition is what Kafka guarantees and
//! all the engine relies on; the lanes only keep topics close to each other.

use std::sync::Arc;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::{BorrowedMessage, Message};

use super::consumer::{InputConsumer, LagContext};

/// Records read from one lane before the lanes are compared again.
pub const LANE_BATCH: usize = 500;

struct Lane {
    queue: PartitionQueue<LagContext>,
    /// Kafka timestamp of the last record read from it (`i64::MIN`: none yet).
    last_ms: i64,
}

/// The lanes of the current assignment.
#[derive(Default)]
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Lane indices, oldest first; reused between calls.
    order: Vec<usize>,
}

impl Lanes {
    /// Takes `parts` out of the consumer's queue. Call right after `assign`,
    /// before the next poll, which would otherwise hand them out first.
    pub fn split(consumer: &Arc<InputConsumer>, parts: &[(&str, i32)]) -> anyhow::Result<Lanes> {
        let lanes = parts
            .iter()
            .map(|(topic, p)| {
                consumer
                    .split_partition_queue(topic, *p)
                    .map(|queue| Lane {
                        queue,
                        last_ms: i64::MIN,
                    })
                    .ok_or_else(|| anyhow::anyhow!("no queue for {topic} [{p}]"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Lanes {
            order: (0..lanes.len()).collect(),
            lanes,
        })
    }

    /// Reads up to `max` records from the oldest lane that has any, handing
    /// each to `f`; 0 when every lane is empty. Never blocks.
    pub fn read(&mut self, max: usize, mut f: impl FnMut(&BorrowedMessage<'_>)) -> usize {
        let lanes = &mut self.lanes;
        self.order.sort_unstable_by_key(|&i| lanes[i].last_ms);
        for &i in &self.order {
            let lane = &mut lanes[i];
            let mut n = 0;
            while n < max {
                match lane.queue.poll(std::time::Duration::ZERO) {
                    Some(Ok(m)) => {
                        if let Some(ts) = m.timestamp().to_millis() {
                            lane.last_ms = ts;
                        }
                        f(&m);
                        n += 1;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("consumer: {e}");
                        break;
                    }
                    None => break,
                }
            }
            if n > 0 {
                return n;
            }
        }
        0
    }
}
