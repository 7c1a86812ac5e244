//! The only place that wires Kafka, the engine and telemetry together: the
//! processing loop of `gmv run`, its transactions, and state restore.
//!
//! One consumer in the job's group reads the input topics (attribution tasks)
//! and the repartition topic (aggregation tasks). Every `commit_interval` one
//! Kafka transaction carries the outputs, the repartition batches, the changelog
//! records and the consumer offsets, so a crash at any point resumes exactly
//! from the last commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::core::output::{Dim, Output};
use crate::core::state::{self, Lineage, Marker, PartialBatch, Progress, Tag, MARKER_PREFIX};
use crate::core::Engine;
use crate::io::consumer::{self, InputConsumer};
use crate::io::producer::{Kind, Record, TxnProducer};
use crate::io::topics;
use crate::model::{InputTopic, Source};
use crate::telemetry::http::now_ms;
use crate::telemetry::Metrics;

/// Largest number of records handled between two ticks.
const MAX_BATCH: usize = 20_000;
/// How often metrics are refreshed from the engine.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// How often latency quantiles are logged.
const LATENCY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Handles the processing loop shares with the HTTP server and signal handler.
#[derive(Clone)]
pub struct Handles {
    pub metrics: Arc<Mutex<Metrics>>,
    pub heartbeat_ms: Arc<AtomicI64>,
    pub shutdown: Arc<AtomicBool>,
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            metrics: Arc::new(Mutex::new(Metrics::new())),
            heartbeat_ms: Arc::new(AtomicI64::new(now_ms())),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Default for Handles {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets `flag` on SIGINT or SIGTERM, so loops stop consuming, flush and commit.
pub fn stop_on_signal(flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            tracing::info!("signal received: stopping");
            flag.store(true, Ordering::Relaxed);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Runs the job until `handles.shutdown` is set; then commits what is done.
pub fn run(cfg: &Config, handles: &Handles) -> anyhow::Result<()> {
    let consumer = consumer::create(cfg, Some(handles.metrics.clone()))?;
    let t = &cfg.topics;
    let inputs = t.inputs();
    let partitions = topics::check_inputs(&consumer, &inputs)?;
    let aggregation_partitions = topics::partition_count(&consumer, &t.repartition)?;
    for (name, want) in [
        (&t.attribution_changelog, partitions),
        (&t.aggregation_changelog, aggregation_partitions),
    ] {
        let have = topics::partition_count(&consumer, name)?;
        if have != want {
            bail!("topic `{name}` has {have} partitions but needs {want}: one per task (see docs/scaling.md)");
        }
    }
    tracing::info!(partitions, aggregation_partitions, brokers = %cfg.kafka.brokers, instance = %cfg.kafka.instance_id, "topics checked");

    let producer = Arc::new(TxnProducer::create(cfg, Some(handles.metrics.clone()))?);
    let _ = consumer.context().producer.set(producer.clone());
    let mut subscribed: Vec<&str> = inputs.to_vec();
    subscribed.push(&t.repartition);
    consumer
        .subscribe(&subscribed)
        .context("subscribing to the input and repartition topics")?;

    let mut lp = Loop {
        cfg,
        engine: Engine::distributed(cfg.engine()),
        consumer,
        producer,
        handles,
        out: Vec::new(),
        tasks: BTreeMap::new(),
        partitions,
        aggregation_partitions,
        sent_progress: BTreeMap::new(),
        newest_input_ms: 0,
        last_emit_ms: 0,
    };
    let result = lp.process();
    let shutdown = if result.is_ok() {
        lp.shutdown()
    } else {
        Ok(())
    };
    result.and(shutdown)
}

/// Which changelog a task's state lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Attribution,
    Aggregation,
}

/// A task this instance owns: its incarnation and transaction counter.
#[derive(Debug, Clone, Copy)]
struct TaskRun {
    /// Offset of the marker written when it was restored.
    inc: i64,
    /// Committed transaction number it was restored from.
    base: u64,
    /// Its last committed transaction number.
    n: u64,
}

struct Loop<'a> {
    cfg: &'a Config,
    engine: Engine,
    consumer: InputConsumer,
    producer: Arc<TxnProducer>,
    handles: &'a Handles,
    out: Vec<Output>,
    tasks: BTreeMap<(Stage, i32), TaskRun>,
    partitions: i32,
    aggregation_partitions: i32,
    /// Per attribution task: the progress last sent, and whether that batch carried sums.
    sent_progress: BTreeMap<i32, (Progress, bool)>,
    /// Newest Kafka timestamp read in the current commit interval, for end-to-end latency.
    newest_input_ms: i64,
    last_emit_ms: i64,
}

impl Loop<'_> {
    fn process(&mut self) -> anyhow::Result<()> {
        let (mut last_metrics, mut last_latency_log) = (Instant::now(), Instant::now());
        let mut last_commit = Instant::now();
        let commit_every = Duration::from_millis(self.cfg.kafka.commit_interval_ms as u64);
        let t = &self.cfg.topics;
        let inputs: Vec<String> = t.inputs().iter().map(|s| s.to_string()).collect();
        let repartition = t.repartition.clone();
        while !self.handles.shutdown.load(Ordering::Relaxed) {
            let mut started = None;
            let mut n = 0;
            while n < MAX_BATCH && last_commit.elapsed() < commit_every {
                let wait = if n == 0 {
                    consumer::POLL_WAIT
                } else {
                    Duration::ZERO
                };
                let polled = self.consumer.poll(wait);
                if self.consumer.context().rebalanced.load(Ordering::SeqCst) {
                    // The record (if any) is from the new assignment: keep it across the restore.
                    let owned = polled.map(|r| r.map(|m| m.detach()));
                    self.consumer
                        .context()
                        .rebalanced
                        .store(false, Ordering::SeqCst);
                    self.restore()?;
                    if let Some(Ok(m)) = owned {
                        started.get_or_insert_with(Instant::now);
                        n += 1;
                        dispatch(
                            &mut self.engine,
                            &mut self.out,
                            &mut self.newest_input_ms,
                            &inputs,
                            &repartition,
                            &m,
                        );
                    }
                    continue;
                }
                match polled {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!("consumer: {e}");
                        break;
                    }
                    Some(Ok(m)) => {
                        started.get_or_insert_with(Instant::now);
                        n += 1;
                        dispatch(
                            &mut self.engine,
                            &mut self.out,
                            &mut self.newest_input_ms,
                            &inputs,
                            &repartition,
                            &m,
                        );
                    }
                }
            }
            if let Some(started) = started {
                let mut m = self.handles.metrics.lock().expect("metrics lock");
                m.observe_batch(started.elapsed().as_secs_f64());
            }
            if last_commit.elapsed() >= commit_every {
                last_commit = Instant::now();
                self.commit()?;
            }
            self.handles.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
            if last_metrics.elapsed() >= METRICS_EVERY {
                last_metrics = Instant::now();
                self.refresh_metrics();
            }
            if last_latency_log.elapsed() >= LATENCY_LOG_EVERY {
                last_latency_log = Instant::now();
                self.handles
                    .metrics
                    .lock()
                    .expect("metrics lock")
                    .log_latencies();
            }
        }
        Ok(())
    }

    /// One transaction: repartition batches, outputs, changelog records and offsets.
    fn commit(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.engine.on_tick(now, &mut self.out);
        self.send_batches()?;
        if now - self.last_emit_ms >= self.cfg.time.emit_interval_ms {
            self.last_emit_ms = now;
            self.engine.emit(&mut self.out);
        }
        self.publish()?;
        self.send_changes()?;
        let offsets = self.offsets()?;
        let started = Instant::now();
        let group = self
            .consumer
            .group_metadata()
            .context("no consumer group metadata")?;
        let consumer = &self.consumer;
        let result = self.producer.commit(&offsets, &group, |o| {
            consumer
                .commit(o, rdkafka::consumer::CommitMode::Sync)
                .context("committing offsets")
        });
        drop(offsets);
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        m.commit(result.is_ok(), started.elapsed().as_secs_f64());
        if result.is_ok() {
            if self.newest_input_ms > 0 {
                m.observe_end_to_end(now_ms() - self.newest_input_ms);
            }
            self.newest_input_ms = 0;
            for run in self.tasks.values_mut() {
                run.n += 1;
            }
        }
        drop(m);
        // A transaction that failed is aborted by the broker; this instance's memory is
        // ahead of what committed, so it stops and a restart resumes from the commit.
        result
            .context("the transaction failed; restart the instance to resume from the last commit")
    }

    /// Sends each attribution task's partial sums, split by aggregation partition, and its progress.
    fn send_batches(&mut self) -> anyhow::Result<()> {
        let topic = self.cfg.topics.repartition.clone();
        let r_count = self.aggregation_partitions;
        let tasks: Vec<(i32, Vec<_>, Progress)> = self
            .engine
            .attribution_tasks()
            .map(|t| (t.partition(), t.take_partials(), t.progress()))
            .collect();
        for (p, entries, progress) in tasks {
            let Some(run) = self.tasks.get(&(Stage::Attribution, p)).copied() else {
                continue;
            };
            let (last, had_sums) = self.sent_progress.get(&p).copied().unwrap_or_default();
            // A batch is applied once a later one proves its transaction committed:
            // after sums, always send the next one.
            if entries.is_empty() && last == progress && !had_sums {
                continue;
            }
            self.sent_progress
                .insert(p, (progress, !entries.is_empty()));
            let mut split: Vec<Vec<_>> = vec![Vec::new(); r_count as usize];
            for e in entries {
                split[state::aggregation_partition(e.dim, &e.key, r_count) as usize].push(e);
            }
            let key = p.to_string();
            for (r, entries) in split.into_iter().enumerate() {
                let batch = PartialBatch {
                    source: p,
                    tag: Tag {
                        inc: run.inc,
                        n: run.n + 1,
                    },
                    base: run.base,
                    progress,
                    entries,
                };
                let value = state::encode(&batch);
                self.producer.send(Record {
                    topic: &topic,
                    partition: Some(r as i32),
                    key: Some(key.as_bytes()),
                    value: Some(&value),
                    tag: None,
                    kind: Kind::Internal,
                })?;
            }
        }
        Ok(())
    }

    /// Sends every task's state changes to its changelog partition, tagged with the transaction.
    fn send_changes(&mut self) -> anyhow::Result<()> {
        let mut changes = Vec::new();
        for t in self.engine.attribution_tasks() {
            changes.push(((Stage::Attribution, t.partition()), t.take_changes()));
        }
        for t in self.engine.aggregation_tasks() {
            changes.push(((Stage::Aggregation, t.partition()), t.take_changes()));
        }
        for ((stage, p), list) in changes {
            let Some(run) = self.tasks.get(&(stage, p)) else {
                continue;
            };
            let tag = Tag {
                inc: run.inc,
                n: run.n + 1,
            };
            let topic = self.changelog(stage);
            for (key, value) in &list {
                self.producer.send(Record {
                    topic,
                    partition: Some(p),
                    key: Some(key),
                    value: value.as_deref(),
                    tag: Some(tag),
                    kind: Kind::Internal,
                })?;
            }
        }
        Ok(())
    }

    fn changelog(&self, stage: Stage) -> &str {
        match stage {
            Stage::Attribution => &self.cfg.topics.attribution_changelog,
            Stage::Aggregation => &self.cfg.topics.aggregation_changelog,
        }
    }

    /// Offsets committed with the transaction: where each input and repartition
    /// partition resumes, and each task's transaction number (on its changelog partition).
    fn offsets(&mut self) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        let inputs = self.cfg.topics.inputs();
        for t in self.engine.attribution_tasks() {
            for (i, next) in t.next_offsets().into_iter().enumerate() {
                if let Some(o) = next {
                    tpl.add_partition_offset(inputs[i], t.partition(), Offset::Offset(o))?;
                }
            }
        }
        for t in self.engine.aggregation_tasks() {
            if let Some(o) = t.committable_offset() {
                tpl.add_partition_offset(
                    &self.cfg.topics.repartition,
                    t.partition(),
                    Offset::Offset(o),
                )?;
            }
        }
        for ((stage, p), run) in &self.tasks {
            tpl.add_partition_offset(self.changelog(*stage), *p, Offset::Offset(run.n as i64 + 1))?;
        }
        Ok(tpl)
    }

    /// Sends the engine's outputs; derives the output-driven metrics in the same pass.
    fn publish(&mut self) -> anyhow::Result<()> {
        let mut metrics = None;
        let t = &self.cfg.topics;
        for o in self.out.drain(..) {
            match &o {
                Output::PayToDelivery { millis } => {
                    metrics
                        .get_or_insert_with(|| self.handles.metrics.lock().expect("metrics lock"))
                        .pay_to_delivery(*millis);
                    continue;
                }
                Output::Milestone(m) => {
                    tracing::info!(dim = m.dim.as_str(), key = %m.key, threshold_fen = %m.threshold_fen, crossed_at_ms = m.crossed_at_ms, "milestone");
                    metrics
                        .get_or_insert_with(|| self.handles.metrics.lock().expect("metrics lock"))
                        .milestone_emitted(m, now_ms());
                }
                _ => {}
            }
            if let Some((topic, key, value)) = o.to_record() {
                let name = match topic {
                    crate::core::output::OutputTopic::GmvWindows => &t.gmv_windows,
                    crate::core::output::OutputTopic::GmvTotals => &t.gmv_totals,
                    crate::core::output::OutputTopic::Milestones => &t.milestones,
                    crate::core::output::OutputTopic::DeadLetters => &t.dead_letters,
                };
                self.producer.send(Record {
                    topic: name,
                    partition: None,
                    key: key.as_deref(),
                    value: Some(&value),
                    tag: None,
                    kind: Kind::Output(topic),
                })?;
            }
        }
        Ok(())
    }

    /// After an assignment change: drops every task and restores the assigned ones
    /// from their changelogs (the open transaction was aborted on revoke).
    fn restore(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.producer.abort()?;
        self.engine.clear();
        self.tasks.clear();
        self.sent_progress.clear();
        self.out.clear();
        let assignment = self
            .consumer
            .assignment()
            .context("reading the assignment")?;
        let t = &self.cfg.topics;
        let mut wanted = BTreeSet::new();
        for e in assignment.elements() {
            if e.topic() == t.repartition {
                wanted.insert((Stage::Aggregation, e.partition()));
            } else if t.inputs().contains(&e.topic()) {
                wanted.insert((Stage::Attribution, e.partition()));
            }
        }
        drop(assignment);
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .rebalances
            .inc();
        if wanted.is_empty() {
            tracing::info!("no partitions assigned");
            return Ok(());
        }
        // 1. Each task's committed transaction number.
        let mut tpl = TopicPartitionList::new();
        for (stage, p) in &wanted {
            tpl.add_partition(self.changelog(*stage), *p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .context("reading committed transaction numbers")?;
        let mut bases = BTreeMap::new();
        for (stage, p) in &wanted {
            // The offset committed on a task's changelog partition is its transaction number.
            let n = match committed
                .find_partition(self.changelog(*stage), *p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) if o > 0 => o as u64,
                _ => 0,
            };
            bases.insert((*stage, *p), n);
        }
        drop(committed);
        // 2. A marker per task, committed: its offset names this incarnation and bounds the read.
        let nonce = format!("{}|{}", self.cfg.kafka.instance_id, now_ms());
        let key = [MARKER_PREFIX, nonce.as_bytes()].concat();
        for ((stage, p), base) in &bases {
            let value = state::encode(&Marker { base: *base });
            self.producer.send(Record {
                topic: self.changelog(*stage),
                partition: Some(*p),
                key: Some(&key),
                value: Some(&value),
                tag: None,
                kind: Kind::Marker,
            })?;
        }
        self.producer
            .commit_open()
            .context("committing restore markers")?;
        let markers = self.producer.take_markers(bases.len())?;
        // 3. Read each changelog partition up to its marker; keep what committed.
        let mut runs = BTreeMap::new();
        for ((stage, p), base) in &bases {
            let inc = *markers
                .get(&(self.changelog(*stage).to_string(), *p))
                .context("a restore marker has no offset")?;
            runs.insert(
                (*stage, *p),
                TaskRun {
                    inc,
                    base: *base,
                    n: *base,
                },
            );
        }
        let states = read_changelogs(self.cfg, &runs, |stage| self.changelog(stage).to_string())?;
        let now = now_ms();
        let mut keys = 0;
        for ((stage, p), entries) in states {
            keys += entries.len();
            let result: Result<(), String> = match stage {
                Stage::Attribution => {
                    let task = self.engine.add_attribution(p, now);
                    task.track_changes();
                    entries.iter().try_for_each(|(k, v)| task.restore(k, v))
                }
                Stage::Aggregation => {
                    let task = self.engine.add_aggregation(p, self.partitions as usize);
                    task.track_changes();
                    entries.iter().try_for_each(|(k, v)| task.restore(k, v))
                }
            };
            result
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("restoring {stage:?} task {p}"))?;
        }
        self.tasks = runs;
        tracing::info!(
            tasks = self.tasks.len(),
            keys,
            seconds = started.elapsed().as_secs_f64(),
            "state restored"
        );
        Ok(())
    }

    fn refresh_metrics(&mut self) {
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        m.sync_stats(self.engine.stats());
        m.set_watermark(self.engine.watermark_ms(), now_ms());
        let (assigned, idle) = self.engine.partitions();
        m.set_partitions(assigned, idle);
        m.set_state(self.engine.state_size());
        let total = self
            .engine
            .totals(Dim::Total, crate::core::engine::TOTAL_KEY)
            .map(|t| t.gmv_fen);
        for dim in [Dim::Brand, Dim::Channel, Dim::Country] {
            let (top, other) = self.engine.top_gmv(dim, self.cfg.metrics.top_n);
            m.set_top(dim, &top, other, total);
        }
    }

    /// Commits what is done and leaves the group.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down: committing the last transaction");
        self.last_emit_ms = 0;
        let result = self.commit();
        self.refresh_metrics();
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .log_latencies();
        self.consumer.unsubscribe();
        result
    }
}

