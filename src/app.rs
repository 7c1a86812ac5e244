//! The only place that wires Kafka, the engine and telemetry together: the
//! processing loop of `gmv run`.
//!
//! One consumer in the job's group reads the input topics (attribution tasks)
//! and the repartition topic (aggregation tasks). Every `commit_interval` one
//! Kafka transaction carries the outputs, the repartition batches, the changelog
//! records and the consumer offsets, so a crash at any point resumes exactly
//! from the last commit. The protocol's state and its reasons are in
//! `core/commit.rs`; this file does the I/O each of its transitions asks for,
//! `app/recovery.rs` the restores (after a rebalance or a failed transaction).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

mod recovery;
pub mod watchdog;

use crate::config::{Config, TopicNames};
use crate::core::batch_log;
use crate::core::commit::{Commits, Stage};
use crate::core::output::{Dim, Output, OutputTopic};
use crate::core::state::{self, PartialBatch};
use crate::core::Engine;
use crate::io::changelog;
use crate::io::consumer::{self, InputConsumer};
use crate::io::lanes::{LaneRecord, Lanes, LANE_BATCH};
use crate::io::producer::{Kind, PendingCommit, Record, TxnProducer};
use crate::io::topics;
use crate::model::{InputTopic, Source};
use crate::telemetry::http::now_ms;
use crate::telemetry::metrics::OutputCounters;
use crate::telemetry::Metrics;

