//! The input partitions read in step. Each assigned (input topic, partition)
//! gets its own librdkafka queue (a lane), and the loop reads next from the lane
//! read least far in event time, as Kafka Streams picks a task's next record
//! by the time its timestamp extractor reads. From the one queue librdkafka
//! fills in fetch order, a job catching up read all of `payments` before most
//! of `orders`: every payment then waited in the join for its order and was
//! written to the changelog twice (docs/performance.md). Event time, not the
//! records' Kafka timestamps: those say when a record was produced, and a
//! bulk load or a replay can produce a day of events within seconds, in
//! whatever order it reads them; payments sent before their orders would all
//! wait for them again. Order within a partition is what Kafka guarantees and
//! all the engine relies on; the lanes only keep topics close to each other.

use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::Consumer;

use super::consumer::{InputConsumer, LagContext};
use crate::core::engine::Ahead;
use crate::model::InputTopic;

/// Records read from one lane before the lanes are compared again.
pub const LANE_BATCH: usize = 500;

/// How many records ahead the reader asks the CPU for a record's message
/// (librdkafka's struct, which says where its key and value are), and then,
/// [`BYTES_AHEAD`] on, for its key and value: all written by librdkafka's
/// fetch thread, on another core, and so each a cache miss for the loop
/// (the key's was most of the hint's cost, the value's the decoder's first
/// wait; docs/performance.md).
pub const MESSAGE_AHEAD: usize = 8;
pub const BYTES_AHEAD: usize = 6;

/// How many bytes of a record's value are asked for ahead: its first cache
/// lines, where a record of the contract's size is whole.
const PREFETCHED_VALUE_BYTES: usize = 256;

/// How many records ahead the reader hints the engine of a record's key
/// for its order's line of the index (`Engine::prefetch`): far enough that
/// the memory arrives before the record is processed (about a microsecond
/// each), near enough that it is still in cache then. Measured with the core
/// bench (docs/performance.md).
pub const PREFETCH_AHEAD: usize = 4;

/// How many records ahead the reader hints the engine of a record's key for
/// its order's entry: after the line's hint has arrived (it is needed to find
/// the entry), and still a record before the look-up.
pub const ENTRY_AHEAD: usize = 2;

struct Lane {
    /// A second handle on the same queue, read in batches and asked how many
    /// records wait (`PartitionQueue` has no batch read and does not expose its
    /// own handle). Before `_split`: dropped first, while that still holds the consumer.
    handle: QueueHandle,
    /// Took the partition out of the consumer's queue; kept for as long as the lane.
    _split: PartitionQueue<LagContext>,
    /// Known once here, so no record's topic name is looked up and compared.
    topic: InputTopic,
    partition: i32,
    /// Largest event time of the records read from it (`i64::MIN`: none
    /// yet). The lane's own, not its partition's watermark clock: that one
    /// survives a restore and a seek, and a lane not read since must go first.
    event_ms: i64,
}

/// The lanes of the current assignment.
#[derive(Default)]
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Lane indices, oldest first; reused between calls.
    order: Vec<usize>,
    /// Messages taken from a lane in one call; reused between calls.
    batch: Vec<*mut rdsys::rd_kafka_message_t>,
    /// A lane's partition stopped, its offset out of the log's range, since
    /// [`Lanes::take_out_of_range`] was last asked.
    out_of_range: bool,
}

