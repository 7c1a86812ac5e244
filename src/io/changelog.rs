//! Reading the changelogs back on a restore: each task's partition up to the
//! marker its restore wrote, keeping what committed transactions wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::consumer;
use crate::config::Config;
use crate::core::state::{self, Entry, Lineage, Tag, COMMIT_PREFIX, LINEAGE_PREFIX, MARKER_PREFIX};

/// Per task: its lineage, and the latest committed value of every key in its changelog partition.
pub type Restored<K> = BTreeMap<K, (Lineage, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Reads each task's changelog partition (`ends`: topic, partition, and the
/// offset of the marker its restore wrote) from the beginning up to that
/// marker, resolves which transactions committed, and keeps, per key, the
/// latest value a committed transaction wrote.
pub fn read<K: Ord + Copy>(
    cfg: &Config,
    ends: &BTreeMap<K, (String, i32, i64)>,
) -> anyhow::Result<Restored<K>> {
    let reader = reader(cfg)?;
    let mut tpl = TopicPartitionList::new();
    let mut by_topic: HashMap<(String, i32), K> = HashMap::new();
    for (task, (topic, p, _)) in ends {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        by_topic.insert((topic.clone(), *p), *task);
    }
    reader
        .assign(&tpl)
        .context("assigning changelog partitions")?;
    drop(tpl);
    // Per task: tagged state records and bookkeeping entries, in offset order.
    type Rec = (Tag, Vec<u8>, Option<Vec<u8>>);
    let mut records: BTreeMap<K, Vec<Rec>> = BTreeMap::new();
    let mut books: BTreeMap<K, Vec<(i64, Entry)>> = BTreeMap::new();
    let mut remaining: BTreeSet<K> = ends.keys().copied().collect();
    let started = Instant::now();
    while !remaining.is_empty() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("changelog restore did not reach its markers in 10 minutes");
        }
        let m = match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!("reading changelogs: {e}");
                continue;
            }
            None => continue,
        };
        let Some(task) = by_topic
            .get(&(m.topic().to_string(), m.partition()))
            .copied()
        else {
            continue;
        };
        if m.offset() >= ends[&task].2 {
            remaining.remove(&task);
            continue;
        }
        let key = m.key().unwrap_or_default();
        if state::is_bookkeeping(key) {
            if let Some(e) = bookkeeping_entry(key, m.payload()) {
                books.entry(task).or_default().push((m.offset(), e));
            }
        } else if let Some(tag) = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == Tag::HEADER)
                .and_then(|h| h.value.and_then(Tag::from_bytes))
        }) {
            records.entry(task).or_default().push((
                tag,
                key.to_vec(),
                m.payload().map(|v| v.to_vec()),
            ));
        }
    }
    let mut out = Restored::new();
    for task in ends.keys() {
        let lineage = Lineage::resolve(&books.remove(task).unwrap_or_default());
        let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for (tag, key, value) in records.remove(task).unwrap_or_default() {
            if lineage.is_committed(tag) {
                latest.insert(key, value);
            }
        }
        // In key order: batches of state replay in the order they were committed.
        let mut entries: Vec<_> = latest
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.insert(*task, (lineage, entries));
    }
    Ok(out)
}

/// Decodes a marker, lineage or commit record; `None` for one this version cannot read.
fn bookkeeping_entry(key: &[u8], value: Option<&[u8]>) -> Option<Entry> {
    if key.starts_with(MARKER_PREFIX) {
        return Some(Entry::Marker);
    }
    let inc = |prefix: &[u8]| -> Option<i64> {
        std::str::from_utf8(&key[prefix.len()..]).ok()?.parse().ok()
    };
    let value = value?;
    if key.starts_with(LINEAGE_PREFIX) {
        Some(Entry::Lineage(
            inc(LINEAGE_PREFIX)?,
            state::decode(value).ok()?,
        ))
    } else if key.starts_with(COMMIT_PREFIX) {
        Some(Entry::Commit(
            inc(COMMIT_PREFIX)?,
            state::decode(value).ok()?,
        ))
    } else {
        None
    }
}

/// A consumer for reading changelog partitions by assignment. Its own group id: a
/// reader that assigns partitions must not touch the job's group (some brokers
/// rebalance the group when such a member closes).
fn reader(cfg: &Config) -> anyhow::Result<BaseConsumer<consumer::LagContext>> {
    let mut own = cfg.clone();
    own.kafka.group_id = format!("{}-restore-{}", cfg.kafka.group_id, cfg.kafka.instance_id);
    consumer::create(&own, None)
}