/// Largest number of records handled between two ticks.
const MAX_BATCH: usize = 20_000;
/// How long after the last commit began the loop reads on while that commit
/// still runs, before it waits for it: bounds what a transaction holds when
/// the broker is slow (its commits took 100–150 ms each in a catch-up on the
/// shared two cores, docs/performance.md).
const COMMIT_DEFER_MAX: Duration = Duration::from_secs(1);
/// How often metrics are refreshed from the engine.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// How often latency quantiles are logged.
const LATENCY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Handles the processing loop shares with the HTTP server and signal handler.
#[derive(Clone)]
pub struct Handles {
    /// The loop's; the HTTP server reads only what `http_view` hands it.
    pub metrics: Arc<Mutex<Metrics>>,
    pub heartbeat_ms: Arc<AtomicI64>,
    /// The librdkafka call the loop waits in that the watchdog limits tighter.
    pub local_calls: Arc<watchdog::LocalCalls>,
    pub shutdown: Arc<AtomicBool>,
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            metrics: Arc::new(Mutex::new(Metrics::new())),
            heartbeat_ms: Arc::new(AtomicI64::new(now_ms())),
            local_calls: Arc::default(),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the HTTP server reads: nothing it could hold the loop up with (the
    /// screen's view comes from its own reader, `screen`).
    pub fn http_view(
        &self,
        screen: Option<crate::screen::reader::Feed>,
    ) -> crate::telemetry::http::Shared {
        crate::telemetry::http::Shared {
            registry: self.metrics.lock().expect("metrics lock").registry(),
            screen,
            heartbeat_ms: self.heartbeat_ms.clone(),
        }
    }

    fn output_counters(&self) -> OutputCounters {
        self.metrics.lock().expect("metrics lock").output_counters()
    }
}

impl Default for Handles {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets `flag` on SIGINT or SIGTERM, so loops stop consuming, flush and
/// commit. A second signal ends the process at once (status 130), for an
/// operator who will not wait for a broker that is gone: the job then
/// restarts from its last commit, as after a crash.
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
                for signals in 1.. {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    if signals > 1 {
                        tracing::warn!("second signal: exiting now, without finishing");
                        std::process::exit(130);
                    }
                    tracing::info!("signal received: stopping (a second one exits at once)");
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The broker the job runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// A Kafka cluster: every start check applies.
    Kafka,
    /// The demo's embedded broker (librdkafka's mock cluster), which answers no
    /// DescribeConfigs: the topics' record limits are not checked (the demo
    /// created them itself; a check would wait for its timeout).
    Embedded,
}

/// Runs the job until `handles.shutdown` is set; then commits what is done.
pub fn run(cfg: &Config, handles: &Handles, broker: Broker) -> anyhow::Result<()> {
    let consumer = Arc::new(consumer::create(cfg, Some(handles.metrics.clone()))?);
    let t = &cfg.topics;
    let inputs = t.inputs();
    let partitions = topics::check_inputs(&*consumer, &inputs)?;
    topics::check_writable(&*consumer, cfg, broker == Broker::Kafka)?;
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
    {
        let m = handles.metrics.lock().expect("metrics lock");
        m.set_stage_partitions(partitions, aggregation_partitions);
        m.set_record_limit(cfg.kafka.max_record_bytes as usize);
        // At 0 from the start, so that an alert sees the first increase.
        for topic in inputs.iter().chain([&t.repartition.as_str()]) {
            m.offsets_skipped.with_label_values(&[topic]);
        }
    }

    let producer = Arc::new(TxnProducer::create(
        cfg,
        Some(handles.output_counters()),
        cfg.kafka.max_record_bytes as usize,
    )?);

    let mut lp = Loop {
        cfg,
        engine: Engine::new(cfg.engine()),
        consumer,
        lanes: Lanes::default(),
        producer,
        handles,
        out: Vec::new(),
        commits: Commits::new(batch_log::chunk_bytes(cfg.kafka.max_record_bytes as usize)),
        partitions,
        aggregation_partitions,
        newest_input_ms: 0,
        in_flight: None,
        parked: None,
        next_emit: Instant::now(),
        skipped_to: BTreeMap::new(),
    };
    lp.subscribe()?;
    lp.consumer
        .context()
        .loop_handles_revokes
        .store(true, Ordering::SeqCst);
    let result = lp.process();
    // From here on no one polls for a revoke to commit before: the callback
    // gives the partitions up by itself (on `unsubscribe`, or closing).
    lp.consumer
        .context()
        .loop_handles_revokes
        .store(false, Ordering::SeqCst);
    let shutdown = if result.is_ok() {
        lp.shutdown()
    } else {
        Ok(())
    };
    result.and(shutdown)
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
    commits: Commits,
    partitions: i32,
    aggregation_partitions: i32,
    /// Newest Kafka timestamp read in the current commit interval, for end-to-end latency.
    newest_input_ms: i64,
    /// The last transaction's commit while it runs, and its `newest_input_ms`.
    in_flight: Option<(PendingCommit, i64)>,
    /// Between a revoke and the next assignment: the group generation in which
    /// the owned tasks committed everything they did (they are kept if the
    /// next assignment, in the next generation, gives them back).
    parked: Option<i32>,
    /// When the windows and totals that changed are emitted next (every `emit_interval`).
    next_emit: Instant,
    /// Per input partition, up to where offsets deleted before the job read
    /// them were counted (`consumer::committed_offsets`).
    skipped_to: BTreeMap<(String, i32), i64>,
}

impl Loop<'_> {
    /// Runs `call` on the consumer as a call only librdkafka's own thread
    /// answers, which the watchdog limits tighter ([`watchdog::LocalCalls`]).
    fn local<T>(&self, what: &'static str, call: impl FnOnce(&InputConsumer) -> T) -> T {
        self.handles
            .local_calls
            .within(what, || call(&self.consumer))
    }