impl Lanes {
    /// Takes `parts` out of the consumer's queue for good (librdkafka never
    /// forwards a queue the application has set). Call before `assign`: a fetch
    /// started by it could otherwise reach the consumer's queue first.
    pub fn split(
        consumer: &Arc<InputConsumer>,
        parts: &[(InputTopic, &str, i32)],
    ) -> anyhow::Result<Lanes> {
        let lanes = parts
            .iter()
            .map(|&(topic, name, p)| {
                let queue = consumer.split_partition_queue(name, p);
                let count = QueueHandle::of_partition(consumer, name, p);
                match (queue, count) {
                    (Some(queue), Some(count)) => Ok(Lane {
                        _split: queue,
                        handle: count,
                        topic,
                        partition: p,
                        event_ms: i64::MIN,
                    }),
                    _ => Err(anyhow::anyhow!("no queue for {name} [{p}]")),
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Lanes {
            order: (0..lanes.len()).collect(),
            lanes,
            batch: Vec::new(),
            out_of_range: false,
        })
    }

    /// The consumer moved every lane back (a seek): what each read last is gone.
    pub fn rewound(&mut self) {
        for lane in &mut self.lanes {
            lane.event_ms = i64::MIN;
        }
    }

    /// Whether a lane's partition stopped since the last call: librdkafka
    /// found its offset out of the log's range, and it fetches no more until
    /// it is assigned again.
    pub fn take_out_of_range(&mut self) -> bool {
        std::mem::take(&mut self.out_of_range)
    }

    /// Each lane holding fetched records not read yet. Such a partition is not
    /// idle, however long since the loop last read it: it waits for its turn.
    pub fn each_waiting(&self, mut f: impl FnMut(InputTopic, i32)) {
        for lane in &self.lanes {
            if lane.handle.len() > 0 {
                f(lane.topic, lane.partition);
            }
        }
    }

    /// Reads up to `max` records from the lane read least far (in event time)
    /// that has any, handing each to `f` with its topic and the keys of
    /// records further on (for hints, [`Ahead`]); `f` returns the record's
    /// event time, if it has one. 0 when every lane is empty. Never blocks.
    ///
    /// Takes the records out of librdkafka's queue in one call (one lock, one
    /// clock read), not one `poll` each: those were a tenth of the loop.
    pub fn read(
        &mut self,
        max: usize,
        mut f: impl FnMut(InputTopic, &LaneRecord<'_>, Ahead<'_>) -> Option<i64>,
    ) -> usize {
        let (lanes, out_of_range) = (&mut self.lanes, &mut self.out_of_range);
        self.order.sort_unstable_by_key(|&i| lanes[i].event_ms);
        let batch = &mut self.batch;
        batch.clear();
        batch.reserve(max);
        for &i in &self.order {
            let lane = &mut lanes[i];
            // SAFETY: a live queue handle; librdkafka writes at most `max` message
            // pointers into the buffer, which has room for them, and returns how many.
            let got = unsafe {
                rdsys::rd_kafka_consume_batch_queue(
                    lane.handle.0,
                    0,
                    batch.as_mut_ptr(),
                    max.min(batch.capacity()),
                )
            };
            if got <= 0 {
                continue;
            }
            // SAFETY: the first `got` entries were just written.
            unsafe { batch.set_len(got as usize) };
            let mut n = 0;
            for (i, &m) in batch.iter().enumerate() {
                // SAFETY: each pointer is a message this call handed over, destroyed
                // once below after its last use; its fields are valid until then.
                unsafe {
                    if let Some(&a) = batch.get(i + MESSAGE_AHEAD) {
                        crate::core::slab::prefetch(a.cast());
                    }
                    if let Some(&a) = batch.get(i + BYTES_AHEAD) {
                        prefetch_record(LaneRecord::key_of(&*a), LaneRecord::value_of(&*a));
                    }
                    let near = batch.get(i + ENTRY_AHEAD).map(|&a| &*a);
                    let ahead = Ahead {
                        line: batch
                            .get(i + PREFETCH_AHEAD)
                            .and_then(|&a| LaneRecord::key_of(&*a)),
                        entry: near.and_then(|a| LaneRecord::key_of(a)),
                        entry_value: near.and_then(|a| LaneRecord::value_of(a)),
                    };
                    let err = (*m).err;
                    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET {
                        // The partition's fetcher stopped: the log no longer holds
                        // the offset it was at (`consumer::create`).
                        tracing::warn!(
                            topic = lane.topic.label(),
                            partition = lane.partition,
                            offset = (*m).offset,
                            "the input's offset is no longer in its log"
                        );
                        *out_of_range = true;
                    } else if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        let text = std::ffi::CStr::from_ptr(rdsys::rd_kafka_err2str(err));
                        tracing::warn!("consumer: {}", text.to_string_lossy());
                    } else {
                        let record = LaneRecord::of(m);
                        if let Some(ts) = f(lane.topic, &record, ahead) {
                            lane.event_ms = lane.event_ms.max(ts);
                        }
                        n += 1;
                    }
                    rdsys::rd_kafka_message_destroy(m);
                }
            }
            batch.clear();
            if n > 0 {
                return n;
            }
        }
        0
    }
}

/// One input record read from a lane, borrowed from librdkafka until the
/// reading callback returns.
#[derive(Debug, Clone, Copy)]
pub struct LaneRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp (`None`: the record has none).
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl LaneRecord<'_> {
    /// SAFETY: `m` is a live message without error; the record must not outlive it.
    unsafe fn of<'a>(m: *mut rdsys::rd_kafka_message_t) -> LaneRecord<'a> {
        // SAFETY: a live message, as the caller promises.
        let msg = unsafe { &*m };
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message, as the caller promises.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(m, &mut kind) };
        LaneRecord {
            partition: msg.partition,
            offset: msg.offset,
            timestamp_ms: (ts >= 0
                && kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
                .then_some(ts),
            key: Self::key_of(msg),
            payload: Self::value_of(msg),
        }
    }