/// Hands one record to the task that owns its partition.
fn dispatch<M: Message>(
    engine: &mut Engine,
    out: &mut Vec<Output>,
    newest_input_ms: &mut i64,
    inputs: &[String],
    repartition: &str,
    m: &M,
) {
    if m.topic() == repartition {
        match m.payload().map(state::decode::<PartialBatch>) {
            Some(Ok(batch)) => engine.receive(m.partition(), m.offset(), batch, out),
            _ => tracing::error!(
                partition = m.partition(),
                offset = m.offset(),
                "unreadable repartition record skipped"
            ),
        }
        return;
    }
    let Some(i) = inputs.iter().position(|t| t == m.topic()) else {
        return;
    };
    let source = Source {
        topic: InputTopic::ALL[i],
        partition: m.partition(),
        offset: m.offset(),
    };
    if let Some(ts) = m.timestamp().to_millis() {
        *newest_input_ms = (*newest_input_ms).max(ts);
    }
    engine.on_record(source, m.key(), m.payload(), out);
}

/// State of each task: the latest committed value of every key in its changelog partition.
type Restored = BTreeMap<(Stage, i32), Vec<(Vec<u8>, Vec<u8>)>>;

/// Reads the changelog partitions of `runs` from the beginning through their
/// markers, and keeps, per key, the latest value written by a committed transaction.
fn read_changelogs(
    cfg: &Config,
    runs: &BTreeMap<(Stage, i32), TaskRun>,
    topic_of: impl Fn(Stage) -> String,
) -> anyhow::Result<Restored> {
    // Its own group id: a reader that assigns partitions must not touch the job's group
    // (some brokers rebalance the group when such a member closes).
    let mut own = cfg.clone();
    own.kafka.group_id = format!("{}-restore-{}", cfg.kafka.group_id, cfg.kafka.instance_id);
    let reader: BaseConsumer<consumer::LagContext> = consumer::create(&own, None)?;
    let mut tpl = TopicPartitionList::new();
    let mut by_topic: HashMap<(String, i32), (Stage, i32)> = HashMap::new();
    for (stage, p) in runs.keys() {
        let topic = topic_of(*stage);
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        by_topic.insert((topic, *p), (*stage, *p));
    }
    reader
        .assign(&tpl)
        .context("assigning changelog partitions")?;
    drop(tpl);
    // Per task: records (offset order) and markers.
    type Rec = (Tag, Vec<u8>, Option<Vec<u8>>);
    let mut records: BTreeMap<(Stage, i32), Vec<Rec>> = BTreeMap::new();
    let mut markers: BTreeMap<(Stage, i32), Vec<(i64, Marker)>> = BTreeMap::new();
    let mut remaining: BTreeSet<(Stage, i32)> = runs.keys().copied().collect();
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
        let run = runs[&task];
        if m.offset() > run.inc {
            continue;
        }
        let key = m.key().unwrap_or_default();
        if key.starts_with(MARKER_PREFIX) {
            if let Some(Ok(mk)) = m.payload().map(state::decode::<Marker>) {
                markers.entry(task).or_default().push((m.offset(), mk));
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
        if m.offset() == run.inc {
            remaining.remove(&task);
        }
    }
    let mut out = Restored::new();
    for (task, run) in runs {
        let ms = markers.remove(task).unwrap_or_default();
        // Our own marker closes the previous incarnation's range at `run.base`.
        let lineage = Lineage::new(&ms, run.base);
        let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for (tag, key, value) in records.remove(task).unwrap_or_default() {
            if lineage.is_committed(tag) {
                latest.insert(key, value);
            }
        }
        let entries: Vec<_> = latest
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        out.insert(*task, entries);
    }
    Ok(out)
}