    fn process(&mut self) -> anyhow::Result<()> {
        let (mut last_metrics, mut last_latency_log) = (Instant::now(), Instant::now());
        let mut last_commit = Instant::now();
        let commit_every = Duration::from_millis(self.cfg.kafka.commit_interval_ms as u64);
        let emit_every = Duration::from_millis(self.cfg.time.emit_interval_ms as u64);
        let topics = &self.cfg.topics;
        while !self.handles.shutdown.load(Ordering::Relaxed) {
            let mut started = None;
            let mut n = 0;
            let mut idle = false;
            // Records in a row from the consumer's own queue: a backlog there (the
            // repartition topic after a restore) must not keep the lanes waiting.
            let mut own_run = 0;
            // Until a commit or an emission is due, and at least once: a rebalance
            // is seen only by polling (after a slow restore both are due at once).
            let until = (last_commit + commit_every).min(self.next_emit);
            let mut first = true;
            // A partition stopped, its offset deleted (`consumer::create`).
            let mut out_of_range = false;
            while first || (n < MAX_BATCH && Instant::now() < until) {
                first = false;
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
                    if let Some(event) = event {
                        match self.rebalanced(event) {
                            Err(e) if e.is::<changelog::Stopped>() => return Ok(()),
                            r => r?,
                        }
                    }
                    continue;
                }
                let (engine, out, newest) =
                    (&mut self.engine, &mut self.out, &mut self.newest_input_ms);
                match polled {
                    Some(Ok(m)) => {
                        started.get_or_insert_with(Instant::now);
                        n += 1;
                        dispatch(engine, out, newest, topics, &m)?;
                        idle = false;
                        own_run += 1;
                        if own_run < LANE_BATCH {
                            continue;
                        }
                    }
                    // A repartition partition's offset out of its log's range:
                    // the consumer's queue does not say which one.
                    Some(Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset,
                    ))) => {
                        tracing::warn!("a repartition partition's offset is no longer in its log");
                        out_of_range = true;
                    }
                    Some(Err(e)) => tracing::warn!("consumer: {e}"),
                    None => {}
                }
                own_run = 0;
                let read = self.lanes.read(LANE_BATCH, |topic, m, ahead| {
                    engine.prefetch(m.partition, topic, ahead);
                    dispatch_input(engine, out, newest, topic, m)
                });
                out_of_range |= self.lanes.take_out_of_range();
                if out_of_range {
                    break;
                }
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
            // (Parked, nothing is assigned: the next assignment restores anyway.)
            if out_of_range && self.parked.is_none() {
                self.skip_deleted()?;
                last_commit = Instant::now();
                continue;
            }
            // An emission is committed at once: waiting for the commit interval
            // would add up to that interval to every update's delay.
            // Nothing is emitted between a revoke and the next assignment: what
            // it emitted would be dropped with the restore, unsaid.
            let emitted = Instant::now() >= self.next_emit && self.parked.is_none();
            if emitted {
                self.next_emit = Instant::now() + emit_every;
                self.engine.emit(&mut self.out);
            }
            // One commit at a time: while the last one still runs (the broker is
            // slow to commit), the loop reads on and the next transaction grows,
            // instead of waiting; past COMMIT_DEFER_MAX it waits.
            let deferred = self.commit_running() && last_commit.elapsed() < COMMIT_DEFER_MAX;
            if (emitted || last_commit.elapsed() >= commit_every) && !deferred {
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
                // Counted from here, after waiting for the previous commit: a commit
                // longer than the interval must not leave the loop no time to read
                // (with 100 ms commits a catch-up read nothing but commits), and
                // after a failure the loop polls first, where a rebalance is seen.
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

    /// One transaction: the outputs, what the tasks did (repartition batches,
    /// changelog records), and the offsets of every owned partition.
    ///
    /// The commit itself runs in the background while the loop reads on (a
    /// commit is mostly waiting on the broker: with the loop blocked, commits
    /// took half of a catch-up's time). The next commit first waits for it, so
    /// transactions still commit one after the other, and a failure is seen
    /// there: what was read since is dropped with the rest by the restore.
    fn commit(&mut self) -> anyhow::Result<()> {
        self.finish_commit()?;
        // Between a revoke and the next assignment, the tasks' state is what
        // committed, and no generation holds to commit in.
        if self.commits.owned().next().is_none() || self.parked.is_some() {
            return Ok(());
        }
        let now = now_ms();
        // A partition whose records wait in its lane is behind the others, not idle.
        let engine = &mut self.engine;
        self.lanes
            .each_waiting(|topic, p| engine.touch((topic, p), now));
        self.confirm_idle(now);
        self.engine.on_tick(now);
        let txn = self
            .commits
            .transaction(self.engine.take_work(self.aggregation_partitions));
        self.publish()?;
        let cfg = self.cfg;
        for (r, batch) in &txn.batches {
            self.send_batch(*r, batch)?;
        }
        for ((stage, p), key, value) in &txn.changes {
            self.producer.send(Record {
                topic: changelog_topic(cfg, *stage),
                partition: Some(*p),
                key: Some(key),
                value: value.as_deref(),
                kind: Kind::Changelog,
            })?;
        }
        let mut offsets = TopicPartitionList::new();
        for ((stage, p), i, o) in &txn.offsets {
            offsets.add_partition_offset(task_topic(cfg, *stage, *i), *p, Offset::Offset(*o))?;
        }
        let group = self
            .local("consumer_group_metadata", |c| c.group_metadata())
            .context("no consumer group metadata")?;
        let pending = self.producer.commit_in_background(offsets, group)?;
        self.in_flight = Some((pending, std::mem::take(&mut self.newest_input_ms)));
        Ok(())
    }

    /// Partitions turn idle only once the broker says they are read to their
    /// end: nothing read for `idle_timeout` may also mean the broker is away,
    /// and idle partitions would let the watermark pass their records (with
    /// every partition idle, the after-the-sale flush closes every window), so
    /// the records read once it is back would all be late. Those it does not
    /// clear stay active (`touch`) for another `idle_timeout`.
    fn confirm_idle(&mut self, now: i64) {
        let parts = self.engine.turning_idle(now);
        if parts.is_empty() {
            return;
        }
        let named: Vec<(&str, i32, i64)> = parts
            .iter()
            .map(|&(topic, p)| {
                let i = topic.index();
                let resumed = self.commits.resumes_at((Stage::Attribution, p), i);
                // Not owned (cannot be: its task would not be in the engine): not at its end.
                (self.cfg.topics.inputs()[i], p, resumed.unwrap_or(0))
            })
            .collect();
        let at_end = consumer::read_to_end(&self.consumer, &named).unwrap_or_else(|e| {
            tracing::warn!("{e:#}: the input partitions that seem idle stay active");
            vec![false; named.len()]
        });
        for (part, done) in parts.into_iter().zip(at_end) {
            if !done {
                self.engine.touch(part, now);
            }
        }
    }

    /// Whether the last commit still runs.
    fn commit_running(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|(pending, _)| !pending.is_finished())
    }

