//! Writes generated traffic to the input topics at a target rate, keyed by
//! `order_id` and partitioned with murmur2 as the Java client does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::traffic::{RecordKind, Traffic, TrafficConfig};
use crate::config::Config;

/// How much to write and how fast.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Records per second of wall time; `None` is as fast as possible.
    pub rate: Option<u64>,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub progress: bool,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub records: u64,
    pub duplicates: u64,
    pub bad: u64,
    pub bytes: u64,
}

/// The producer settings upstream producers are expected to use (contract: murmur2 of the key).
pub fn producer(cfg: &Config) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    let ours = [
        ("partitioner", "murmur2_random"),
        ("linger.ms", "10"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "1000000"),
        ("enable.idempotence", "true"),
    ];
    crate::io::client_config(&cfg.kafka, &ours, &cfg.kafka.producer_properties)
        .create()
        .context("creating the generator's Kafka producer")
}

/// Sends one record, waiting while the local queue is full. (A key is bytes:
/// tests send keys that are not UTF-8.)
pub fn send<K: AsRef<[u8]> + ?Sized>(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&K>,
    value: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k.as_ref());
    }
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e).context("producing generated traffic"),
        }
    }
}

/// Generates and writes traffic until the count, duration or `stop` says so.
pub fn write(
    cfg: &Config,
    traffic: TrafficConfig,
    opts: &WriteOptions,
    stop: &AtomicBool,
) -> anyhow::Result<WriteReport> {
    let p = producer(cfg)?;
    let names = cfg.topics.inputs();
    let bar = if opts.progress {
        let bar = match opts.count {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {human_pos} records, {per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut report = WriteReport::default();
    for r in Traffic::new(traffic) {
        if opts.count.is_some_and(|n| report.records >= n)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
            || stop.load(Ordering::Relaxed)
        {
            break;
        }
        send(&p, names[r.topic.index()], r.key.as_deref(), &r.value)?;
        report.records += 1;
        report.bytes += r.value.len() as u64;
        match r.kind {
            RecordKind::Good => {}
            RecordKind::Duplicate => report.duplicates += 1,
            RecordKind::Bad(_) => report.bad += 1,
        }
        if report.records % 1024 == 0 {
            bar.set_position(report.records);
            if let Some(rate) = opts.rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(report.records as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
    }
    bar.set_position(report.records);
    p.flush(Duration::from_secs(60))
        .context("flushing generated traffic")?;
    bar.finish_with_message("done");
    Ok(report)
}