    /// SAFETY: `msg` is a live message; the key must not outlive it.
    unsafe fn key_of<'a>(msg: &rdsys::rd_kafka_message_t) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's pointer and length of the message's key.
        unsafe { bytes(msg.key, msg.key_len) }
    }

    /// SAFETY: `msg` is a live message; the value must not outlive it.
    unsafe fn value_of<'a>(msg: &rdsys::rd_kafka_message_t) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's pointer and length of the message's payload.
        unsafe { bytes(msg.payload, msg.len) }
    }
}

/// Asks the CPU for a record's key and the first lines of its value
/// ([`BYTES_AHEAD`]).
pub fn prefetch_record(key: Option<&[u8]>, value: Option<&[u8]>) {
    for (bytes, max) in [(key, 64), (value, PREFETCHED_VALUE_BYTES)] {
        if let Some(b) = bytes {
            for at in (0..b.len().min(max)).step_by(64) {
                crate::core::slab::prefetch(b[at..].as_ptr());
            }
        }
    }
}

/// SAFETY: `ptr` and `len` are librdkafka's for a live message's key or payload.
unsafe fn bytes<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

/// An owned librdkafka handle on a partition's queue.
struct QueueHandle(*mut rdkafka::bindings::rd_kafka_queue_t);

impl QueueHandle {
    fn of_partition(consumer: &InputConsumer, topic: &str, partition: i32) -> Option<Self> {
        let topic = std::ffi::CString::new(topic).ok()?;
        // SAFETY: the client outlives the handle (the lane's `PartitionQueue` holds
        // the consumer); librdkafka returns a new reference or null.
        let q = unsafe {
            rdkafka::bindings::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        (!q.is_null()).then_some(QueueHandle(q))
    }

    fn len(&self) -> usize {
        // SAFETY: a live handle (released only on drop).
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `of_partition`, released once.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use rdkafka::ClientConfig;

    use super::*;
    use crate::config::Config;

    /// Messages fetched into a partition's queue, not yet read.
    fn queued(consumer: &InputConsumer, topic: &str, p: i32) -> usize {
        QueueHandle::of_partition(consumer, topic, p).unwrap().len()
    }

    /// An embedded broker with `topics`, one partition each.
    fn cluster_with(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
        let cluster = MockCluster::new(1).unwrap();
        for t in topics {
            cluster.create_topic(t, 1, 1).unwrap();
        }
        cluster
    }

    fn producer(
        cluster: &MockCluster<'_, DefaultProducerContext>,
    ) -> ThreadedProducer<DefaultProducerContext> {
        ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap()
    }

    /// The job's consumer on `cluster`, and partition 0 of each of `topics`
    /// from the beginning, to assign once the lanes are split.
    fn consumer(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        topics: &[&str],
    ) -> (Arc<InputConsumer>, TopicPartitionList) {
        let mut cfg = Config::default();
        cfg.kafka.brokers = cluster.bootstrap_servers();
        let consumer = Arc::new(super::super::consumer::create(&cfg, None).unwrap());
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            tpl.add_partition_offset(t, 0, Offset::Beginning).unwrap();
        }
        (consumer, tpl)
    }

    #[test]
    fn the_lane_read_least_far_in_event_time_is_read_first() {
        let cluster = cluster_with(&["ahead", "behind"]);
        let producer = producer(&cluster);
        // `ahead`'s events are later than `behind`'s (the time in each value),
        // as payments are after their orders; but its records were produced
        // first, as a bulk load may: their Kafka timestamps are earlier. The
        // lanes go by the event times the reader returns, not by those.
        // (A timestamp of 0 would mean "now" to librdkafka.)
        const T0: i64 = 1_762_790_400_000;
        for i in 0..5i64 {
            for (topic, ts) in [("ahead", 1_000 + i), ("behind", i)] {
                let v = format!("{topic}{ts}");
                let ts = T0 + 2_000 - ts;
                producer
                    .send(
                        BaseRecord::<(), _>::to(topic)
                            .payload(&v)
                            .partition(0)
                            .timestamp(ts),
                    )
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let (consumer, tpl) = consumer(&cluster, &["ahead", "behind"]);
        let parts = [
            (InputTopic::Payments, "ahead", 0),
            (InputTopic::Orders, "behind", 0),
        ];
        let mut lanes = Lanes::split(&consumer, &parts).unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while queued(&consumer, "ahead", 0) < 5 || queued(&consumer, "behind", 0) < 5 {
            assert!(
                Instant::now() < deadline,
                "the mock broker did not deliver the records"
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                panic!(
                    "{} [{}] reached the consumer's own queue",
                    m.topic(),
                    m.offset()
                );
            }
        }

        let mut waiting = Vec::new();
        lanes.each_waiting(|topic, p| waiting.push((topic, p)));
        assert_eq!(
            waiting,
            [(InputTopic::Payments, 0), (InputTopic::Orders, 0)],
            "both lanes hold records not read yet"
        );
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let n = lanes.read(1, |topic, m, _| {
                let payload = String::from_utf8(m.payload.unwrap().to_vec()).unwrap();
                let want = if payload.starts_with("ahead") {
                    InputTopic::Payments
                } else {
                    InputTopic::Orders
                };
                assert_eq!(topic, want, "{payload} comes with its lane's topic");
                assert_eq!(m.partition, 0);
                let ts: i64 = payload
                    .trim_start_matches(char::is_alphabetic)
                    .parse()
                    .unwrap();
                assert_eq!(
                    m.timestamp_ms,
                    Some(T0 + 2_000 - ts),
                    "the record's own timestamp"
                );
                // Offsets within a lane follow production order: `ts` counts from 0 or 1000.
                assert_eq!(m.offset, ts % 1_000, "{payload}'s offset");
                seen.push(payload);
                Some(T0 + ts)
            });
            assert_eq!(n, 1, "both lanes still hold records");
        }
        // Lanes not read yet go first (in assignment order); then always the
        // one read least far in event time.
        assert_eq!(
            seen,
            [
                "ahead1000",
                "behind0",
                "behind1",
                "behind2",
                "behind3",
                "behind4",
                "ahead1001",
                "ahead1002",
                "ahead1003",
                "ahead1004"
            ]
        );
        assert_eq!(
            lanes.read(LANE_BATCH, |_, _, _| None),
            0,
            "every lane is empty"
        );
        lanes.each_waiting(|topic, p| panic!("{topic:?} [{p}] was read to the end"));
        drop(lanes);
    }

    /// A partition assigned at an offset its log does not hold stops, and
    /// says so where the loop reads it: in its lane for an input, in the
    /// consumer's own queue for the repartition topic (`consumer::create`
    /// sets `auto.offset.reset=error`; `app.rs` handles both).
    #[test]
    fn an_offset_out_of_the_log_is_reported_where_the_partition_is_read() {
        let cluster = cluster_with(&["orders", "repartition"]);
        let producer = producer(&cluster);
        for t in ["orders", "repartition"] {
            for i in 0..3 {
                let v = format!("{t}{i}");
                producer
                    .send(BaseRecord::<(), _>::to(t).payload(&v).partition(0))
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let (consumer, _) = consumer(&cluster, &[]);
        let mut lanes = Lanes::split(&consumer, &[(InputTopic::Orders, "orders", 0)]).unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in ["orders", "repartition"] {
            tpl.add_partition_offset(t, 0, Offset::Offset(100)).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut lane_told, mut queue_told) = (false, false);
        while !(lane_told && queue_told) {
            assert!(
                Instant::now() < deadline,
                "not told in 30 s: lane {lane_told}, consumer's queue {queue_told}"
            );
            match consumer.poll(Duration::from_millis(10)) {
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    queue_told = true
                }
                Some(other) => panic!("the consumer's queue: {other:?}"),
                None => {}
            }
            let read = lanes.read(LANE_BATCH, |_, m, _| panic!("read offset {}", m.offset));
            assert_eq!(read, 0, "nothing to read past the log's end");
            lane_told |= lanes.take_out_of_range();
        }
        assert!(!lanes.take_out_of_range(), "told once");
        drop(lanes);
    }

    /// Each record comes with the keys of the records [`PREFETCH_AHEAD`] and
    /// [`ENTRY_AHEAD`] on in the same batch, and the value of the latter (the
    /// engine's hints), and with none past the batch's end.
    #[test]
    fn each_record_comes_with_the_keys_of_the_ones_ahead() {
        let cluster = cluster_with(&["orders"]);
        let producer = producer(&cluster);
        const N: usize = 20;
        for i in 0..N {
            let k = format!("o{i}");
            producer
                .send(BaseRecord::to("orders").key(&k).payload(&k).partition(0))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let (consumer, tpl) = consumer(&cluster, &["orders"]);
        let mut lanes = Lanes::split(&consumer, &[(InputTopic::Orders, "orders", 0)]).unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while queued(&consumer, "orders", 0) < N {
            assert!(
                Instant::now() < deadline,
                "the mock broker did not deliver the records"
            );
            assert!(consumer.poll(Duration::from_millis(10)).is_none());
        }
        type Keys = (Vec<u8>, [Option<Vec<u8>>; 3]);
        let mut batch: Vec<Keys> = Vec::new();
        let n = lanes.read(LANE_BATCH, |_, m, ahead| {
            let owned = |k: Option<&[u8]>| k.map(<[u8]>::to_vec);
            let hints = [ahead.line, ahead.entry, ahead.entry_value].map(owned);
            batch.push((m.key.unwrap().to_vec(), hints));
            None
        });
        assert_eq!(n, N, "one batch holds every record");
        for (i, (key, [line, entry, value])) in batch.iter().enumerate() {
            assert_eq!(key, format!("o{i}").as_bytes());
            let want = |n: usize| (i + n < N).then(|| format!("o{}", i + n).into_bytes());
            assert_eq!(line, &want(PREFETCH_AHEAD), "record {i}'s line hint");
            assert_eq!(entry, &want(ENTRY_AHEAD), "record {i}'s entry hint");
            // Each record's value is its key here.
            assert_eq!(value, &want(ENTRY_AHEAD), "record {i}'s value hint");
        }
        drop(lanes);
    }
}
