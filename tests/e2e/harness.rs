//! The harness of the end-to-end tests (`tests/e2e.rs`): the suite's
//! constants, the job's config (its processes: `instances.rs`), each test's
//! topics and group (`Stage`), traffic writers, readers of the output topics
//! with their per-record checks, input and committed offset counts, chaos
//! helpers (seeds, open transactions, broker faults) and `assert_exact`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use gmv::config::{Config, TopicNames};
use gmv::gen::traffic::{RecordKind, Traffic, TrafficConfig};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::instances::Instances;
use crate::reference::{reference, Expected};
use crate::support::broker::{create_topics, free_port, shared_broker, Kafka};

pub(crate) const PARTITIONS: i32 = 4;
pub(crate) const RECORDS: usize = 60_000;
pub(crate) const CHAOS_RECORDS: usize = 500_000;
pub(crate) const BRAND_THRESHOLD_FEN: i64 = 1_000_000;
pub(crate) const TOTAL_EVERY_FEN: i64 = 100_000_000;
/// The figures of a `gmv-totals` record.
pub(crate) const TOTAL_FIELDS: [&str; 6] = [
    "gmv_fen",
    "refund_fen",
    "paid_orders",
    "placed_orders",
    "shipped_orders",
    "delivered_orders",
];

/// The `gmv` binary, ended with the test thread that starts it even if the
/// test process dies before it can kill it.
pub(crate) fn gmv() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gmv"));
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

/// The job's settings for a test: its defaults (transactions on) but the
/// broker, topics and group of the test, a short commit interval, and
/// thresholds low enough to fire milestones. Writes the config; returns its
/// path and the job's metrics port.
fn write_config(
    dir: &std::path::Path,
    brokers: &str,
    topics: &TopicNames,
    group: &str,
) -> (PathBuf, u16) {
    let metrics_port = free_port();
    let path = dir.join("gmv.toml");
    let topic_lines: String = topics
        .all()
        .iter()
        .map(|(role, name)| format!("{role} = \"{name}\"\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
commit_interval_ms = 500
# A member killed with SIGKILL holds its partitions until its session expires
# (librdkafka's default 45 s): 6 s, the broker's minimum, keeps the chaos test short.
[kafka.consumer_properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[topics]
{topic_lines}
[time]
idle_timeout_ms = 3000
emit_interval_ms = 500
[milestones]
brand_fen = [{BRAND_THRESHOLD_FEN}]
channel_fen = [{BRAND_THRESHOLD_FEN}]
total_every_fen = {TOTAL_EVERY_FEN}
[metrics]
listen = "127.0.0.1:{metrics_port}"
"#
        ),
    )
    .unwrap();
    (path, metrics_port)
}

// ---------- reading the outputs back ----------

#[derive(Default)]
pub(crate) struct Outputs {
    pub(crate) windows: BTreeMap<String, Value>,
    pub(crate) totals: BTreeMap<String, Value>,
    pub(crate) milestone_records: Vec<(String, Value)>,
    pub(crate) dead_letters: Vec<Value>,
    /// The key's length of each dead letter (none: 0).
    pub(crate) dead_letter_key_lens: Vec<usize>,
}

impl Outputs {
    pub(crate) fn actual(&self) -> Expected {
        let i = |v: &Value, f: &str| {
            v[f].as_i64()
                .unwrap_or_else(|| panic!("{f} missing in {v}")) as i128
        };
        let mut milestones = BTreeMap::new();
        for (k, v) in &self.milestone_records {
            milestones.insert(
                k.clone(),
                (v["crossed_at_ms"].as_i64().unwrap(), i(v, "gmv_fen")),
            );
        }
        Expected {
            windows: self
                .windows
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (
                            i(v, "gmv_fen"),
                            i(v, "refund_fen"),
                            i(v, "paid_orders") as i64,
                        ),
                    )
                })
                .collect(),
            totals: self
                .totals
                .iter()
                .map(|(k, v)| (k.clone(), TOTAL_FIELDS.map(|f| i(v, f))))
                .collect(),
            milestones,
        }
    }
}