    /// Waits for the commit in flight, if any. Once it succeeded, the inputs
    /// resume after what it carried; if it failed, this instance's memory is
    /// ahead of what committed: the caller aborts the transaction and restores
    /// the tasks from the last commit (`recover`).
    fn finish_commit(&mut self) -> anyhow::Result<()> {
        let Some((pending, newest_input_ms)) = self.in_flight.take() else {
            return Ok(());
        };
        let waited = Instant::now();
        let done = pending.wait().context("the transaction failed")?;
        self.commits.committed();
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        m.commit_waited(waited.elapsed());
        m.commit(true, done.seconds);
        if newest_input_ms > 0 {
            m.observe_end_to_end(done.at_ms - newest_input_ms);
        }
        Ok(())
    }

    fn send_batch(&self, r: i32, batch: &PartialBatch) -> anyhow::Result<()> {
        let value = state::encode(batch);
        self.producer.send(Record {
            topic: &self.cfg.topics.repartition,
            partition: Some(r),
            key: Some(state::BATCH_KEY.as_bytes()),
            value: Some(&value),
            kind: Kind::Internal,
        })
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

    /// Sends the engine's outputs, then counts what they say in the metrics
    /// (not holding the metrics' lock while `send` may wait for a full queue).
    fn publish(&mut self) -> anyhow::Result<()> {
        let t = &self.cfg.topics;
        let mut noted = Vec::new();
        for o in self.out.drain(..) {
            if let Some((topic, key, value)) = o.to_record() {
                let name = match topic {
                    OutputTopic::GmvWindows => &t.gmv_windows,
                    OutputTopic::GmvTotals => &t.gmv_totals,
                    OutputTopic::Milestones => &t.milestones,
                    OutputTopic::DeadLetters => &t.dead_letters,
                };
                self.producer.send(Record {
                    topic: name,
                    partition: None,
                    key: key.as_deref(),
                    value: Some(&value),
                    kind: Kind::Output(topic),
                })?;
            }
            if matches!(o, Output::PayToDelivery { .. } | Output::Milestone(_)) {
                noted.push(o);
            }
        }
        if noted.is_empty() {
            return Ok(());
        }
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        for o in noted {
            match o {
                Output::PayToDelivery { millis } => m.pay_to_delivery(millis),
                Output::Milestone(ms) => {
                    tracing::info!(dim = ms.dim.as_str(), key = %ms.key, threshold_fen = %ms.threshold_fen, crossed_at_ms = ms.crossed_at_ms, "milestone");
                    m.milestone_emitted(&ms, now_ms());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn refresh_metrics(&mut self) {
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        m.sync_stats(self.engine.stats());
        m.set_watermark(self.engine.watermark_ms(), now_ms());
        let (assigned, idle) = self.engine.partitions();
        m.set_partitions(assigned, idle);
        let (attribution, aggregation) =
            self.commits
                .owned()
                .fold((0, 0), |(a, g), (stage, _)| match stage {
                    Stage::Attribution => (a + 1, g),
                    Stage::Aggregation => (a, g + 1),
                });
        m.set_tasks(attribution, aggregation);
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
        self.engine.emit(&mut self.out);
        let result = self.commit().and_then(|()| self.finish_commit());
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

/// Hands one record from the consumer's own queue to the task that owns its
/// partition. A repartition record this version cannot read stops the job: it
/// holds sums that would otherwise be lost without a trace.
fn dispatch<M: Message>(
    engine: &mut Engine,
    out: &mut Vec<Output>,
    newest_input_ms: &mut i64,
    topics: &TopicNames,
    m: &M,
) -> anyhow::Result<()> {
    if m.topic() == topics.repartition {
        let at = || {
            format!(
                "`{}` partition {} offset {}",
                m.topic(),
                m.partition(),
                m.offset()
            )
        };
        if m.key() != Some(state::BATCH_KEY.as_bytes()) {
            bail!(
                "{}: a batch written by another version; see \"Upgrading\" in the README",
                at()
            );
        }
        let batch = m
            .payload()
            .map(state::decode::<PartialBatch>)
            .with_context(at)?
            .with_context(|| format!("{}: an unreadable batch", at()))?;
        engine.receive(m.partition(), m.offset(), batch, out);
        return Ok(());
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
    Ok(())
}

/// Hands one input record, its topic known (a lane's), to its attribution task.
fn dispatch_input(
    engine: &mut Engine,
    out: &mut Vec<Output>,
    newest_input_ms: &mut i64,
    topic: InputTopic,
    m: &LaneRecord<'_>,
) -> Option<i64> {
    let source = Source {
        topic,
        partition: m.partition,
        offset: m.offset,
    };
    if let Some(ts) = m.timestamp_ms {
        *newest_input_ms = (*newest_input_ms).max(ts);
    }
    engine.on_record(source, m.key, m.payload, out)
}

/// The changelog topic of a stage's tasks.
fn changelog_topic(cfg: &Config, stage: Stage) -> &str {
    match stage {
        Stage::Attribution => &cfg.topics.attribution_changelog,
        Stage::Aggregation => &cfg.topics.aggregation_changelog,
    }
}

/// The topic of input `i` of a task of `stage` (the order of its offsets).
fn task_topic(cfg: &Config, stage: Stage, i: usize) -> &str {
    match stage {
        Stage::Attribution => cfg.topics.inputs()[i],
        Stage::Aggregation => &cfg.topics.repartition,
    }
}
