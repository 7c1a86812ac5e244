//! The transactional producer: outputs, repartition batches, changelog records
//! and input offsets of one commit interval go to Kafka in one transaction
//! (the protocol: `core/commit.rs`).

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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
    /// For each transactional call; a commit's calls share one.
    timeout: Duration,
}

/// How long past its timeout a commit is waited for before it counts as stuck.
const STUCK_MARGIN: Duration = Duration::from_secs(5);

/// A commit running on a thread of its own (`TxnProducer::commit_in_background`).
pub struct PendingCommit {
    thread: std::thread::JoinHandle<()>,
    result: mpsc::Receiver<anyhow::Result<Committed>>,
    /// The commit's own calls end by then, unless librdkafka is stuck in them
    /// (`TxnProducer::commit`).
    deadline: Instant,
}

/// A commit that succeeded: how long it took, and when it ended.
#[derive(Debug)]
pub struct Committed {
    pub seconds: f64,
    pub at_ms: i64,
}

impl PendingCommit {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the commit to end, at most until its deadline. A commit
    /// still running then is stuck in librdkafka: its thread is left to end
    /// when it can, and its producer (still committing, `is_committing`) can do
    /// nothing more; the caller makes a new one.
    pub fn wait(self) -> anyhow::Result<Committed> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.result.recv_timeout(left) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(anyhow!("the commit's thread panicked"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "the commit is still running past its own timeout: librdkafka is stuck in it (librdkafka#5456: waiting for the group coordinator, it ignores the timeout)"
            )),
        }
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
    /// member whose group generation has moved on (KIP-447). Its two calls
    /// share one `timeout`, which bounds the wait in `PendingCommit::wait`.
    fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ensure_open()?;
        self.producer
            .send_offsets_to_transaction(offsets, group, self.timeout)
            .map_err(txn_error)
            .context("adding the input offsets to the transaction")?;
        let left = self.timeout.saturating_sub(started.elapsed());
        let result = self.commit_transaction(left.max(Duration::from_millis(1)));
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
        let (done, result) = mpsc::sync_channel(1);
        let deadline = Instant::now() + self.timeout + STUCK_MARGIN;
        self.committing.store(true, Ordering::Release);
        let thread = std::thread::Builder::new()
            .name("gmv-commit".into())
            .spawn(move || {
                let started = Instant::now();
                let r = me.commit(&offsets, &group);
                me.committing.store(false, Ordering::Release);
                // (Nobody waits any more if the commit outlived its deadline.)
                let _ = done.send(r.map(|()| Committed {
                    seconds: started.elapsed().as_secs_f64(),
                    at_ms: now_ms(),
                }));
            });
        match thread {
            Ok(thread) => Ok(PendingCommit {
                thread,
                result,
                deadline,
            }),
            Err(e) => {
                self.committing.store(false, Ordering::Release);
                Err(e).context("starting the commit's thread")
            }
        }
    }

    /// Whether a commit runs (`commit_in_background`): once its `PendingCommit`
    /// was waited for, one stuck in librdkafka.
    pub fn is_committing(&self) -> bool {
        self.committing.load(Ordering::Acquire)
    }

    /// librdkafka's `rd_kafka_commit_transaction`, called directly: rust-rdkafka's
    /// `commit_transaction` first runs its own flush, which polls in steps of a
    /// full 100 ms while any record is in flight, so every commit took 100–300 ms
    /// (docs/performance.md). librdkafka's commit flushes by itself, the
    /// producer's polling thread serving the delivery reports meanwhile.
    fn commit_transaction(&self, timeout: Duration) -> anyhow::Result<()> {
        // SAFETY: a live client; the returned error object is read, then destroyed once.
        unsafe {
            let e = rdsys::rd_kafka_commit_transaction(
                self.producer.client().native_ptr(),
                timeout.as_millis() as i32,
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

#[cfg(test)]
mod tests {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::{MockCluster, MockCoordinator};
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::topic_partition_list::Offset;
    use rdkafka::ClientConfig;

    use super::*;

    fn commit_one(
        p: &Arc<TxnProducer>,
        cfg: &Config,
        group: ConsumerGroupMetadata,
    ) -> PendingCommit {
        p.send(Record {
            topic: &cfg.topics.repartition,
            partition: Some(0),
            key: Some(b"k"),
            value: Some(b"v"),
            kind: Kind::Internal,
        })
        .unwrap();
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(cfg.topics.inputs()[0], 0, Offset::Offset(1))
            .unwrap();
        p.commit_in_background(offsets, group).unwrap()
    }

    /// librdkafka#5456: `send_offsets_to_transaction` waits for the group
    /// coordinator past its timeout. The commit is given up at its deadline,
    /// its producer says it is still committing (so the loop replaces it), and
    /// a new producer with the same id commits. Should librdkafka honour the
    /// timeout one day, the first assertion fails: the wait for the deadline,
    /// and the replacement in `restore`, can then go.
    #[test]
    fn a_commit_stuck_waiting_for_the_group_coordinator_is_given_up_at_its_deadline() {
        let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(2).unwrap();
        let mut cfg = Config::default();
        cfg.kafka.brokers = cluster.bootstrap_servers();
        for (_, name) in cfg.topics.all() {
            cluster.create_topic(name, 1, 1).unwrap();
            cluster.partition_leader(name, 0, Some(1)).unwrap();
        }
        let group_id = cfg.kafka.group_id.clone();
        cluster
            .coordinator(MockCoordinator::Transaction(cfg.transactional_id()), 1)
            .unwrap();
        cluster
            .coordinator(MockCoordinator::Group(group_id.clone()), 2)
            .unwrap();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", &group_id)
            .create()
            .unwrap();
        let group = || consumer.group_metadata().unwrap();

        let mut stuck = TxnProducer::create(&cfg, None, 1 << 20).unwrap();
        stuck.timeout = Duration::from_secs(2);
        let stuck = Arc::new(stuck);
        cluster.broker_down(2).unwrap();
        let started = Instant::now();
        let e = commit_one(&stuck, &cfg, group()).wait().unwrap_err();
        assert!(format!("{e:#}").contains("stuck"), "{e:#}");
        assert!(
            started.elapsed() >= Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
        assert!(stuck.is_committing());

        cluster.broker_up(2).unwrap();
        let next = Arc::new(TxnProducer::create(&cfg, None, 1 << 20).unwrap());
        let done = commit_one(&next, &cfg, group()).wait();
        assert!(done.is_ok(), "{:#}", done.err().unwrap());
    }
}