/// A reader of the four output topics from the beginning, `read_committed`
/// (what the job's users see) unless `isolation` says otherwise.
fn reader_with(stage: &Stage, isolation: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .set("group.id", "e2e-reader")
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for def in gmv::io::topics::definitions(&stage.cfg)[3..7].iter() {
        for p in 0..def.partitions {
            tpl.add_partition_offset(&def.name, p, Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

pub(crate) fn reader(stage: &Stage) -> BaseConsumer {
    reader_with(stage, "read_committed")
}

pub(crate) fn drain(c: &BaseConsumer, out: &mut Outputs, for_at_least: Duration) {
    let until = Instant::now() + for_at_least;
    while Instant::now() < until {
        let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        match m.topic().split_once('.').map_or(m.topic(), |(_, t)| t) {
            "gmv-windows" => {
                // Every record against the one before it for its key: a read_committed
                // reader never sees work a crash made the job redo.
                if let Some(prev) = out.windows.get(&key) {
                    assert_ne!(prev["final"], true, "{key}: an update followed a final one");
                    check_revision(&key, prev, &v);
                }
                out.windows.insert(key, v);
            }
            "gmv-totals" => {
                if let Some(prev) = out.totals.get(&key) {
                    for f in TOTAL_FIELDS {
                        assert!(
                            v[f].as_i64() >= prev[f].as_i64(),
                            "{key}: {f} went backwards: {prev} then {v}"
                        );
                    }
                    check_revision(&key, prev, &v);
                }
                out.totals.insert(key, v);
            }
            "milestones" => out.milestone_records.push((key, v)),
            "dead-letters" => {
                out.dead_letter_key_lens
                    .push(m.key().map_or(0, <[u8]>::len));
                out.dead_letters.push(v)
            }
            other => panic!("unexpected topic {other}"),
        }
    }
}

fn check_revision(key: &str, prev: &Value, v: &Value) {
    let (a, b) = (
        prev["revision"].as_u64().unwrap(),
        v["revision"].as_u64().unwrap(),
    );
    assert_eq!(b, a + 1, "{key}: revision must grow by one");
}

/// Polls the outputs until they equal `want` (or the time is up, then shows the difference).
pub(crate) fn wait_for(c: &BaseConsumer, out: &mut Outputs, want: &Expected, what: &str) {
    if let Err(diff) = try_wait_for(c, out, want) {
        panic!("{what}: outputs did not reach the expected state in time.\n{diff}");
    }
}

/// Polls the outputs until they equal `want`; after 180 s, the difference.
fn try_wait_for(c: &BaseConsumer, out: &mut Outputs, want: &Expected) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        drain(c, out, Duration::from_secs(2));
        let got = out.actual();
        let windows_final = out.windows.values().all(|w| w["final"] == true);
        if got == *want && windows_final {
            return Ok(());
        }
        if Instant::now() > deadline {
            let windows = differences(&want.windows, &got.windows);
            let totals = differences(&want.totals, &got.totals);
            let ms = differences(&want.milestones, &got.milestones);
            // The overall figures show how much is off, not just where.
            let overall: Vec<_> = windows
                .iter()
                .chain(&totals)
                .filter(|l| l.starts_with("total|"))
                .collect();
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            for d in &out.dead_letters {
                *reasons.entry(d["reason"].to_string()).or_default() += 1;
            }
            return Err(format!(
                " overall figures differing: {overall:#?}\n dead letters by reason (with repeats from redone work): {reasons:?}\n windows differing: {} (first 5: {:?})\n totals differing: {} (first 5: {:?})\n milestones differing: {} (first 5: {:?})\n windows: {} expected, {} seen; all final: {windows_final}",
                windows.len(),
                &windows[..windows.len().min(5)],
                totals.len(),
                &totals[..totals.len().min(5)],
                ms.len(),
                &ms[..ms.len().min(5)],
                want.windows.len(),
                got.windows.len(),
            ));
        }
    }
}

/// Polls the outputs until the dead letters by reason equal `want` (30 s at most), then
/// asserts it and that each carries its input coordinates. Figures alone do not prove
/// it: a bad record last in its partition can follow the final figures.
pub(crate) fn wait_for_dead_letters(
    c: &BaseConsumer,
    out: &mut Outputs,
    want: &BTreeMap<String, usize>,
) {
    let by_reason = |out: &Outputs| {
        let mut dead: BTreeMap<String, usize> = BTreeMap::new();
        for d in &out.dead_letters {
            *dead
                .entry(d["reason"].as_str().unwrap().to_string())
                .or_default() += 1;
            assert!(
                d["offset"].as_i64().unwrap() >= 0
                    && d["partition"].as_i64().unwrap() < PARTITIONS as i64,
                "dead letter without its input coordinates: {d}"
            );
        }
        dead
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while by_reason(out) != *want && Instant::now() < deadline {
        drain(c, out, Duration::from_secs(1));
    }
    assert_eq!(by_reason(out), *want, "dead letters by reason");
}

/// Each key whose wanted value `got` lacks or differs from, with both values.
fn differences<V: PartialEq + std::fmt::Debug>(
    want: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.get(k)))
        .collect()
}

pub(crate) type PartitionCounts = BTreeMap<(String, i32), i64>;

/// Records per input partition: their end offsets (the writers are not transactional).
pub(crate) fn input_counts(stage: &Stage) -> PartitionCounts {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .create()
        .unwrap();
    let mut counts = PartitionCounts::new();
    for t in stage.cfg.topics.inputs() {
        for p in 0..PARTITIONS {
            let (_, high) = c
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .expect("end offsets of an input partition");
            counts.insert((t.to_string(), p), high);
        }
    }
    counts
}

/// Waits until the job's group has committed every input partition's end:
/// it has read and committed everything written so far.
pub(crate) fn wait_until_committed(stage: &Stage, what: &str) {
    let counts = input_counts(stage);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = committed_offsets(stage);
        if committed == counts {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: committed offsets {committed:?} never reached the input {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The partition a test writes a record to, from its key (the order id), so
/// that an order's records are in the same partition of every input.
pub(crate) fn partition_of_key(key: &str) -> i32 {
    let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    (h % PARTITIONS as u64) as i32
}

/// Sends a generated record to `partition` of its input topic, waiting while
/// the producer's queue is full.
pub(crate) fn send_to_partition(
    stage: &Stage,
    p: &gmv::gen::writer::InputProducer,
    partition: i32,
    r: &gmv::gen::traffic::GeneratedRecord,
) {
    let mut record = rdkafka::producer::BaseRecord::to(stage.input(r.topic))
        .key(r.key.as_deref().unwrap())
        .payload(&r.value[..])
        .partition(partition);
    while let Err((e, back)) = p.send(record) {
        assert!(
            matches!(
                e,
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::error::RDKafkaErrorCode::QueueFull
                )
            ),
            "{e}"
        );
        record = back;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An admin client on `brokers` (its calls waited for with [`block_on`]).
pub(crate) fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// Waits for an admin client's call.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Deletes every record of `topic` partition `p` (DeleteRecords, as retention
/// would); returns how many of the offsets deleted are at or past `read_to`,
/// where the job's group had committed. (Given, not asked for here: with the
/// job paused, its group's offsets can sit in a transaction left open, and a
/// `read_committed` client's question waits until that transaction ends.)
pub(crate) fn delete_unread(stage: &Stage, topic: &str, p: i32, read_to: i64) -> i64 {
    let end = input_counts(stage)[&(topic.to_string(), p)];
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(end))
        .unwrap();
    let done = block_on(admin(&stage.brokers).delete_records(&tpl, &AdminOptions::new()))
        .expect("deleting records");
    for e in done.elements() {
        e.error().expect("records deleted");
    }
    end - read_to
}

/// The offsets a consumer group has committed for the input partitions.
pub(crate) fn committed_offsets(stage: &Stage) -> PartitionCounts {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .set("group.id", &stage.cfg.kafka.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in stage.cfg.topics.inputs() {
        for p in 0..PARTITIONS {
            tpl.add_partition(t, p);
        }
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let out = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect();
    // The list must go before the consumer (dropping them the other way round can hang).
    drop(committed);
    out
}

/// A test's topics (named `{name}.orders`, …) and group on the suite's
/// broker, or on a broker of its own, and the job's config for them; the
/// temporary folder goes when it is dropped.
pub(crate) struct Stage {
    /// The test's own broker, when it stops or restarts it.
    pub(crate) own: Option<Kafka>,
    pub(crate) brokers: String,
    /// The topic names and group the job's config holds.
    pub(crate) cfg: Config,
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) metrics_port: u16,
}

impl Stage {
    /// On the suite's shared broker.
    pub(crate) fn new(name: &str) -> Stage {
        Self::on(name, None)
    }

    /// On a broker of its own.
    pub(crate) fn own_broker(name: &str) -> Stage {
        Self::on(name, Some(Kafka::start()))
    }

    fn on(name: &str, own: Option<Kafka>) -> Stage {
        let brokers = own
            .as_ref()
            .map_or_else(|| shared_broker().to_string(), Kafka::bootstrap);
        let dir = std::env::temp_dir().join(format!("gmv-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = Config::default();
        cfg.kafka.brokers = brokers.clone();
        cfg.kafka.group_id = format!("gmv-e2e-{name}");
        let t = &mut cfg.topics;
        for name_of in [
            &mut t.orders,
            &mut t.payments,
            &mut t.deliveries,
            &mut t.gmv_windows,
            &mut t.gmv_totals,
            &mut t.milestones,
            &mut t.dead_letters,
            &mut t.repartition,
            &mut t.attribution_changelog,
            &mut t.aggregation_changelog,
        ] {
            *name_of = format!("{name}.{name_of}");
        }
        let (config, metrics_port) = write_config(&dir, &brokers, &cfg.topics, &cfg.kafka.group_id);
        create_topics(&config, PARTITIONS);
        Stage {
            own,
            brokers,
            cfg,
            dir,
            config,
            metrics_port,
        }
    }

    /// The input topic's name for a generated record's topic.
    pub(crate) fn input(&self, topic: gmv::model::InputTopic) -> &str {
        self.cfg.topics.inputs()[gmv::model::InputTopic::ALL
            .iter()
            .position(|t| *t == topic)
            .unwrap()]
    }

    /// Sends a generated record to this test's input topic.
    pub(crate) fn send(
        &self,
        p: &gmv::gen::writer::InputProducer,
        r: &gmv::gen::traffic::GeneratedRecord,
    ) {
        gmv::gen::writer::send(p, self.input(r.topic), r.key.as_deref(), &r.value).unwrap();
    }

    pub(crate) fn producer(&self) -> gmv::gen::writer::InputProducer {
        gmv::gen::writer::producer(&self.cfg).unwrap()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Generated traffic spread over a few minutes of event time, so windows close and milestones fire.
pub(crate) fn test_traffic(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        orders_per_sec: 300.0,
        surge: 2.0,
        surge_decay_ms: 30_000,
        ..TrafficConfig::default()
    }
}

/// A seed from E2E_CHAOS_SEED or the clock, printed so a failure can be replayed.
pub(crate) fn chaos_rng(test: &str) -> (u64, rand_chacha::ChaCha8Rng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("E2E_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{test}: seed {seed} (E2E_CHAOS_SEED={seed} replays it)");
    (seed, rand_chacha::ChaCha8Rng::seed_from_u64(seed))
}

/// Generated traffic written at `per_sec` records/s on a thread of its own, so
/// faults land mid-stream; returns what the outputs must come to and the writer.
pub(crate) fn traffic_in_background(
    stage: &Stage,
    seed: u64,
    records: usize,
    per_sec: u64,
) -> (Expected, std::thread::JoinHandle<()>) {
    let records: Vec<_> = Traffic::new(test_traffic(seed)).take(records).collect();
    let good: Vec<(String, Value)> = records
        .iter()
        .filter(|r| !matches!(r.kind, RecordKind::Bad(_)))
        .map(|r| {
            (
                r.topic.label().to_string(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect();
    let want = reference(&good);
    let (cfg, inputs) = (stage.cfg.clone(), stage.cfg.topics.clone());
    let writer = std::thread::spawn(move || {
        let p = gmv::gen::writer::producer(&cfg).unwrap();
        let started = Instant::now();
        for (i, r) in records.iter().enumerate() {
            let topic = inputs.inputs()[gmv::model::InputTopic::ALL
                .iter()
                .position(|t| *t == r.topic)
                .unwrap()];
            gmv::gen::writer::send(&p, topic, r.key.as_deref(), &r.value).unwrap();
            if let Some(ahead) =
                Duration::from_micros(i as u64 * 1_000_000 / per_sec).checked_sub(started.elapsed())
            {
                std::thread::sleep(ahead);
            }
        }
        gmv::gen::writer::finish(&p).unwrap();
    });
    (want, writer)
}

/// The final outputs equal `want` for a read_committed reader (whose every
/// record `drain` checks against the one before: no figure going back, no
/// update after a final window, revisions growing by one), with exactly one
/// record per milestone. Returns what it read.
pub(crate) fn assert_exact(
    stage: &Stage,
    instances: &Instances,
    want: &Expected,
    what: &str,
) -> Outputs {
    let mut out = Outputs::default();
    // A record that breaks a rule as it is read (`drain`) panics there: the
    // instances' logs go with that too.
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        try_wait_for(&reader(stage), &mut out, want)
    }));
    let waited = waited.unwrap_or_else(|panic| {
        eprintln!("{what}: a record broke a rule\n{}", instances.logs());
        std::panic::resume_unwind(panic)
    });
    if let Err(diff) = waited {
        let stored: i64 = input_counts(stage).values().sum();
        panic!(
            "{what}: outputs did not reach the expected state in time.\n{diff}\n input records in the topics: {stored}\n counters of the running instances since their last start:\n  {}\n{}",
            instances.counters(),
            instances.logs()
        );
    }
    let mut by_key: BTreeMap<&String, usize> = BTreeMap::new();
    for (k, _) in &out.milestone_records {
        *by_key.entry(k).or_default() += 1;
    }
    for (k, n) in &by_key {
        assert_eq!(*n, 1, "{what}: milestone {k} was emitted {n} times");
    }
    assert_eq!(by_key.len(), want.milestones.len(), "{what}: milestones");
    out
}

/// Whether a transaction is open in any partition the job writes: a
/// read_committed reader's end (the last stable offset) is then behind the
/// high watermark. Returns such a partition and its high watermark.
pub(crate) fn open_transaction(stage: &Stage) -> Option<(String, i32, i64)> {
    let client = |isolation| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &stage.brokers)
            .set("isolation.level", isolation)
            .create()
            .unwrap()
    };
    let (committed, all) = (client("read_committed"), client("read_uncommitted"));
    let md = all.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let ours: Vec<&str> = stage.cfg.topics.all()[3..]
        .iter()
        .map(|(_, n)| *n)
        .collect();
    for t in md.topics().iter().filter(|t| ours.contains(&t.name())) {
        for p in t.partitions() {
            let w = Duration::from_secs(10);
            let (_, stable) = committed.fetch_watermarks(t.name(), p.id(), w).unwrap();
            let (_, high) = all.fetch_watermarks(t.name(), p.id(), w).unwrap();
            if stable < high {
                return Some((t.name().to_string(), p.id(), high));
            }
        }
    }
    None
}

/// Runs one instance on a broker of its own with traffic flowing, does
/// `fault` to the broker, and asserts that the results are exact and that the
/// instance rode the fault out by itself (it still runs).
pub(crate) fn broker_fault(name: &str, what: &str, fault: impl FnOnce(&Kafka)) {
    let (seed, _) = chaos_rng(what);
    let stage = Stage::own_broker(name);
    // The job closes every window of a task once its input has been silent
    // for `idle_timeout` (contract, "After the sale ends"): 3 s in these
    // tests. After the broker comes back, this writer delivers what it queued
    // meanwhile with gaps longer than that on a busy machine (one CI run: 2,267
    // records came after such a gap, rightly late), so here the job waits 20 s.
    let settings = std::fs::read_to_string(&stage.config).unwrap();
    let longer = settings.replace("idle_timeout_ms = 3000", "idle_timeout_ms = 20000");
    assert_ne!(settings, longer, "the test config's idle_timeout_ms");
    std::fs::write(&stage.config, longer).unwrap();
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let mut cluster = Instances::one_running(&stage);
    std::thread::sleep(Duration::from_secs(3));
    fault(stage.own.as_ref().expect("a broker of its own"));
    writer.join().unwrap();
    assert_exact(&stage, &cluster, &want, &format!("after {what}"));
    cluster.assert_alive(0, &format!("after {what}"));
}
