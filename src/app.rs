//! The only place that wires Kafka, the engine and telemetry together: the
//! processing loop of `gmv run`, its transactions, and state restore.
//!
//! One consumer in the job's group reads the input topics (attribution tasks)
//! and the repartition topic (aggregation tasks). Every `commit_interval` one
//! Kafka transaction carries the outputs, the repartition batches, the changelog
//! records and the consumer offsets, so a crash at any point resumes exactly
//! from the last commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{Config, TopicNames};
use crate::core::output::{Dim, Output};
use crate::core::state::{
    self, CommitRecord, LineageRecord, PartialBatch, Progress, Tag, COMMIT_PREFIX, LINEAGE_PREFIX,
    MARKER_PREFIX,
};
use crate::core::Engine;
use crate::io::changelog;
use crate::io::consumer::{self, Assignment, InputConsumer};
use crate::io::lanes::{LaneRecord, Lanes, LANE_BATCH};
use crate::io::producer::{Kind, Record, TxnProducer};
use crate::io::topics;
use crate::model::{InputTopic, Source};
use crate::telemetry::http::now_ms;
use crate::telemetry::Metrics;

/// Largest number of records handled between two ticks.
const MAX_BATCH: usize = 20_000;
/// How often metrics are refreshed from the engine.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// How long a failed transaction is retried (aborted, tasks restored) before the process gives up.
const RECOVER_FOR: Duration = Duration::from_secs(300);
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
    let consumer = Arc::new(consumer::create(cfg, Some(handles.metrics.clone()))?);
    let t = &cfg.topics;
    let inputs = t.inputs();
    let partitions = topics::check_inputs(&*consumer, &inputs)?;
    let aggregation_partitions = topics::partition_count(&*consumer, &t.repartition)?;
    for (name, want) in [
        (&t.attribution_changelog, partitions),
        (&t.aggregation_changelog, aggregation_partitions),
    ] {
        let have = topics::partition_count(&*consumer, name)?;
        if have != want {
            bail!("topic `{name}` has {have} partitions but needs {want}: one per task (see docs/scaling.md)");
        }
    }
    tracing::info!(partitions, aggregation_partitions, brokers = %cfg.kafka.brokers, instance = %cfg.kafka.instance_id, "topics checked");
    handles
        .metrics
        .lock()
        .expect("metrics lock")
        .set_stage_partitions(partitions, aggregation_partitions);

    let producer = Arc::new(TxnProducer::create(cfg, Some(handles.metrics.clone()))?);
    *consumer.context().producer.lock().expect("producer lock") = Some(producer.clone());

    let mut lp = Loop {
        cfg,
        engine: Engine::distributed(cfg.engine()),
        consumer,
        lanes: Lanes::default(),
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
    lp.subscribe()?;
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
#[derive(Debug, Clone)]
struct TaskRun {
    /// Offset of the marker written when it was restored.
    inc: i64,
    /// Committed transaction number it was restored from.
    base: u64,
    /// Its last committed transaction number.
    n: u64,
    /// Where its input partitions resume after `n` (per input; `None`: from the beginning).
    offsets: Vec<Option<i64>>,
}

struct Loop<'a> {
    cfg: &'a Config,
    engine: Engine,
    /// In an `Arc`: the lanes' queues hold it.
    consumer: Arc<InputConsumer>,
    /// The input partitions' own queues (the repartition topic stays on the consumer's).
    lanes: Lanes,
    producer: Arc<TxnProducer>,
    handles: &'a Handles,
    out: Vec<Output>,
    tasks: BTreeMap<(Stage, i32), TaskRun>,
    partitions: i32,
    aggregation_partitions: i32,
    /// Per attribution task: the progress its incarnation last sent.
    sent_progress: BTreeMap<i32, Progress>,
    /// Newest Kafka timestamp read in the current commit interval, for end-to-end latency.
    newest_input_ms: i64,
    last_emit_ms: i64,
}

