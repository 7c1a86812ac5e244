//! Writes generated traffic to the input topics at a target rate, keyed by
//! `order_id` and partitioned with murmur2 as the Java client does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message};

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

/// The generator's producer.
pub type InputProducer = ThreadedProducer<Deliveries>;

/// Counts the records the brokers never took, so that a write which lost some
/// says so (`finish`) instead of ending as if every record arrived.
pub struct Deliveries {
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// The producer's `message.timeout.ms`: by then every record is delivered
    /// or failed (`None`: 0, librdkafka's "no limit").
    delivery_timeout: Option<Duration>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, msg)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = self.first_failure.lock() {
                f.get_or_insert_with(|| format!("to {}: {e}", msg.topic()));
            }
        }
    }
}

/// librdkafka's default `message.timeout.ms`.
const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 300_000;

/// The producer settings upstream producers are expected to use (contract: murmur2 of the key).
pub fn producer(cfg: &Config) -> anyhow::Result<InputProducer> {
    let ours = [
        ("partitioner", "murmur2_random"),
        ("linger.ms", "10"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "1000000"),
        ("enable.idempotence", "true"),
    ];
    let config = crate::io::client_config(&cfg.kafka, &ours, &cfg.kafka.producer_properties);
    let timeout_ms = match config.get("message.timeout.ms") {
        Some(ms) => ms
            .parse()
            .with_context(|| format!("message.timeout.ms {ms:?} is not a number of ms"))?,
        None => DEFAULT_DELIVERY_TIMEOUT_MS,
    };
    config
        .create_with_context(Deliveries {
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            delivery_timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        })
        .context("creating the generator's Kafka producer")
}

/// Waits until every record sent is delivered or has failed, and fails if any
/// record this producer sent was not delivered. The wait is the producer's
/// own delivery timeout (plus a margin for the last callbacks), not a shorter
/// guess: after a broker outage the queued records may take minutes and still
/// arrive.
pub fn finish(p: &InputProducer) -> anyhow::Result<()> {
    let deliveries = p.context();
    let limit = match deliveries.delivery_timeout {
        Some(t) => Timeout::After(t + Duration::from_secs(10)),
        None => Timeout::Never,
    };
    p.flush(limit)
        .context("waiting for the generated records' deliveries")?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = deliveries
            .first_failure
            .lock()
            .map(|f| f.clone())
            .ok()
            .flatten();
        anyhow::bail!(
            "{failed} generated records were not delivered; the first {}",
            first.unwrap_or_default()
        );
    }
    Ok(())
}

/// Sends one record, waiting while the local queue is full. (A key is bytes:
/// tests send keys that are not UTF-8.)
pub fn send<K: AsRef<[u8]> + ?Sized>(
    p: &InputProducer,
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
    finish(&p)?;
    bar.finish_with_message("done");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    fn config(cluster_brokers: String, timeout_ms: &str) -> Config {
        let mut cfg = Config::default();
        cfg.kafka.brokers = cluster_brokers;
        cfg.kafka
            .producer_properties
            .insert("message.timeout.ms".into(), timeout_ms.into());
        cfg
    }

    #[test]
    fn finish_fails_when_records_were_not_delivered_and_passes_when_they_were() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let p = producer(&config(cluster.bootstrap_servers(), "1000")).unwrap();
        send(&p, "orders", Some("o-1"), b"{}").unwrap();
        finish(&p).unwrap();

        cluster.broker_down(1).unwrap();
        send(&p, "orders", Some("o-2"), b"{}").unwrap();
        send(&p, "orders", Some("o-3"), b"{}").unwrap();
        let err = format!("{:#}", finish(&p).unwrap_err());
        assert!(
            err.starts_with("2 generated records were not delivered"),
            "{err}"
        );
    }

    #[test]
    fn a_delivery_timeout_that_is_not_a_number_is_refused() {
        let err = producer(&config("localhost:1".into(), "5s")).err().unwrap();
        assert!(
            format!("{err:#}").contains("message.timeout.ms \"5s\""),
            "{err:#}"
        );
    }
}
