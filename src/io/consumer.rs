//! The consumer: a member of the job's consumer group reading the input and
//! repartition topics with `read_committed`. A revoke or a new assignment is
//! handed to the loop, and taken only once the loop calls `unassign` or
//! `assign` (librdkafka waits for that call, heartbeating meanwhile): on a
//! revoke the loop first commits what is done, while the group generation
//! still holds; on a new assignment it first restores the new tasks' state,
//! then assigns the partitions at the group's committed offsets. It also
//! exports per-partition lag from librdkafka's statistics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::config::Config;
use crate::telemetry::Metrics;

/// Client context: lag metric, and rebalance handling for the group member.
pub struct LagContext {
    pub metrics: Option<Arc<Mutex<Metrics>>>,
    pub input_topics: Vec<String>,
    /// Set on every assignment change; the loop restores state before going on.
    pub rebalanced: Arc<AtomicBool>,
    /// The latest rebalance event not yet handled by the loop.
    pub pending: Mutex<Option<Assignment>>,
    /// The loop runs, and gives revoked partitions up itself once it has
    /// committed; otherwise (the consumer closing) the callback gives them up
    /// at once, or librdkafka would wait for that forever.
    pub loop_handles_revokes: AtomicBool,
}

/// A rebalance event for the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These (topic, partition)s are ours: restore, then `assign` them.
    Assign(Vec<(String, i32)>),
    /// Everything is taken away: commit, then `unassign`. `lost`: the group
    /// moved on without this member (its session ended), so there is no
    /// generation left to commit in.
    Revoke { lost: bool },
}