impl Loop<'_> {
    fn process(&mut self) -> anyhow::Result<()> {
        let (mut last_metrics, mut last_latency_log) = (Instant::now(), Instant::now());
        let mut last_commit = Instant::now();
        let commit_every = Duration::from_millis(self.cfg.kafka.commit_interval_ms as u64);
        let topics = &self.cfg.topics;
        while !self.handles.shutdown.load(Ordering::Relaxed) {
            let mut started = None;
            let mut n = 0;
            let mut idle = false;
            // Records in a row from the consumer's own queue: a backlog there (the
            // repartition topic after a restore) must not keep the lanes waiting.
            let mut own_run = 0;
            while n < MAX_BATCH && last_commit.elapsed() < commit_every {
                // The consumer's own queue first: rebalances, the repartition topic.
                let wait = if idle {
                    consumer::POLL_WAIT
                } else {
                    Duration::ZERO
                };
                let polled = self.consumer.poll(wait);
                if self.consumer.context().rebalanced.load(Ordering::SeqCst) {
                    // A record polled along with a rebalance belongs to the assignment
                    // before it; the restore positions every partition at its last commit.
                    drop(polled);
                    self.consumer
                        .context()
                        .rebalanced
                        .store(false, Ordering::SeqCst);
                    let event = self
                        .consumer
                        .context()
                        .pending
                        .lock()
                        .expect("pending lock")
                        .take();
                    match event {
                        Some(Assignment::Assign(list)) => self.restore(Some(list))?,
                        Some(Assignment::Revoke) => self.restore(None)?,
                        None => {}
                    }
                    continue;
                }
                let (engine, out, newest) =
                    (&mut self.engine, &mut self.out, &mut self.newest_input_ms);
                match polled {
                    Some(Ok(m)) => {
                        started.get_or_insert_with(Instant::now);
                        n += 1;
                        dispatch(engine, out, newest, topics, &m);
                        idle = false;
                        own_run += 1;
                        if own_run < LANE_BATCH {
                            continue;
                        }
                    }
                    Some(Err(e)) => tracing::warn!("consumer: {e}"),
                    None => {}
                }
                own_run = 0;
                let read = self.lanes.read(LANE_BATCH, |topic, m| {
                    dispatch_input(engine, out, newest, topic, m)
                });
                if read > 0 {
                    started.get_or_insert_with(Instant::now);
                    n += read;
                    idle = false;
                } else if idle {
                    // Waited and still nothing: see to commits and metrics. (The wait is
                    // on the consumer's queue: a record reaching a lane meanwhile waits
                    // for it to end, up to POLL_WAIT.)
                    break;
                } else {
                    idle = true;
                }
            }
            if let Some(started) = started {
                let mut m = self.handles.metrics.lock().expect("metrics lock");
                m.observe_batch(started.elapsed().as_secs_f64());
            }
            if last_commit.elapsed() >= commit_every {
                let started = Instant::now();
                if let Err(e) = self.commit() {
                    // Counted here: a send can fail before the commit step does.
                    self.handles
                        .metrics
                        .lock()
                        .expect("metrics lock")
                        .commit(false, started.elapsed().as_secs_f64());
                    self.recover(e)?;
                }
                // Counted from the commit's end: a commit longer than the interval
                // must not leave the next one no time to read (with 100 ms commits
                // a catch-up read nothing but commits), and after a failure the
                // loop polls first, where a rebalance is seen.
                last_commit = Instant::now();
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

    /// One transaction: repartition batches, outputs, changelog records, and last
    /// each task's commit record (with where its inputs resume), plus the consumer
    /// group's offsets (`send_offsets_to_transaction`: a process whose group
    /// generation has moved on cannot commit, KIP-447).
    fn commit(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        // A partition whose records wait in its lane is behind the others, not idle.
        let engine = &mut self.engine;
        self.lanes
            .each_waiting(|topic, p| engine.touch((topic, p), now));
        self.engine.on_tick(now, &mut self.out);
        self.send_batches()?;
        if now - self.last_emit_ms >= self.cfg.time.emit_interval_ms {
            self.last_emit_ms = now;
            self.engine.emit(&mut self.out);
        }
        self.publish()?;
        self.send_changes()?;
        let resume = self.resume_offsets();
        let newest_input_ms = std::mem::take(&mut self.newest_input_ms);
        let offsets = self.group_offsets(&resume)?;
        let started = Instant::now();
        let group = self
            .consumer
            .group_metadata()
            .context("no consumer group metadata")?;
        let (tasks, cfg) = (&self.tasks, self.cfg);
        let result = self.producer.commit(&offsets, &group, |producer| {
            for (task, run) in tasks {
                let value = state::encode(&CommitRecord {
                    n: run.n + 1,
                    offsets: resume[task].clone(),
                });
                producer.send(Record {
                    topic: changelog_topic(cfg, task.0),
                    partition: Some(task.1),
                    key: Some(&state::bookkeeping_key(COMMIT_PREFIX, run.inc)),
                    value: Some(&value),
                    tag: None,
                    kind: Kind::Changelog,
                })?;
            }
            Ok(())
        });
        drop(offsets);
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        if result.is_ok() {
            m.commit(true, started.elapsed().as_secs_f64());
            if newest_input_ms > 0 {
                m.observe_end_to_end(now_ms() - newest_input_ms);
            }
            for (task, run) in self.tasks.iter_mut() {
                run.n += 1;
                run.offsets = resume[task].clone();
            }
        }
        drop(m);
        // This instance's memory is ahead of what committed: the caller aborts the
        // transaction and restores the tasks from the last commit (`recover`).
        result.context("the transaction failed")
    }

    /// After a commit failed: unless this producer was fenced (a newer instance
    /// with the same id took over: exiting is the only safe move), abort the
    /// transaction (or replace a producer the broker has ended) and restore the
    /// owned tasks from their last commit, as after a rebalance, so a broker that
    /// was away for longer than the message timeout costs a restore, not the
    /// process. Tries for `RECOVER_FOR` while the broker is still away, then gives up.
    fn recover(&mut self, failure: anyhow::Error) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = failure;
        loop {
            if let Some((code, why)) = self.producer.fatal_error() {
                // A producer that raised a fatal error can do nothing more. Fenced on
                // purpose by a second process with this instance's id (it is in the
                // group): this one is the zombie and stops. Otherwise the broker ended
                // the transaction itself (it outlived transaction.timeout.ms while the
                // broker was away, or its coordinator lost it): a new producer with the
                // same id goes on.
                match consumer::another_process_is(&self.consumer, self.cfg) {
                    Ok(true) => {
                        return Err(last.context(format!(
                            "fenced ({why}): another instance with kafka.instance_id `{}` has taken over; this one stops. Give each instance its own id",
                            self.cfg.kafka.instance_id
                        )));
                    }
                    Ok(false) => {
                        tracing::warn!(?code, "the producer failed ({why}); making a new one");
                        match TxnProducer::create(self.cfg, Some(self.handles.metrics.clone())) {
                            Ok(p) => {
                                let producer = Arc::new(p);
                                *self
                                    .consumer
                                    .context()
                                    .producer
                                    .lock()
                                    .expect("producer lock") = Some(producer.clone());
                                self.producer = producer;
                            }
                            Err(e) => last = e,
                        }
                    }
                    Err(e) => last = e,
                }
                if self.producer.fatal_error().is_some() {
                    if started.elapsed() >= RECOVER_FOR {
                        return Err(last.context(format!(
                            "could not make a new producer within {RECOVER_FOR:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            tracing::warn!(
                instance = %self.cfg.kafka.instance_id,
                "the transaction failed ({last:#}); aborting it and restoring the tasks from their last commit"
            );
            let assigned: Vec<(String, i32)> = self
                .consumer
                .assignment()
                .context("reading the consumer's assignment")?
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            match self.restore(Some(assigned)) {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < RECOVER_FOR => {
                    last = e;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "could not restore the tasks after a failed transaction within {RECOVER_FOR:?}; a restart resumes from the last commit"
                    )))
                }
            }
        }
    }

    /// Joins the group for the input and repartition topics.
    fn subscribe(&self) -> anyhow::Result<()> {
        let t = &self.cfg.topics;
        let mut topics: Vec<&str> = t.inputs().to_vec();
        topics.push(&t.repartition);
        self.consumer
            .subscribe(&topics)
            .context("subscribing to the input and repartition topics")
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
            let Some(run) = self.tasks.get(&(Stage::Attribution, p)).cloned() else {
                continue;
            };
            if !batch_due(
                self.sent_progress.get(&p).copied(),
                entries.is_empty(),
                progress,
            ) {
                continue;
            }
            self.sent_progress.insert(p, progress);
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
        let (tasks, producer) = (&self.tasks, &self.producer);
        // Tagged with the transaction being opened; a task without a run has nothing to write.
        let tag_of = |stage, p| {
            tasks.get(&(stage, p)).map(|run: &TaskRun| Tag {
                inc: run.inc,
                n: run.n + 1,
            })
        };
        let send = |stage, p, tag, key: &[u8], value: Option<&[u8]>| {
            let Some(tag) = tag else { return Ok(()) };
            producer.send(Record {
                topic: changelog_topic(self.cfg, stage),
                partition: Some(p),
                key: Some(key),
                value,
                tag: Some(tag),
                kind: Kind::Changelog,
            })
        };
        for t in self.engine.attribution_tasks() {
            let (stage, p) = (Stage::Attribution, t.partition());
            // Without a run the task has nothing to write: its changes wait.
            let Some(tag) = tag_of(stage, p) else {
                continue;
            };
            let mut sent = Ok(());
            t.drain_changes(tag, |key, value| {
                if sent.is_ok() {
                    sent = send(stage, p, Some(tag), key, value);
                }
            });
            sent?;
        }
        for t in self.engine.aggregation_tasks() {
            let (stage, p) = (Stage::Aggregation, t.partition());
            let tag = tag_of(stage, p);
            for (key, value) in t.take_changes() {
                send(stage, p, tag, &key, value.as_deref())?;
            }
        }
        Ok(())
    }

    fn changelog(&self, stage: Stage) -> &str {
        changelog_topic(self.cfg, stage)
    }

    /// Per task, where its input partitions resume once the open transaction commits:
    /// after the last record processed, or where the last commit left them.
    fn resume_offsets(&mut self) -> BTreeMap<(Stage, i32), Vec<Option<i64>>> {
        let mut resume = BTreeMap::new();
        for t in self.engine.attribution_tasks() {
            if let Some(run) = self.tasks.get(&(Stage::Attribution, t.partition())) {
                let next = t.next_offsets();
                let o = (0..next.len())
                    .map(|i| next[i].or(run.offsets.get(i).copied().flatten()))
                    .collect();
                resume.insert((Stage::Attribution, t.partition()), o);
            }
        }
        for t in self.engine.aggregation_tasks() {
            if let Some(run) = self.tasks.get(&(Stage::Aggregation, t.partition())) {
                let o = t
                    .committable_offset()
                    .or(run.offsets.first().copied().flatten());
                resume.insert((Stage::Aggregation, t.partition()), vec![o]);
            }
        }
        resume
    }

    /// The same positions as consumer group offsets.
    fn group_offsets(
        &self,
        resume: &BTreeMap<(Stage, i32), Vec<Option<i64>>>,
    ) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for ((stage, p), offsets) in resume {
            for (topic, o) in self.task_topics(*stage).into_iter().zip(offsets) {
                if let Some(o) = o {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
                }
            }
        }
        Ok(tpl)
    }

    /// The topics a task of `stage` reads, in the order of its offsets.
    fn task_topics(&self, stage: Stage) -> Vec<&str> {
        match stage {
            Stage::Attribution => self.cfg.topics.inputs().to_vec(),
            Stage::Aggregation => vec![self.cfg.topics.repartition.as_str()],
        }
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

    /// After an assignment change: drops every task and restores the ones of
    /// `assigned` (`None`: everything was revoked) from their changelogs (the open
    /// transaction was aborted on revoke), then assigns the partitions at the
    /// offsets their last commits recorded.
    fn restore(&mut self, assigned: Option<Vec<(String, i32)>>) -> anyhow::Result<()> {
        let started = Instant::now();
        self.producer.abort()?;
        // The old assignment's lanes go; the new ones are split below, before `assign`.
        self.lanes = Lanes::default();
        self.engine.clear();
        self.tasks.clear();
        self.sent_progress.clear();
        self.out.clear();
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .rebalances
            .inc();
        let Some(assigned) = assigned else {
            tracing::info!(instance = %self.cfg.kafka.instance_id, "partitions revoked");
            return Ok(());
        };
        let t = &self.cfg.topics;
        let mut wanted = BTreeSet::new();
        for (topic, p) in &assigned {
            if *topic == t.repartition {
                wanted.insert((Stage::Aggregation, *p));
            } else if t.input_topic(topic).is_some() {
                wanted.insert((Stage::Attribution, *p));
            }
        }
        if wanted.is_empty() {
            tracing::info!(instance = %self.cfg.kafka.instance_id, "no partitions assigned");
            return self
                .consumer
                .assign(&TopicPartitionList::new())
                .context("taking an empty assignment");
        }
        // 1. A marker per task, committed: its offset names this incarnation, bounds
        //    the read, and voids whatever an older owner still writes after it.
        let nonce = format!("{}|{}", self.cfg.kafka.instance_id, now_ms());
        let key = [MARKER_PREFIX, nonce.as_bytes()].concat();
        for (stage, p) in &wanted {
            self.producer.send(Record {
                topic: self.changelog(*stage),
                partition: Some(*p),
                key: Some(&key),
                value: Some(&[]),
                tag: None,
                kind: Kind::Marker,
            })?;
        }
        self.producer
            .commit_open()
            .context("committing restore markers")?;
        let markers = self.producer.take_markers(wanted.len())?;
        let mut incs = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for (stage, p) in &wanted {
            let topic = self.changelog(*stage).to_string();
            let inc = *markers
                .get(&(topic.clone(), *p))
                .context("a restore marker has no offset")?;
            incs.insert((*stage, *p), inc);
            ends.insert((*stage, *p), (topic, *p, inc));
        }
        // 2. Each changelog partition up to its marker: what committed, and the state.
        let states = changelog::read(self.cfg, &ends)?;
        let now = now_ms();
        let mut keys = 0;
        let mut runs = BTreeMap::new();
        for ((stage, p), (lineage, entries)) in states {
            keys += entries.len();
            let result: Result<(), String> = match stage {
                Stage::Attribution => {
                    let task = self.engine.add_attribution(p, now);
                    let per_task =
                        self.cfg.state.expected_orders as usize / self.partitions.max(1) as usize;
                    if per_task > 0 && !task.reserve(per_task) {
                        tracing::warn!(
                            partition = p,
                            orders = per_task,
                            "no memory to size the state for state.expected_orders; it grows as needed"
                        );
                    }
                    task.resume_at(&lineage.offsets);
                    let restored = entries.iter().try_for_each(|(k, v)| task.restore(k, v));
                    // From here on: what the restore itself changed is in the changelog already.
                    task.track_changes();
                    restored
                }
                Stage::Aggregation => {
                    let task = self.engine.add_aggregation(p, self.partitions as usize);
                    task.track_changes();
                    task.resume_at(lineage.offsets.first().copied().flatten());
                    entries.iter().try_for_each(|(k, v)| task.restore(k, v))
                }
            };
            result
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("restoring {stage:?} task {p}"))?;
            tracing::debug!(
                instance = %self.cfg.kafka.instance_id,
                ?stage,
                p,
                inc = incs[&(stage, p)],
                base = lineage.base,
                offsets = ?lineage.offsets,
                ranges = ?lineage.ranges,
                keys = entries.len(),
                "task restored"
            );
            // 3. The lineage record: this incarnation's start, before any of its work.
            let inc = incs[&(stage, p)];
            let value = state::encode(&LineageRecord {
                base: lineage.base,
                offsets: lineage.offsets.clone(),
                ranges: lineage.ranges,
            });
            self.producer.send(Record {
                topic: self.changelog(stage),
                partition: Some(p),
                key: Some(&state::bookkeeping_key(LINEAGE_PREFIX, inc)),
                value: Some(&value),
                tag: None,
                kind: Kind::Changelog,
            })?;
            runs.insert(
                (stage, p),
                TaskRun {
                    inc,
                    base: lineage.base,
                    n: lineage.base,
                    offsets: lineage.offsets,
                },
            );
        }
        self.producer
            .commit_open()
            .context("committing lineage records")?;
        // 4. Resume every partition where the restored state's last commit left it.
        let mut tpl = TopicPartitionList::new();
        for ((stage, p), run) in &runs {
            for (i, topic) in self.task_topics(*stage).into_iter().enumerate() {
                let at = match run.offsets.get(i).copied().flatten() {
                    Some(o) => Offset::Offset(o),
                    None => Offset::Beginning,
                };
                tpl.add_partition_offset(topic, *p, at)?;
            }
        }
        // The input partitions' lanes before `assign`: every record of theirs then
        // reaches its lane. (Split after, the first fetches could land in the
        // consumer's queue, and be read after later records of the same partition.)
        let elements = tpl.elements();
        let lanes: Vec<(InputTopic, &str, i32)> = elements
            .iter()
            .filter_map(|e| {
                let topic = self.cfg.topics.input_topic(e.topic())?;
                Some((topic, e.topic(), e.partition()))
            })
            .collect();
        self.lanes = Lanes::split(&self.consumer, &lanes)?;
        self.consumer
            .assign(&tpl)
            .context("positioning the consumer at the restored offsets")?;
        self.tasks = runs;
        tracing::info!(
            instance = %self.cfg.kafka.instance_id,
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
        let attribution = self
            .tasks
            .keys()
            .filter(|(stage, _)| *stage == Stage::Attribution)
            .count();
        m.set_tasks(attribution, self.tasks.len() - attribution);
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

/// Whether an attribution task sends a batch at this commit: its incarnation's
/// first (the aggregation tasks wait to hear from every attribution task before
/// their watermark moves), or one with sums, or with progress that moved since
/// the batch it sent last.
fn batch_due(sent: Option<Progress>, empty: bool, progress: Progress) -> bool {
    !empty || sent != Some(progress)
}

/// Hands one record from the consumer's own queue to the task that owns its partition.
fn dispatch<M: Message>(
    engine: &mut Engine,
    out: &mut Vec<Output>,
    newest_input_ms: &mut i64,
    topics: &TopicNames,
    m: &M,
) {
    if m.topic() == topics.repartition {
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
    if let Some(topic) = topics.input_topic(m.topic()) {
        let record = LaneRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
        };
        dispatch_input(engine, out, newest_input_ms, topic, &record);
    }
}

/// Hands one input record, its topic known (a lane's), to its attribution task.
fn dispatch_input(
    engine: &mut Engine,
    out: &mut Vec<Output>,
    newest_input_ms: &mut i64,
    topic: InputTopic,
    m: &LaneRecord<'_>,
) {
    let source = Source {
        topic,
        partition: m.partition,
        offset: m.offset,
    };
    if let Some(ts) = m.timestamp_ms {
        *newest_input_ms = (*newest_input_ms).max(ts);
    }
    engine.on_record(source, m.key, m.payload, out);
}

/// The changelog topic of a stage's tasks.
fn changelog_topic(cfg: &Config, stage: Stage) -> &str {
    match stage {
        Stage::Attribution => &cfg.topics.attribution_changelog,
        Stage::Aggregation => &cfg.topics.aggregation_changelog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_first_then_with_sums_or_moved_progress() {
        let (start, later) = (
            Progress::default(),
            Progress {
                watermark_ms: 5,
                ..Progress::default()
            },
        );
        assert!(batch_due(None, true, start), "the first one, though empty");
        assert!(!batch_due(Some(start), true, start), "nothing new");
        assert!(batch_due(Some(start), false, start), "sums");
        assert!(batch_due(Some(start), true, later), "progress");
    }
}
