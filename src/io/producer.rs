//! The output producer, with acknowledgement tracking by emit cycle
//! ("epoch"): the input offsets of an epoch are committable once every output
//! sent in it, and in every earlier epoch, has been acknowledged by the broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::core::output::OutputTopic;
use crate::telemetry::Metrics;

/// Input offsets to commit: (topic, partition, next offset).
pub type Offsets = Vec<(String, i32, i64)>;

#[derive(Debug, Default)]
struct Epoch {
    outstanding: usize,
    /// Set when the epoch is closed: what may be committed once it is acknowledged.
    sealed: Option<(Offsets, i64)>,
}

/// Outputs in flight per epoch.
#[derive(Debug, Default)]
pub struct Epochs {
    current: u64,
    open: BTreeMap<u64, Epoch>,
    failure: Option<String>,
}

impl Epochs {
    fn sent(&mut self) -> u64 {
        self.open.entry(self.current).or_default().outstanding += 1;
        self.current
    }

    fn acked(&mut self, epoch: u64, error: Option<String>) {
        if let Some(e) = self.open.get_mut(&epoch) {
            e.outstanding -= 1;
        }
        if let (Some(err), None) = (error, &self.failure) {
            self.failure = Some(err);
        }
    }

    /// Closes the current epoch with the offsets its outputs cover.
    pub fn seal(&mut self, offsets: Offsets, newest_input_ms: i64) {
        self.open.entry(self.current).or_default().sealed = Some((offsets, newest_input_ms));
        self.current += 1;
    }

    /// The newest fully acknowledged epoch's offsets, removing it and those before.
    pub fn take_completed(&mut self) -> Option<(Offsets, i64)> {
        if self.failure.is_some() {
            // An output was lost: nothing after it may be committed.
            return None;
        }
        let mut done = None;
        while let Some(entry) = self.open.first_entry() {
            let e = entry.get();
            if e.outstanding > 0 || e.sealed.is_none() {
                break;
            }
            done = entry.remove().sealed;
        }
        done
    }

    /// The first delivery failure; the job must stop without committing past it.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// Producer context: counts acknowledgements per epoch and per output topic.
pub struct AckContext {
    epochs: Arc<Mutex<Epochs>>,
    metrics: Option<Arc<Mutex<Metrics>>>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    /// epoch × 4 + output topic index.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (epoch, topic) = ((opaque / 4) as u64, OutputTopic::ALL[opaque % 4]);
        let error = result
            .as_ref()
            .err()
            .map(|(e, _)| format!("delivery to {} failed: {e}", topic.label()));
        if let Some(m) = &self.metrics {
            if let Ok(m) = m.lock() {
                m.output_acked(topic, error.is_none());
            }
        }
        if let Ok(mut e) = self.epochs.lock() {
            e.acked(epoch, error);
        }
    }
}

/// Sends output records and tracks their acknowledgement.
pub struct Publisher {
    producer: ThreadedProducer<AckContext>,
    pub epochs: Arc<Mutex<Epochs>>,
    topic_names: [String; 4],
}

impl Publisher {
    pub fn create(cfg: &Config, metrics: Option<Arc<Mutex<Metrics>>>) -> anyhow::Result<Self> {
        let ours = [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "120000"),
            ("queue.buffering.max.messages", "1000000"),
        ];
        let epochs = Arc::new(Mutex::new(Epochs::default()));
        let producer = super::client_config(&cfg.kafka, &ours, &cfg.kafka.producer_properties)
            .create_with_context(AckContext {
                epochs: epochs.clone(),
                metrics,
            })
            .context("creating the Kafka producer (check kafka.* settings)")?;
        let t = &cfg.topics;
        Ok(Publisher {
            producer,
            epochs,
            topic_names: [
                t.gmv_windows.clone(),
                t.gmv_totals.clone(),
                t.milestones.clone(),
                t.dead_letters.clone(),
            ],
        })
    }

    /// Sends one record in the current epoch, waiting while the local queue is full.
    pub fn send(&self, topic: OutputTopic, key: Option<&[u8]>, value: &[u8]) -> anyhow::Result<()> {
        let epoch = self.epochs.lock().expect("epochs lock").sent();
        let opaque = epoch as usize * 4 + topic.index();
        let mut record =
            BaseRecord::with_opaque_to(&self.topic_names[topic.index()], opaque).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    self.epochs
                        .lock()
                        .expect("epochs lock")
                        .acked(epoch, Some(e.to_string()));
                    return Err(e).context("producing an output record");
                }
            }
        }
    }

    /// Waits until everything sent is acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("flushing outputs to Kafka")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_complete_only_when_that_epoch_and_earlier_ones_are_acknowledged() {
        let mut e = Epochs::default();
        let a = e.sent();
        e.seal(vec![("orders".into(), 0, 10)], 1);
        let b = e.sent();
        e.seal(vec![("orders".into(), 0, 20)], 2);
        e.acked(b, None);
        assert_eq!(e.take_completed(), None, "epoch {a} is still in flight");
        e.acked(a, None);
        assert_eq!(
            e.take_completed(),
            Some((vec![("orders".into(), 0, 20)], 2))
        );
        assert_eq!(e.take_completed(), None);
        // An epoch with no outputs completes as soon as it is sealed.
        e.seal(vec![("orders".into(), 0, 30)], 3);
        assert_eq!(e.take_completed().map(|x| x.1), Some(3));
        let c = e.sent();
        e.acked(c, Some("broken".into()));
        e.seal(vec![("orders".into(), 0, 40)], 4);
        assert_eq!(e.failure(), Some("broken"));
        assert_eq!(e.take_completed(), None, "no commit past a lost output");
    }
}