impl ClientContext for LagContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The changelog reader asks for end-of-partition events; they are not errors.
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    fn stats(&self, stats: Statistics) {
        let Some(metrics) = &self.metrics else { return };
        let Ok(m) = metrics.lock() else { return };
        for (name, topic) in &stats.topics {
            if !self.input_topics.contains(name) {
                continue;
            }
            for (p, part) in &topic.partitions {
                // -1 is librdkafka's "unknown" (internal partition or no offsets yet).
                // Offsets committed in a transaction are not the consumer's own commits,
                // so fall back to the position handed to the application.
                let lag = if part.consumer_lag >= 0 {
                    part.consumer_lag
                } else if part.app_offset >= 0 && part.hi_offset >= 0 {
                    (part.hi_offset - part.app_offset).max(0)
                } else {
                    -1
                };
                if *p >= 0 && lag >= 0 {
                    m.consumer_lag
                        .with_label_values(&[name, &p.to_string()])
                        .set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Assignment::Assign(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect(),
            ),
            other => {
                let revoke = other == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
                if !revoke {
                    tracing::error!("rebalance error: {other:?}");
                }
                // Read now: librdkafka answers it only until the partitions are given up.
                let lost = consumer.assignment_lost();
                if !revoke || !self.loop_handles_revokes.load(Ordering::SeqCst) {
                    if let Err(e) = consumer.unassign() {
                        tracing::warn!("unassigning: {e}");
                    }
                }
                Assignment::Revoke { lost }
            }
        };
        *self.pending.lock().expect("pending lock") = Some(event);
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

pub type InputConsumer = BaseConsumer<LagContext>;

/// Creates a consumer (not yet assigned or subscribed).
pub fn create(cfg: &Config, metrics: Option<Arc<Mutex<Metrics>>>) -> anyhow::Result<InputConsumer> {
    let ours = [
        // Range keeps partition p of every co-partitioned input topic on one member;
        // librdkafka's cooperative-sticky does not promise that (docs/scaling.md).
        ("partition.assignment.strategy", "range"),
        ("group.id", cfg.kafka.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // The job assigns every partition at an offset of its own (committed,
        // or the log's start), so librdkafka resets one only when the log no
        // longer holds it: retention deleted records before the job read them.
        // `earliest` moved on to the log's start with a log line alone, and the
        // totals missed those records unsaid; `error` hands the reset to the
        // loop, which counts the offsets skipped and resumes there itself
        // (`app/recovery.rs`).
        ("auto.offset.reset", "error"),
        ("isolation.level", "read_committed"),
        ("statistics.interval.ms", "5000"),
        // A member learns of a rebalance at its next heartbeat: at librdkafka's
        // default (3 s) an added or a stopped instance paused every output for
        // 2–7 s (`cargo bench --bench rebalance`, docs/performance.md).
        ("heartbeat.interval.ms", "500"),
        ("fetch.wait.max.ms", "100"),
        // The input is read through per-partition queues (`lanes`), where these
        // prefetch limits apply per partition, not to the whole consumer: enough to
        // cover a fetch round trip at full speed, without buffering a whole backlog
        // (every byte of it fresh memory, which costs here: docs/performance.md).
        ("queued.max.messages.kbytes", "8192"),
        ("queued.min.messages", "100000"),
        // A partition whose queue reached those limits is fetched again only after
        // this wait (librdkafka's default: 1 s). Per partition, the loop drains a full
        // queue in well under a second, then sat idle for the rest of it: the job
        // waited for input a third of the time while it caught up.
        ("fetch.queue.backoff.ms", "10"),
    ];
    let ctx = LagContext {
        metrics,
        input_topics: cfg.topics.inputs().iter().map(|s| s.to_string()).collect(),
        rebalanced: Arc::new(AtomicBool::new(false)),
        pending: Mutex::new(None),
        loop_handles_revokes: AtomicBool::new(false),
    };
    super::client_config(&cfg.kafka, &ours, &cfg.kafka.consumer_properties)
        .create_with_context(ctx)
        .context("creating the Kafka consumer (check kafka.* settings)")
}

/// Whether another process of this instance is a member of the job's group: a
/// second process started with the same `kafka.instance_id`, so with the same
/// `transactional.id`, which fenced this one's producer on purpose. (This
/// process's own earlier membership, lost while the broker was away, carries
/// its own client id and does not count.)
pub fn another_process_is(c: &InputConsumer, cfg: &Config) -> anyhow::Result<bool> {
    let (instance, own) = (
        format!("{}.", super::instance_client_id(&cfg.kafka)),
        super::client_id(&cfg.kafka),
    );
    let groups = c
        .fetch_group_list(Some(&cfg.kafka.group_id), Duration::from_secs(10))
        .context("listing the consumer group's members")?;
    Ok(groups
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .any(|m| m.client_id().starts_with(&instance) && m.client_id() != own))
}

/// The group generation this member is in (`None`: in none, e.g. its session lost).
pub fn generation(c: &InputConsumer) -> Option<i32> {
    // SAFETY: a live client; the metadata object is read, then destroyed once.
    let generation = unsafe {
        let md = rdkafka::bindings::rd_kafka_consumer_group_metadata(c.client().native_ptr());
        if md.is_null() {
            return None;
        }
        let g = rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(md);
        rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(md);
        g
    };
    (generation >= 0).then_some(generation)
}

/// Where each of `partitions` resumes: the group's committed offset, or the
/// partition's first offset where none was committed. A `read_committed`
/// consumer asks with `require_stable` (KIP-447): the broker answers once no
/// transaction holding offsets for them is open, so the previous owner's last
/// transaction has ended before the restore reads the changelogs.
///
/// With `counted` (after librdkafka found an offset out of the log's range),
/// each committed offset is checked against what the log holds now
/// ([`resume_at`]); `counted` keeps, per partition, up to where deleted
/// offsets were counted, so that a second reset before the next commit does
/// not count them again.
pub fn committed_offsets(
    c: &InputConsumer,
    partitions: &[(&str, i32)],
    mut counted: Option<&mut BTreeMap<(String, i32), i64>>,
) -> anyhow::Result<Vec<Resume>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(60))
        .context("reading the group's committed offsets")?;
    partitions
        .iter()
        .map(|(topic, p)| {
            let committed = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            if let (Some(o), None) = (committed, &counted) {
                return Ok(Resume { at: o, skipped: 0 });
            }
            let (low, high) = c
                .fetch_watermarks(topic, *p, Duration::from_secs(60))
                .with_context(|| format!("reading the offsets {topic}/{p} holds"))?;
            let Some(counted) = counted.as_deref_mut() else {
                return Ok(Resume { at: low, skipped: 0 });
            };
            let key = (topic.to_string(), *p);
            let r = resume_at(committed, low, high, counted.get(&key).copied());
            if r.skipped > 0 {
                tracing::error!(
                    topic, partition = p, committed, low, skipped = r.skipped,
                    "the broker deleted records of an input (retention) before the job read them: they are in no total; reading on from the log's start"
                );
                counted.insert(key, r.at);
            } else if committed.is_some_and(|c| c > high) {
                tracing::error!(
                    topic, partition = p, committed, high,
                    "the input's log ends before its committed offset (cut back, or made anew); reading on from its end"
                );
            }
            Ok(r)
        })
        .collect()
}

/// Where an input partition resumes, and how many offsets it skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub at: i64,
    /// Offsets the log deleted before the job read them (transaction markers
    /// among them: a skipped offset is at most one record).
    pub skipped: i64,
}

/// Where a partition resumes, given its committed offset (`None`: none), the
/// offsets its log holds now (`low..high`), and up to where offsets deleted
/// before were counted already (`counted`).
/// - Below `low`: retention deleted records before the job read them. It
///   resumes at `low`, and the offsets in between are skipped.
/// - Beyond `high`: the log was cut back (or made anew) behind records the job
///   read. It resumes at the log's end: from there on, records are new to it.
pub fn resume_at(committed: Option<i64>, low: i64, high: i64, counted: Option<i64>) -> Resume {
    match committed {
        None => Resume {
            at: low,
            skipped: 0,
        },
        Some(c) if c < low => Resume {
            at: low,
            skipped: (low - c.max(counted.unwrap_or(c))).max(0),
        },
        Some(c) if c > high => Resume {
            at: high,
            skipped: 0,
        },
        Some(c) => Resume { at: c, skipped: 0 },
    }
}

/// How long the loop waits for the broker to say where a partition ends.
const END_WAIT: Duration = Duration::from_secs(1);

/// Whether each of `partitions` (topic, partition, and the offset it resumed
/// at, for one nothing was read from since) is read to its end, the last
/// stable offset, as the broker says now: an error when it does not answer
/// within `END_WAIT` (it is away).
pub fn read_to_end(
    c: &InputConsumer,
    partitions: &[(&str, i32, i64)],
) -> anyhow::Result<Vec<bool>> {
    let positions = c.position().context("reading the consumer's positions")?;
    partitions
        .iter()
        .map(|(topic, p, resumed)| {
            // A read_committed client's high mark is the last stable offset.
            let (_, end) = c
                .fetch_watermarks(topic, *p, END_WAIT)
                .with_context(|| format!("reading the end of {topic}/{p}"))?;
            // The position counts the transaction markers read past too (librdkafka#2539).
            let at = match positions.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => *resumed,
            };
            Ok(at >= end)
        })
        .collect()
}

