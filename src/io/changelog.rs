//! Reading the changelogs back on a restore: each task's partition from the
//! beginning to its last stable offset, with `read_committed`, keeping the
//! latest value of every key (see `core/commit.rs` for why that is the state
//! as of the group's committed offsets).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::consumer;
use crate::config::Config;
use crate::core::state::OLD_BOOKKEEPING_PREFIXES;

/// Per task: the latest value of every key in its changelog partition, in key order.
pub type Restored<K> = BTreeMap<K, Vec<(Vec<u8>, Vec<u8>)>>;

/// A restore ended because the process is stopping.
#[derive(Debug, thiserror::Error)]
#[error("the restore was stopped: the process is shutting down")]
pub struct Stopped;

/// How long a restore may take before the process gives up (a restart tries again).
const RESTORE_FOR: Duration = Duration::from_secs(600);

/// Called as a restore progresses (at least every 100 ms): says the process is
/// alive (for `/healthz`, however long the restore takes), and returns false
/// when it is to stop (SIGTERM), which ends the restore at once.
pub type Alive<'a> = &'a (dyn Fn() -> bool + Sync);

/// Reads each task's changelog partition (`partitions`: topic and partition)
/// to its end as a `read_committed` reader sees it (the last stable offset),
/// and keeps, per key, the latest value (a tombstone removes it). Each
/// changelog topic has its own reader, on its own thread.
pub fn read<K: Ord + Copy + Send + Sync>(
    cfg: &Config,
    partitions: &BTreeMap<K, (String, i32)>,
    alive: Alive<'_>,
) -> anyhow::Result<Restored<K>> {
    let mut by_topic: BTreeMap<&str, BTreeMap<i32, K>> = BTreeMap::new();
    for (task, (topic, p)) in partitions {
        by_topic.entry(topic).or_default().insert(*p, *task);
    }
    let results: Vec<anyhow::Result<Restored<K>>> = std::thread::scope(|s| {
        let readers: Vec<_> = by_topic
            .iter()
            .map(|(topic, tasks)| s.spawn(move || read_topic(cfg, topic, tasks, alive)))
            .collect();
        readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| bail!("a changelog reader panicked"))
            })
            .collect()
    });
    let mut out = Restored::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// [`read`] for the partitions of one topic (an end-of-partition event names
/// only the partition).
fn read_topic<K: Ord + Copy>(
    cfg: &Config,
    topic: &str,
    tasks: &BTreeMap<i32, K>,
    alive: Alive<'_>,
) -> anyhow::Result<Restored<K>> {
    let reader = reader(cfg)?;
    wait_for_open_transactions(cfg, &reader, topic, tasks.keys().copied(), alive)?;
    let mut tpl = TopicPartitionList::new();
    for p in tasks.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader
        .assign(&tpl)
        .with_context(|| format!("assigning partitions of changelog `{topic}`"))?;
    drop(tpl);
    let mut latest: BTreeMap<i32, HashMap<Vec<u8>, Option<Vec<u8>>>> = BTreeMap::new();
    let mut remaining: BTreeSet<i32> = tasks.keys().copied().collect();
    let started = Instant::now();
    while !remaining.is_empty() {
        if started.elapsed() > RESTORE_FOR {
            bail!("the restore did not reach the end of changelog `{topic}` in {RESTORE_FOR:?}");
        }
        if !alive() {
            bail!(Stopped);
        }
        let m = match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            // At the last stable offset (librdkafka's end for read_committed).
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!("reading changelog `{topic}`: {e}");
                continue;
            }
            None => continue,
        };
        let key = m.key().unwrap_or_default();
        if OLD_BOOKKEEPING_PREFIXES.iter().any(|p| key.starts_with(p)) {
            bail!(
                "changelog `{topic}` partition {} was written by a version before the one commit path; see \"Upgrading\" in the README",
                m.partition()
            );
        }
        latest
            .entry(m.partition())
            .or_default()
            .insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
    }
    Ok(tasks
        .iter()
        .map(|(p, task)| {
            let mut entries: Vec<_> = latest
                .remove(p)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            // In key order: batches of state replay in the order they were committed.
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            (*task, entries)
        })
        .collect())
}

/// Waits until every transaction open on these partitions when the restore
/// began has ended. Only a producer that is gone can hold one (the previous
/// owner gave the task up or died; a zombie's transaction cannot commit), but
/// while it is open the last stable offset stays below it, and with it below
/// whatever later owners of the task committed after it: a read to that last
/// stable offset would miss their records, which the group's committed
/// offsets already count. The broker aborts such a transaction after the
/// producer's `transaction.timeout.ms`.
fn wait_for_open_transactions(
    cfg: &Config,
    reader: &BaseConsumer<consumer::LagContext>,
    topic: &str,
    partitions: impl Iterator<Item = i32>,
    alive: Alive<'_>,
) -> anyhow::Result<()> {
    // Watermarks as a read_uncommitted client sees them: the high watermark.
    let group = restore_group(cfg);
    let all: BaseConsumer = super::client_config(
        &cfg.kafka,
        &[
            ("group.id", group.as_str()),
            ("isolation.level", "read_uncommitted"),
        ],
        &cfg.kafka.consumer_properties,
    )
    .create()
    .context("creating a client to read high watermarks")?;
    let timeout = Duration::from_secs(30);
    let started = Instant::now();
    for p in partitions {
        let (_, high) = all
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("reading the end of {topic}/{p}"))?;
        loop {
            // A read_committed client's high mark is the last stable offset.
            let (_, stable) = reader
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the last stable offset of {topic}/{p}"))?;
            if stable >= high {
                break;
            }
            if started.elapsed() > RESTORE_FOR {
                bail!("a transaction stayed open on {topic}/{p} for {RESTORE_FOR:?}");
            }
            if !alive() {
                bail!(Stopped);
            }
            tracing::debug!(
                topic,
                p,
                stable,
                high,
                "waiting for an open transaction to end"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A consumer for reading changelog partitions by assignment, reporting the end
/// of each. Its own group id keeps it apart from the job's group (it never
/// joins or commits).
fn reader(cfg: &Config) -> anyhow::Result<BaseConsumer<consumer::LagContext>> {
    let mut own = cfg.clone();
    own.kafka.group_id = restore_group(cfg);
    own.kafka
        .consumer_properties
        .insert("enable.partition.eof".into(), "true".into());
    // Each changelog is read from the log's start. A compacted log keeps its
    // start; should it move on anyway, the restore reads on from the new one
    // rather than stop (the job's own consumer says `error`: `consumer::create`).
    own.kafka
        .consumer_properties
        .insert("auto.offset.reset".into(), "earliest".into());
    consumer::create(&own, None)
}

/// The restore's clients' own group: apart from the job's (they never join or commit).
fn restore_group(cfg: &Config) -> String {
    format!("{}-restore-{}", cfg.kafka.group_id, cfg.kafka.instance_id)
}
