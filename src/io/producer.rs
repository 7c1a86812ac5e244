//! The transactional producer: outputs, repartition batches, changelog records
//! and input offsets of one commit interval go to Kafka in one transaction
//! (the protocol: `core/commit.rs`).

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Message};

use crate::config::Config;
use crate::core::output::OutputTopic;
use crate::telemetry::http::now_ms;
use crate::telemetry::metrics::OutputCounters;

/// What a record is, for its delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Output(OutputTopic),
    /// A repartition batch.
    Internal,
    /// A changelog record.
    Changelog,
}

impl Kind {
    fn opaque(self) -> usize {
        match self {
            Kind::Output(t) => t.index(),
            Kind::Internal => 4,
            Kind::Changelog => 5,
        }
    }
}

/// Producer context: counts acknowledgements, keeps the first failure.
pub struct TxnContext {
    /// Without a lock: the loop may wait in `send` for this thread to drain the queue.
    counters: Option<OutputCounters>,
    failure: Mutex<Option<String>>,
    /// A record was refused for its size (see `TxnProducer::take_too_large`).
    too_large: AtomicBool,
}

impl ClientContext for TxnContext {}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let (Some(c), Some(topic)) = (&self.counters, OutputTopic::ALL.get(opaque)) {
            c.acked(*topic, result.is_ok());
        }
        if let Err((e, msg)) = result {
            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                self.too_large.store(true, Ordering::SeqCst);
            }
            if let Ok(mut f) = self.failure.lock() {
                f.get_or_insert_with(|| format!("delivery to {} failed: {e}", msg.topic()));
            }
        }
    }
}

/// A topic handle kept for the producer's life: producing through it skips
/// librdkafka's look-up of the topic by name, under a lock, for every record
/// (and a `CString` per record in rdkafka's `send`), which `perf` showed as a
/// tenth of the time producing changelog records.
struct TopicHandle {
    name: String,
    rkt: *mut rdsys::rd_kafka_topic_t,
}

// SAFETY: librdkafka's topic handles are thread-safe (refcounted, locked inside).
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_new and released once, here.
        unsafe { rdsys::rd_kafka_topic_destroy(self.rkt) }
    }
}

/// One instance's transactional producer.
pub struct TxnProducer {
    /// Declared before `producer`: released before the client they belong to.
    topics: Vec<TopicHandle>,
    producer: ThreadedProducer<TxnContext>,
    open: AtomicBool,
    /// Held while a transaction begins: threads sending at once begin it once.
    opening: Mutex<()>,
    /// A commit runs on its own thread (`commit_in_background`): nothing is sent meanwhile.
    committing: AtomicBool,
    timeout: Duration,
}

/// A commit running on a thread of its own (`TxnProducer::commit_in_background`).
pub struct PendingCommit(std::thread::JoinHandle<anyhow::Result<Committed>>);

/// A commit that succeeded: how long it took, and when it ended.
pub struct Committed {
    pub seconds: f64,
    pub at_ms: i64,
}

impl PendingCommit {
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the commit to end.
    pub fn wait(self) -> anyhow::Result<Committed> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the commit's thread panicked")))
    }
}

/// A record to send in the current transaction.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    pub kind: Kind,
}