/// Moves every partition of `tpl` (all assigned) to its offset, and waits
/// until librdkafka has done so: records fetched before are dropped unread.
/// A partition whose fetcher has not started yet (librdkafka starts it once an
/// earlier fetcher has stopped) is left alone: it starts at the offset it was
/// assigned at, and as nothing of it was read since, nothing of it was
/// committed since either, so that is the offset it is to resume at.
pub fn seek(c: &InputConsumer, tpl: TopicPartitionList) -> anyhow::Result<()> {
    let done = c
        .seek_partitions(tpl, Duration::from_secs(10))
        .context("seeking to the committed offsets")?;
    for e in done.elements() {
        match e.error() {
            Ok(()) => {}
            Err(err) if err.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {}
            Err(err) => anyhow::bail!(
                "seeking {} [{}] to its committed offset: {err}",
                e.topic(),
                e.partition()
            ),
        }
    }
    Ok(())
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

/// Poll timeout while waiting for input.
pub const POLL_WAIT: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::{resume_at, Resume};

    #[test]
    fn an_offset_in_the_log_resumes_where_it_is() {
        for c in [100, 150, 200] {
            assert_eq!(
                resume_at(Some(c), 100, 200, None),
                Resume { at: c, skipped: 0 }
            );
        }
        assert_eq!(
            resume_at(None, 100, 200, None),
            Resume {
                at: 100,
                skipped: 0
            }
        );
    }

    #[test]
    fn offsets_deleted_before_they_were_read_are_skipped_and_counted_once() {
        assert_eq!(
            resume_at(Some(40), 100, 200, None),
            Resume {
                at: 100,
                skipped: 60
            }
        );
        // Reset again before a commit moved the committed offset: only the
        // offsets deleted since count.
        assert_eq!(
            resume_at(Some(40), 130, 200, Some(100)),
            Resume {
                at: 130,
                skipped: 30
            }
        );
        assert_eq!(
            resume_at(Some(40), 100, 200, Some(100)),
            Resume {
                at: 100,
                skipped: 0
            }
        );
    }

    #[test]
    fn a_log_cut_back_behind_the_committed_offset_resumes_at_its_end() {
        assert_eq!(
            resume_at(Some(250), 100, 200, None),
            Resume {
                at: 200,
                skipped: 0
            }
        );
    }
}
