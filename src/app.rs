//! The only place that wires Kafka, the engine and telemetry together: the
//! processing loop of `gmv run`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::core::engine::Totals;
use crate::core::output::{Dim, Output};
use crate::core::window::{Published, WindowSums};
use crate::core::Engine;
use crate::io::consumer::{self, InputConsumer};
use crate::io::producer::Publisher;
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

/// Runs the job until `handles.shutdown` is set; then flushes and commits what is done.
pub fn run(cfg: &Config, handles: &Handles) -> anyhow::Result<()> {
    let consumer = consumer::create(cfg, Some(handles.metrics.clone()))?;
    let inputs = cfg.topics.inputs();
    let partitions = topics::check_inputs(&consumer, &inputs)?;
    tracing::info!(partitions, brokers = %cfg.kafka.brokers, "input topics are co-partitioned");

    let mut engine = Engine::new(cfg.engine());
    let read_back = read_back_outputs(cfg, &mut engine)?;
    if read_back > 0 {
        tracing::info!(
            read_back,
            "outputs of earlier runs read back: rebuilding continues from them"
        );
    }
    let publisher = Publisher::create(cfg, Some(handles.metrics.clone()))?;

    // State is in memory: rebuild it from the start of the input.
    consumer::assign_from_beginning(&consumer, &inputs, partitions)?;
    let assigned: Vec<_> = InputTopic::ALL
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (*t, p)))
        .collect();
    engine.assign(&assigned, now_ms());
    handles
        .metrics
        .lock()
        .expect("metrics lock")
        .rebalances
        .inc();

    let mut lp = Loop {
        cfg,
        engine,
        consumer,
        publisher,
        handles,
        out: Vec::with_capacity(MAX_BATCH),
        newest_input_ms: 0,
    };
    let result = lp.process();
    let shutdown = lp.shutdown();
    result.and(shutdown)
}

struct Loop<'a> {
    cfg: &'a Config,
    engine: Engine,
    consumer: InputConsumer,
    publisher: Publisher,
    handles: &'a Handles,
    out: Vec<Output>,
    /// Newest Kafka timestamp read in the current emit cycle, for end-to-end latency.
    newest_input_ms: i64,
}

impl Loop<'_> {
    fn process(&mut self) -> anyhow::Result<()> {
        let (mut last_metrics, mut last_latency_log) = (Instant::now(), Instant::now());
        let inputs: Vec<String> = self
            .cfg
            .topics
            .inputs()
            .iter()
            .map(|s| s.to_string())
            .collect();
        while !self.handles.shutdown.load(Ordering::Relaxed) {
            // Timed from the first record, so waiting for input is not counted as processing.
            let mut started = None;
            let mut n = 0;
            while n < MAX_BATCH {
                let wait = if n == 0 {
                    consumer::POLL_WAIT
                } else {
                    Duration::ZERO
                };
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!("consumer: {e}");
                        break;
                    }
                    Some(Ok(m)) => {
                        let Some(i) = inputs.iter().position(|t| t == m.topic()) else {
                            continue;
                        };
                        let source = Source {
                            topic: InputTopic::ALL[i],
                            partition: m.partition(),
                            offset: m.offset(),
                        };
                        started.get_or_insert_with(Instant::now);
                        if let Some(ts) = m.timestamp().to_millis() {
                            self.newest_input_ms = self.newest_input_ms.max(ts);
                        }
                        self.engine
                            .on_record(source, m.key(), m.payload(), &mut self.out);
                        n += 1;
                    }
                }
            }
            if let Some(started) = started {
                let mut m = self.handles.metrics.lock().expect("metrics lock");
                m.observe_batch(started.elapsed().as_secs_f64());
            }
            let emitted = self.engine.on_tick(now_ms(), &mut self.out);
            self.publish()?;
            if emitted {
                self.seal();
            }
            self.commit_completed();
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

    /// Sends the engine's outputs; derives the output-driven metrics in the same pass.
    fn publish(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.publisher.epochs.lock().expect("epochs lock").failure() {
            bail!("an output could not be written, so no further offsets are committed: {f}");
        }
        let mut metrics = None;
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
                self.publisher.send(topic, key.as_deref(), &value)?;
            }
        }
        Ok(())
    }

    fn seal(&mut self) {
        let names = self.cfg.topics.inputs();
        let offsets = self
            .engine
            .committable_offsets()
            .into_iter()
            .map(|((t, p), o)| (names[t.index()].to_string(), p, o))
            .collect();
        self.publisher
            .epochs
            .lock()
            .expect("epochs lock")
            .seal(offsets, self.newest_input_ms);
        self.newest_input_ms = 0;
    }

    fn commit_completed(&mut self) {
        let done = self
            .publisher
            .epochs
            .lock()
            .expect("epochs lock")
            .take_completed();
        let Some((offsets, newest_input_ms)) = done else {
            return;
        };
        let started = Instant::now();
        let result = consumer::commit(&self.consumer, &offsets);
        let mut m = self.handles.metrics.lock().expect("metrics lock");
        m.commit(result.is_ok(), started.elapsed().as_secs_f64());
        if newest_input_ms > 0 {
            m.observe_end_to_end(now_ms() - newest_input_ms);
        }
        if let Err(e) = result {
            // A failed commit is retried by the next one; results are already durable.
            tracing::warn!("{e:#}");
        }
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

    /// Emits what changed, waits for the broker, and commits what is final.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down: flushing outputs and committing offsets");
        self.engine.emit(&mut self.out);
        self.publish()?;
        self.seal();
        self.publisher.flush(Duration::from_secs(60))?;
        self.commit_completed();
        self.refresh_metrics();
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .log_latencies();
        if let Some(f) = self.publisher.epochs.lock().expect("epochs lock").failure() {
            bail!("outputs were lost at shutdown: {f}");
        }
        Ok(())
    }
}