impl TxnProducer {
    /// Creates the producer with `transactional.id` and fences any older
    /// producer using it; its batches hold at most `record_limit` bytes.
    pub fn create(
        cfg: &Config,
        counters: Option<OutputCounters>,
        record_limit: usize,
    ) -> anyhow::Result<Self> {
        let txn_id = cfg.transactional_id();
        let batch_bytes = record_limit.to_string();
        let ours = [
            // The broker checks a topic's max.message.bytes against a whole
            // batch of records: batches no larger than one record may be.
            ("batch.size", batch_bytes.as_str()),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            // How long an instance that died mid-transaction holds back every
            // read_committed reader of the partitions it wrote (outputs, and the
            // restore of its tasks by their next owner) before the broker aborts
            // it: Kafka Streams' exactly-once default. It must exceed the longest
            // commit; librdkafka requires message.timeout.ms to be no longer.
            ("transaction.timeout.ms", "10000"),
            ("message.timeout.ms", "10000"),
            ("queue.buffering.max.messages", "1000000"),
            ("transactional.id", txn_id.as_str()),
        ];
        let producer: ThreadedProducer<TxnContext> =
            super::client_config(&cfg.kafka, &ours, &cfg.kafka.producer_properties)
                .create_with_context(TxnContext {
                    counters,
                    failure: Mutex::new(None),
                    too_large: AtomicBool::new(false),
                })
                .context("creating the Kafka producer (check kafka.* settings)")?;
        let timeout = Duration::from_secs(60);
        producer.init_transactions(timeout).with_context(|| {
            format!("initialising transactions for transactional.id `{txn_id}` (does the broker support Kafka transactions?)")
        })?;
        let topics = cfg
            .topics
            .all()
            .into_iter()
            .filter(|(_, name)| cfg.topics.input_topic(name).is_none())
            .map(|(_, name)| {
                let c = CString::new(name).context("topic name with a NUL byte")?;
                // SAFETY: a valid client and a NUL-terminated name; NULL conf: the defaults.
                let rkt = unsafe {
                    rdsys::rd_kafka_topic_new(
                        producer.client().native_ptr(),
                        c.as_ptr(),
                        std::ptr::null_mut(),
                    )
                };
                if rkt.is_null() {
                    bail!("creating a producer handle for topic `{name}`");
                }
                Ok(TopicHandle {
                    name: name.to_string(),
                    rkt,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(TxnProducer {
            topics,
            producer,
            open: AtomicBool::new(false),
            opening: Mutex::new(()),
            committing: AtomicBool::new(false),
            timeout,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn ensure_open(&self) -> anyhow::Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let _opening = self.opening.lock().expect("opening lock");
        if !self.is_open() {
            self.producer
                .begin_transaction()
                .map_err(txn_error)
                .context("beginning a transaction")?;
        }
        self.open.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Sends a record in the current transaction (beginning one if needed), waiting while the queue is full.
    pub fn send(&self, r: Record<'_>) -> anyhow::Result<()> {
        if self.committing.load(Ordering::Acquire) {
            bail!("a record sent while the last transaction commits (wait for its `PendingCommit` first)");
        }
        self.ensure_open()?;
        let Some(topic) = self.topics.iter().find(|t| t.name == r.topic) else {
            bail!("producing to {}: not a topic this job writes", r.topic);
        };
        let bytes = |b: Option<&[u8]>| {
            b.map_or((std::ptr::null_mut(), 0), |b| {
                (b.as_ptr() as *mut c_void, b.len())
            })
        };
        let ((key, key_len), (value, value_len)) = (bytes(r.key), bytes(r.value));
        loop {
            // SAFETY: librdkafka copies key and value (F_COPY) before returning;
            // the topic handle outlives the call.
            let err = unsafe {
                rdsys::rd_kafka_producev(
                    self.producer.client().native_ptr(),
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                    topic.rkt,
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                    r.partition.unwrap_or(-1), // RD_KAFKA_PARTITION_UA: the partitioner picks
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                    rdsys::RD_KAFKA_MSG_F_COPY,
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                    value,
                    value_len,
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                    key,
                    key_len,
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                    r.kind.opaque() as *mut c_void,
                    rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
                )
            };
            match RDKafkaErrorCode::from(err) {
                RDKafkaErrorCode::NoError => return Ok(()),
                RDKafkaErrorCode::QueueFull => std::thread::sleep(Duration::from_millis(5)),
                e => {
                    if e == RDKafkaErrorCode::MessageSizeTooLarge {
                        self.producer
                            .context()
                            .too_large
                            .store(true, Ordering::SeqCst);
                    }
                    return Err(KafkaError::MessageProduction(e))
                        .with_context(|| format!("producing to {}", r.topic));
                }
            }
        }
    }

    /// Commits the open transaction (beginning one if nothing was sent) with
    /// the consumer offsets: the broker refuses them, and so the commit, from a
    /// member whose group generation has moved on (KIP-447).
    fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> anyhow::Result<()> {
        self.ensure_open()?;
        self.producer
            .send_offsets_to_transaction(offsets, group, self.timeout)
            .map_err(txn_error)
            .context("adding the input offsets to the transaction")?;
        let result = self.commit_transaction();
        if let Some(f) = self
            .producer
            .context()
            .failure
            .lock()
            .expect("failure lock")
            .take()
        {
            // Still open: the caller aborts it.
            bail!("{f}");
        }
        if result.is_ok() {
            self.open.store(false, Ordering::SeqCst);
        }
        result
    }

    /// `commit` on a thread of its own, so the loop reads and processes the next
    /// records while the broker commits (the commit is mostly waiting: for the
    /// acknowledgements, the coordinator, the markers). Nothing may be sent
    /// until the returned commit has been waited for.
    pub fn commit_in_background(
        self: &Arc<Self>,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> anyhow::Result<PendingCommit> {
        let me = self.clone();
        self.committing.store(true, Ordering::Release);
        let thread = std::thread::Builder::new()
            .name("gmv-commit".into())
            .spawn(move || {
                let started = Instant::now();
                let result = me.commit(&offsets, &group);
                me.committing.store(false, Ordering::Release);
                result.map(|()| Committed {
                    seconds: started.elapsed().as_secs_f64(),
                    at_ms: now_ms(),
                })
            });
        match thread {
            Ok(t) => Ok(PendingCommit(t)),
            Err(e) => {
                self.committing.store(false, Ordering::Release);
                Err(e).context("starting the commit's thread")
            }
        }
    }

    /// librdkafka's `rd_kafka_commit_transaction`, called directly: rust-rdkafka's
    /// `commit_transaction` first runs its own flush, which polls in steps of a
    /// full 100 ms while any record is in flight, so every commit took 100–300 ms
    /// (docs/performance.md). librdkafka's commit flushes by itself, the
    /// producer's polling thread serving the delivery reports meanwhile.
    fn commit_transaction(&self) -> anyhow::Result<()> {
        // SAFETY: a live client; the returned error object is read, then destroyed once.
        unsafe {
            let e = rdsys::rd_kafka_commit_transaction(
                self.producer.client().native_ptr(),
                self.timeout.as_millis() as i32,
            );
            if e.is_null() {
                return Ok(());
            }
            let fatal = rdsys::rd_kafka_error_is_fatal(e) != 0;
            let text = std::ffi::CStr::from_ptr(rdsys::rd_kafka_error_string(e))
                .to_string_lossy()
                .into_owned();
            rdsys::rd_kafka_error_destroy(e);
            if fatal {
                bail!("committing the transaction: {text}: fatal for this producer");
            }
            bail!("committing the transaction: {text}")
        }
    }

    /// The producer's fatal error, if it raised one (fenced by a newer producer
    /// with the same transactional.id, or its transaction ended by the broker):
    /// it can do nothing more.
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        let mut buf = [0 as c_char; 512];
        // SAFETY: a live client; librdkafka writes a NUL-terminated string into buf.
        let err = unsafe {
            rdsys::rd_kafka_fatal_error(
                self.producer.client().native_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: NUL-terminated by librdkafka, within buf.
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Some((
            RDKafkaErrorCode::from(err),
            text.to_string_lossy().into_owned(),
        ))
    }

    /// Whether a record was refused for its size since the last call (by the
    /// broker, or by this client's own limit).
    pub fn take_too_large(&self) -> bool {
        self.producer
            .context()
            .too_large
            .swap(false, Ordering::SeqCst)
    }

    /// Aborts the open transaction, if any: its records and offsets never count.
    pub fn abort(&self) -> anyhow::Result<()> {
        // Open until the abort succeeds: a failed one is tried again.
        if self.is_open() {
            self.producer
                .abort_transaction(self.timeout)
                .map_err(txn_error)
                .context("aborting the transaction")?;
        }
        self.producer
            .context()
            .failure
            .lock()
            .expect("failure lock")
            .take();
        self.open.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Says when a transaction error is fatal for this producer (the loop then
/// decides, in `recover`, whether it was fenced or needs a new producer).
fn txn_error(e: KafkaError) -> anyhow::Error {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => anyhow!("{e}: fatal for this producer"),
        _ => anyhow!(e),
    }
}