/// Reads back what earlier runs published (`milestones`, `gmv-windows`,
/// `gmv-totals`), so that rebuilding state from the input never emits a
/// milestone twice, never updates a final window, never shows a figure going
/// back, and continues every key's revisions. Returns the records read.
fn read_back_outputs(cfg: &Config, engine: &mut Engine) -> anyhow::Result<usize> {
    let reader = consumer::create(cfg, None)?;
    let t = &cfg.topics;
    let names = [
        t.milestones.as_str(),
        t.gmv_windows.as_str(),
        t.gmv_totals.as_str(),
    ];
    let mut tpl = TopicPartitionList::new();
    for name in names {
        let md = reader
            .fetch_metadata(Some(name), Duration::from_secs(15))
            .with_context(|| format!("reading metadata of the {name} topic"))?;
        match md.topics().first().filter(|t| t.error().is_none()) {
            Some(topic) => {
                for p in topic.partitions() {
                    tpl.add_partition_offset(name, p.id(), Offset::Beginning)?;
                }
            }
            None => tracing::warn!(
                topic = name,
                "output topic does not exist yet; create it with `gmv topics`"
            ),
        }
    }
    if tpl.count() == 0 {
        return Ok(0);
    }
    reader.assign(&tpl).context("assigning the output topics")?;
    // Latest value per key: compacted topics keep one key on one partition, in order.
    let mut windows: BTreeMap<Vec<u8>, PublishedWindow> = BTreeMap::new();
    let mut totals: BTreeMap<Vec<u8>, PublishedTotal> = BTreeMap::new();
    let (mut count, started, mut quiet_since) = (0, Instant::now(), Instant::now());
    // Some brokers report end offsets unreliably: read until the topics stay quiet.
    while quiet_since.elapsed() < Duration::from_millis(1500)
        && started.elapsed() < Duration::from_secs(600)
    {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                let (Some(key), Some(value)) = (m.key(), m.payload()) else {
                    continue;
                };
                count += 1;
                let parsed = if m.topic() == t.milestones {
                    serde_json::from_slice::<MilestoneSeen>(value)
                        .map(|s| engine.mark_milestone_emitted(s.dim, &s.key, s.threshold_fen))
                } else if m.topic() == t.gmv_windows {
                    serde_json::from_slice(value).map(|w| {
                        windows.insert(key.to_vec(), w);
                    })
                } else {
                    serde_json::from_slice(value).map(|v| {
                        totals.insert(key.to_vec(), v);
                    })
                };
                if let Err(e) = parsed {
                    tracing::warn!(
                        topic = m.topic(),
                        "ignoring an unreadable output record: {e}"
                    );
                }
            }
            Some(Err(e)) => tracing::warn!("reading back outputs: {e}"),
            None => {}
        }
    }
    for w in windows.into_values() {
        let sums = WindowSums {
            gmv_fen: w.gmv_fen,
            refund_fen: w.refund_fen,
            paid_orders: w.paid_orders,
        };
        let p = Published {
            sums,
            revision: w.revision,
            is_final: w.is_final,
        };
        engine.seed_window(w.dim, &w.key, w.window_size_ms, w.window_start_ms, p);
    }
    for t in totals.into_values() {
        let sums = Totals {
            gmv_fen: t.gmv_fen,
            refund_fen: t.refund_fen,
            paid_orders: t.paid_orders,
            placed_orders: t.placed_orders,
            shipped_orders: t.shipped_orders,
            delivered_orders: t.delivered_orders,
        };
        engine.seed_total(t.dim, &t.key, sums, t.revision);
    }
    Ok(count)
}

#[derive(serde::Deserialize)]
struct MilestoneSeen {
    dim: Dim,
    key: String,
    threshold_fen: i128,
}

#[derive(serde::Deserialize)]
struct PublishedWindow {
    dim: Dim,
    key: String,
    window_start_ms: i64,
    window_size_ms: i64,
    gmv_fen: i128,
    refund_fen: i128,
    paid_orders: u64,
    #[serde(rename = "final")]
    is_final: bool,
    revision: u64,
}

#[derive(serde::Deserialize)]
struct PublishedTotal {
    dim: Dim,
    key: String,
    gmv_fen: i128,
    refund_fen: i128,
    paid_orders: u64,
    placed_orders: u64,
    shipped_orders: u64,
    delivered_orders: u64,
    revision: u64,
}
