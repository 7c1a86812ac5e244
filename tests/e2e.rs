//! End to end against Apache Kafka (one node shared by the suite, each test
//! with topics and a group of its own; `tests/support/broker.rs`): the tests
//! create topics with several partitions, produce generated traffic with the
//! murmur2 partitioner plus one record per bad-input reason, run the `gmv`
//! binary with transactions (its default), and check what a `read_committed`
//! reader of the output topics sees against totals computed here,
//! independently of the engine, from the same input: no figure going back, no
//! update after a final window, revisions growing by one, one record per
//! milestone, and the same final state through restarts, `kill -9`s,
//! rebalances, a zombie and a broker restart.
//!
//! Needs Java 17+ and Maven (`scripts/install-test-deps.sh` installs them);
//! without them the tests fail, saying so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmv::config::{Config, TopicNames};
use gmv::gen::traffic::{RecordKind, Traffic, TrafficConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

mod support;
use support::broker::{
    create_topics, free_port, http_get, metric_sum, shared_broker, try_http_get, wait_for_port,
    Kafka, Proc,
};

const PARTITIONS: i32 = 4;
const RECORDS: usize = 60_000;
const CHAOS_RECORDS: usize = 500_000;
const BRAND_THRESHOLD_FEN: i64 = 1_000_000;
const TOTAL_EVERY_FEN: i64 = 100_000_000;
/// The figures of a `gmv-totals` record.
const TOTAL_FIELDS: [&str; 6] = [
    "gmv_fen",
    "refund_fen",
    "paid_orders",
    "placed_orders",
    "shipped_orders",
    "delivered_orders",
];

/// The `gmv` binary, ended with the test thread that starts it even if the
/// test process dies before it can kill it.
fn gmv() -> Command {
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

fn start_job(config: &std::path::Path) -> Proc {
    start_instance(config, "0", None)
}

/// Starts `gmv run` as instance `id`; `metrics_port` overrides the config's.
fn start_instance(config: &std::path::Path, id: &str, metrics_port: Option<u16>) -> Proc {
    let mut cmd = gmv();
    cmd.args(["run", "--instance-id", id, "--config"])
        .arg(config);
    if let Some(port) = metrics_port {
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
    }
    Proc(
        cmd.stderr(Stdio::inherit())
            .spawn()
            .expect("starting gmv run"),
    )
}

// ---------- the independent reference computation ----------

fn fx(currency: &str) -> (u32, i128) {
    match currency {
        "CNY" => (2, 1_000_000),
        "USD" => (2, 7_100_000),
        "EUR" => (2, 7_750_000),
        "HKD" => (2, 910_000),
        "JPY" => (0, 47_000),
        "KRW" => (0, 5_200),
        "GBP" => (2, 9_050_000),
        "AUD" => (2, 4_650_000),
        other => panic!("generator wrote an unexpected currency {other}"),
    }
}

fn to_fen(currency: &str, amount: i64) -> i128 {
    let (exp, rate) = fx(currency);
    let n = amount as i128 * rate * 10i128.pow(2 - exp);
    let (q, r) = (n / 1_000_000, n % 1_000_000);
    if 2 * r > 1_000_000 || (2 * r == 1_000_000 && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

#[derive(Default, Debug, PartialEq)]
struct Expected {
    /// key → (gmv, refund, paid)
    windows: BTreeMap<String, (i128, i128, i64)>,
    /// key → (gmv, refund, paid, placed, shipped, delivered)
    totals: BTreeMap<String, [i128; 6]>,
    /// key → (crossed_at_ms, gmv_fen)
    milestones: BTreeMap<String, (i64, i128)>,
}

fn reference(values: &[(String, Value)]) -> Expected {
    let mut orders: HashMap<String, (String, Option<String>, String)> = HashMap::new();
    for (topic, v) in values {
        if topic == "orders" {
            let id = v["order_id"].as_str().unwrap().to_string();
            orders.entry(id).or_insert((
                v["brand_id"].as_str().unwrap().into(),
                v["channel_id"].as_str().map(String::from),
                v["country"].as_str().unwrap().into(),
            ));
        }
    }
    let mut e = Expected::default();
    let mut seen = HashSet::new();
    let mut buckets: BTreeMap<String, BTreeMap<i64, i128>> = BTreeMap::new();
    let total = |e: &mut Expected, key: String, col: usize, v: i128| {
        e.totals.entry(key).or_default()[col] += v
    };
    for (topic, v) in values {
        let (id_field, col) = match topic.as_str() {
            "orders" => ("order_id", 3),
            "payments" => ("payment_id", 0),
            _ => ("delivery_id", if v["status"] == "shipped" { 4 } else { 5 }),
        };
        if !seen.insert((topic.clone(), v[id_field].as_str().unwrap().to_string())) {
            continue;
        }
        let ts = v["ts_ms"].as_i64().unwrap();
        let order = orders.get(v["order_id"].as_str().unwrap());
        let mut keys = vec!["total|all".to_string()];
        match order {
            Some((brand, channel, country)) => {
                keys.push(format!("brand|{brand}"));
                keys.push(format!("country|{country}"));
                if let Some(c) = channel {
                    keys.push(format!("channel|{c}"));
                }
            }
            None => {
                keys.push("brand|unknown".into());
                keys.push("country|unknown".into());
            }
        }
        if topic != "payments" {
            for k in keys {
                total(&mut e, k, col, 1);
            }
            continue;
        }
        let fen = to_fen(
            v["currency"].as_str().unwrap(),
            v["amount_minor"].as_i64().unwrap(),
        );
        let paid = v["kind"] == "paid";
        for k in keys {
            if paid {
                total(&mut e, k.clone(), 0, fen);
                total(&mut e, k.clone(), 2, 1);
                if !k.starts_with("country|") {
                    *buckets
                        .entry(k.clone())
                        .or_default()
                        .entry(ts.div_euclid(1000))
                        .or_default() += fen;
                }
            } else {
                total(&mut e, k.clone(), 1, fen);
            }
            let sizes: &[i64] = if k == "total|all" {
                &[1_000, 60_000]
            } else {
                &[60_000]
            };
            for size in sizes {
                let w = e
                    .windows
                    .entry(format!("{k}|{size}|{}", ts.div_euclid(*size) * size))
                    .or_default();
                if paid {
                    w.0 += fen;
                    w.2 += 1;
                } else {
                    w.1 += fen;
                }
            }
        }
    }
    for (k, b) in buckets {
        let mut cum = 0i128;
        for (sec, g) in b {
            let before = cum;
            cum += g;
            let thresholds: Vec<i128> = if k == "total|all" {
                ((before / TOTAL_EVERY_FEN as i128 + 1)..=(cum / TOTAL_EVERY_FEN as i128))
                    .map(|i| i * TOTAL_EVERY_FEN as i128)
                    .collect()
            } else {
                [BRAND_THRESHOLD_FEN as i128]
                    .into_iter()
                    .filter(|t| before < *t && *t <= cum)
                    .collect()
            };
            for t in thresholds {
                e.milestones
                    .insert(format!("{k}|{t}"), ((sec + 1) * 1000, cum));
            }
        }
    }
    e
}

// ---------- reading the outputs back ----------

#[derive(Default)]
struct Outputs {
    windows: BTreeMap<String, Value>,
    totals: BTreeMap<String, Value>,
    milestone_records: Vec<(String, Value)>,
    dead_letters: Vec<Value>,
    /// The key's length of each dead letter (none: 0).
    dead_letter_key_lens: Vec<usize>,
}

impl Outputs {
    fn actual(&self) -> Expected {
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

fn reader(stage: &Stage) -> BaseConsumer {
    reader_with(stage, "read_committed")
}

fn drain(c: &BaseConsumer, out: &mut Outputs, for_at_least: Duration) {
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
fn wait_for(c: &BaseConsumer, out: &mut Outputs, want: &Expected, what: &str) {
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
            let windows: Vec<_> = want
                .windows
                .iter()
                .filter(|(k, v)| got.windows.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.windows.get(k)))
                .collect();
            let totals: Vec<_> = want
                .totals
                .iter()
                .filter(|(k, v)| got.totals.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.totals.get(k)))
                .collect();
            let ms: Vec<_> = want
                .milestones
                .iter()
                .filter(|(k, v)| got.milestones.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.milestones.get(k)))
                .collect();
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

type PartitionCounts = BTreeMap<(String, i32), i64>;

/// Records per input partition: their end offsets (the writers are not transactional).
fn input_counts(stage: &Stage) -> PartitionCounts {
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

/// The offsets a consumer group has committed for the input partitions.
fn committed_offsets(stage: &Stage) -> PartitionCounts {
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

type InputWriter = rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// A test's topics (named `{name}.orders`, …) and group on the suite's
/// broker, or on a broker of its own, and the job's config for them; the
/// temporary folder goes when it is dropped.
struct Stage {
    /// The test's own broker, when it stops or restarts it.
    own: Option<Kafka>,
    brokers: String,
    /// The topic names and group the job's config holds.
    cfg: Config,
    dir: PathBuf,
    config: PathBuf,
    metrics_port: u16,
}

impl Stage {
    /// On the suite's shared broker.
    fn new(name: &str) -> Stage {
        Self::on(name, None)
    }

    /// On a broker of its own.
    fn own_broker(name: &str) -> Stage {
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
    fn input(&self, topic: gmv::model::InputTopic) -> &str {
        self.cfg.topics.inputs()[gmv::model::InputTopic::ALL
            .iter()
            .position(|t| *t == topic)
            .unwrap()]
    }

    /// Sends a generated record to this test's input topic.
    fn send(&self, p: &InputWriter, r: &gmv::gen::traffic::GeneratedRecord) {
        gmv::gen::writer::send(p, self.input(r.topic), r.key.as_deref(), &r.value).unwrap();
    }

    fn producer(&self) -> InputWriter {
        gmv::gen::writer::producer(&self.cfg).unwrap()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Generated traffic spread over a few minutes of event time, so windows close and milestones fire.
fn test_traffic(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        orders_per_sec: 300.0,
        surge: 2.0,
        surge_decay_ms: 30_000,
        ..TrafficConfig::default()
    }
}

#[test]
fn job_output_matches_independent_totals_and_survives_a_restart() {
    let stage = Stage::new("main");
    let (config, metrics_port) = (stage.config.clone(), stage.metrics_port);

    // Input: generated traffic (with its own duplicates and bad records), then one record per bad-input reason.
    let traffic = test_traffic(42);
    let producer = stage.producer();
    let mut good: Vec<(String, Value)> = Vec::new();
    let mut bad_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for r in Traffic::new(traffic).take(RECORDS) {
        let topic = r.topic.label();
        stage.send(&producer, &r);
        match r.kind {
            RecordKind::Bad(reason) => {
                *bad_by_reason
                    .entry(reason.as_str().to_string())
                    .or_default() += 1
            }
            _ => good.push((topic.to_string(), serde_json::from_slice(&r.value).unwrap())),
        }
    }
    use gmv::model::InputTopic::{Deliveries, Orders, Payments};
    let bad_cases: [(&str, gmv::model::InputTopic, Vec<u8>); 6] = [
        ("malformed_json", Orders, b"{\"order_id\": ".to_vec()),
        ("missing_field", Payments, br#"{"payment_id":"e2e-1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":1}"#.to_vec()),
        ("invalid_field", Deliveries, br#"{"delivery_id":"e2e-2","order_id":"x","status":"lost","ts_ms":1}"#.to_vec()),
        ("unknown_currency", Payments, br#"{"payment_id":"e2e-3","order_id":"x","kind":"paid","currency":"XAU","amount_minor":5,"ts_ms":1}"#.to_vec()),
        ("amount_out_of_range", Payments, br#"{"payment_id":"e2e-4","order_id":"x","kind":"paid","currency":"CNY","amount_minor":0,"ts_ms":1}"#.to_vec()),
        ("too_large", Orders, serde_json::to_vec(&json!({"order_id": "x", "pad": "y".repeat(70_000)})).unwrap()),
    ];
    for (reason, topic, value) in &bad_cases {
        gmv::gen::writer::send(
            &producer,
            stage.input(*topic),
            Some(&format!("bad-{reason}")),
            value,
        )
        .unwrap();
        *bad_by_reason.entry(reason.to_string()).or_default() += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let want = reference(&good);
    assert!(
        !want.milestones.is_empty(),
        "the data set should cross some milestones"
    );

    let mut job = start_job(&config);
    let out_reader = reader(&stage);
    let mut out = Outputs::default();
    wait_for(&out_reader, &mut out, &want, "first run");

    // Every bad-input reason reached dead-letters, as many times as written, with its coordinates.
    let mut dead: BTreeMap<String, usize> = BTreeMap::new();
    for d in &out.dead_letters {
        *dead
            .entry(d["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert!(
            d["offset"].as_i64().unwrap() >= 0
                && d["partition"].as_i64().unwrap() < PARTITIONS as i64
        );
    }
    assert_eq!(dead, bad_by_reason, "dead letters by reason");

    // Offsets follow results: once everything is final and acknowledged, the
    // job's committed offset of every input partition is its record count.
    let counts = input_counts(&stage);
    assert_eq!(
        counts.values().sum::<i64>() as usize,
        RECORDS + bad_cases.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = committed_offsets(&stage);
        if committed == counts {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {committed:?} never reached the input {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Graceful stop, then a restart rebuilds the same state from the input without repeating milestones.
    let pid = job.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = job.0.wait().unwrap();
    assert!(
        status.success(),
        "gmv run did not stop cleanly on SIGTERM: {status}"
    );
    let windows_before = out.windows.len();
    let mut job2 = start_job(&config);
    // The restarted job restores its state from the changelogs and resumes at the
    // committed offsets: it reads no input again (its own metrics say so), and a
    // reader of the whole history sees no figure go back, no update after a final
    // one, revisions growing by one and no milestone twice.
    wait_for_port(
        metrics_port,
        Duration::from_secs(30),
        "the restarted job's metrics",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = http_get(metrics_port, "/metrics");
        assert_eq!(
            metric_sum(&metrics, "gmv_events_read_total"),
            0.0,
            "the restart re-read input"
        );
        if metric_sum(&metrics, "gmv_state_entries") > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted job never restored its state"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut again = Outputs::default();
    let reader2 = reader(&stage);
    wait_for(&reader2, &mut again, &want, "after restart");
    // Let the restarted job finish: its windows are final and its outputs settled.
    drain(&reader2, &mut again, Duration::from_secs(5));
    assert_eq!(again.actual(), want);
    assert_eq!(again.windows.len(), windows_before);
    let mut keys: Vec<&String> = again.milestone_records.iter().map(|(k, _)| k).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n,
        "a milestone key was emitted more than once across the restart"
    );
    assert_eq!(n, want.milestones.len());
    // A late event: all partitions went idle and everything closed before the
    // restart, and the restored watermark remembers it: an old event is late.
    let late = json!({"payment_id":"e2e-late","order_id":"x","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms": good[0].1["ts_ms"]});
    gmv::gen::writer::send(
        &producer,
        &stage.cfg.topics.payments,
        Some("x"),
        &serde_json::to_vec(&late).unwrap(),
    )
    .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !again.dead_letters.iter().any(|d| d["reason"] == "late") {
        assert!(
            Instant::now() < deadline,
            "the late event never reached dead-letters"
        );
        drain(&reader2, &mut again, Duration::from_secs(1));
    }
    assert_eq!(again.actual(), want, "a late event is counted nowhere");

    assert!(Command::new("kill")
        .args(["-TERM", &job2.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        job2.0.wait().unwrap().success(),
        "the restarted job did not stop cleanly"
    );
}

/// Hostile input through the real broker with the job running: each class
/// ends as a dead letter or as bounded, metered state, every valid record
/// around it is counted exactly, and the job never stops (docs/testing.md has
/// the table).
#[test]
fn hostile_input_is_dead_lettered_or_bounded_and_every_valid_record_counts() {
    use gmv::model::InputTopic::{self, Deliveries, Orders, Payments};
    let stage = Stage::new("hostile");
    let producer = stage.producer();
    let mut good: Vec<(String, Value)> = Vec::new();
    let mut bad_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for r in Traffic::new(test_traffic(11)).take(20_000) {
        stage.send(&producer, &r);
        match r.kind {
            RecordKind::Bad(reason) => {
                *bad_by_reason.entry(reason.as_str().into()).or_default() += 1
            }
            _ => good.push((
                r.topic.label().into(),
                serde_json::from_slice(&r.value).unwrap(),
            )),
        }
    }
    // Valid hostile records carry the traffic's latest event time: not late
    // when read after it.
    let t = good
        .iter()
        .map(|(_, v)| v["ts_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    let order = |id: &str, brand: &str, channel: Option<&str>| {
        json!({"order_id": id, "user_id": "u", "brand_id": brand, "channel_id": channel, "country": "CN",
               "device": "pc", "currency": "CNY", "amount_minor": 100, "ts_ms": t})
    };
    let pay = |id: &str, order_id: &str, ts: Value| json!({"payment_id": id, "order_id": order_id, "kind": "paid", "currency": "CNY", "amount_minor": 100, "ts_ms": ts});
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    let huge_key = vec![b'k'; 990_000];
    let controls: Vec<u8> = (0..4096).map(|i| 1 + (i % 31) as u8).collect();
    // 30,000 levels of nesting: as a required field's value, and in an unknown
    // field (ignored by contract, and parsed without recursion: valid, below).
    let nested = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep = format!(
        r#"{{"order_id":"h-7","user_id":"u","brand_id":{nested},"channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":{t}}}"#
    );
    let duplicate_keys = format!(
        r#"{{"order_id":"h-8","order_id":"h-8b","user_id":"u","brand_id":"b","channel_id":null,"country":"CN","device":"pc","currency":"CNY","amount_minor":1,"ts_ms":{t}}}"#
    );
    let id64 = "i".repeat(64);
    let id65 = "i".repeat(65);
    let ahead = gmv::telemetry::http::now_ms() + 2 * 3_600_000;
    // (outcome: a dead-letter reason, topic, key, value)
    type Case = (&'static str, InputTopic, Option<Vec<u8>>, Vec<u8>);
    let cases: Vec<Case> = vec![
        // Keys and values up to the broker's maximum; control characters.
        ("invalid_field", Payments, Some(huge_key.clone()), bytes(&pay("h-1", "h-1", json!(t)))),
        ("malformed_json", Orders, Some(huge_key), controls.clone()),
        ("too_large", Orders, Some(b"h-3".to_vec()), bytes(&json!({"order_id": "h-3", "pad": "p".repeat(990_000)}))),
        ("invalid_field", Deliveries, Some(b"h-6\x00\x01\x1f".to_vec()),
            bytes(&json!({"delivery_id": "d-6", "order_id": "h-6", "status": "shipped", "ts_ms": t}))),
        // Invalid UTF-8 in a value and in a key.
        ("malformed_json", Payments, Some(b"h-4".to_vec()), [&[0xff, 0xfe][..], &controls].concat()),
        ("invalid_field", Payments, Some(vec![0xff, 0xfe, b'h']), bytes(&pay("h-5", "h-5", json!(t)))),
        // Deep nesting; duplicate JSON keys; numbers beyond i64.
        ("invalid_field", Orders, Some(b"h-7".to_vec()), deep.into_bytes()),
        ("invalid_field", Orders, Some(b"h-8".to_vec()), duplicate_keys.into_bytes()),
        ("amount_out_of_range", Payments, Some(b"h-9".to_vec()),
            br#"{"payment_id":"h-9","order_id":"h-9","kind":"paid","currency":"CNY","amount_minor":100000000000000000000000000000,"ts_ms":1800000000000}"#.to_vec()),
        ("invalid_field", Payments, Some(b"h-10".to_vec()),
            br#"{"payment_id":"h-10","order_id":"h-10","kind":"paid","currency":"CNY","amount_minor":1,"ts_ms":100000000000000000000000}"#.to_vec()),
        // Ids of 65 bytes (64 are valid, below).
        ("invalid_field", Orders, Some(id65.clone().into_bytes()), bytes(&order(&id65, "b", None))),
        // A key other than order_id, and no key.
        ("invalid_field", Payments, Some(b"another-order".to_vec()), bytes(&pay("h-13", "h-13", json!(t)))),
        ("invalid_field", Payments, None, bytes(&pay("h-14", "h-14", json!(t)))),
        // Seconds instead of milliseconds; a producer clock two hours ahead.
        ("invalid_field", Payments, Some(b"h-15".to_vec()), bytes(&pay("h-15", "h-15", json!(t / 1000)))),
        ("invalid_field", Payments, Some(b"h-16".to_vec()), bytes(&pay("h-16", "h-16", json!(ahead)))),
    ];
    for (reason, topic, key, value) in &cases {
        gmv::gen::writer::send(&producer, stage.input(*topic), key.as_deref(), value).unwrap();
        *bad_by_reason.entry(reason.to_string()).or_default() += 1;
    }
    // Deep nesting in an unknown field: valid (the reference ignores the field).
    let nested_extra = order("h-deep", "b-deep", None);
    let mut raw = bytes(&nested_extra);
    raw.pop();
    raw.extend_from_slice(format!(r#","extra":{nested}}}"#).as_bytes());
    gmv::gen::writer::send(&producer, stage.input(Orders), Some("h-deep"), &raw).unwrap();
    good.push((Orders.label().into(), nested_extra));
    let mut valid = |topic: InputTopic, v: Value| {
        let key = v["order_id"].as_str().unwrap().to_string();
        gmv::gen::writer::send(&producer, stage.input(topic), Some(&key), &bytes(&v)).unwrap();
        good.push((topic.label().into(), v));
    };
    // Ids of exactly 64 bytes.
    valid(Orders, order(&id64, &id64, Some(&id64)));
    valid(Payments, pay(&id64, &id64, json!(t)));
    // 100,000 payments for one order that never comes: 1,000 wait, the rest
    // go to `unknown` at once (bounded, metered); all count.
    const WAITING: usize = 100_000;
    for i in 0..WAITING {
        valid(Payments, pay(&format!("many-{i}"), "h-many", json!(t)));
    }
    // 50,000 brand ids of 64 bytes each, one order and payment each.
    const BRANDS: usize = 50_000;
    for i in 0..BRANDS {
        let id = format!("{i:064}");
        valid(Orders, order(&id, &id, None));
        valid(Payments, pay(&id, &id, json!(t)));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let want = reference(&good);

    let mut job = start_job(&stage.config);
    let out_reader = reader(&stage);
    let mut out = Outputs::default();
    wait_for(&out_reader, &mut out, &want, "hostile input");
    let mut dead: BTreeMap<String, usize> = BTreeMap::new();
    for d in &out.dead_letters {
        *dead
            .entry(d["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(dead, bad_by_reason, "dead letters by reason");
    let longest = out.dead_letter_key_lens.iter().max().copied().unwrap_or(0);
    assert_eq!(longest, 256, "dead-letter keys are cut to 256 bytes");
    let metrics = http_get(stage.metrics_port, "/metrics");
    assert_eq!(
        metric_sum(&metrics, "gmv_join_overflows_total"),
        (WAITING - gmv::core::join::MAX_WAITING_PER_ORDER) as f64
    );
    assert!(
        metric_sum(&metrics, "gmv_state_entries{kind=\"keys\"}") >= BRANDS as f64,
        "every brand's totals are kept and metered"
    );
    assert!(job.0.try_wait().unwrap().is_none(), "the job stopped");
    stop_cleanly(job, "hostile");
}

/// What an operator sees when the input topics are wrong: the job refuses to start and says why.
#[test]
fn run_refuses_missing_or_not_co_partitioned_inputs_and_bad_settings() {
    let stage = Stage::new("refuse");
    let (brokers, config, dir) = (
        stage.brokers.clone(),
        stage.config.clone(),
        stage.dir.clone(),
    );
    // A fourth topic with another partition count, named as the orders input.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
    let topic = rdkafka::admin::NewTopic::new(
        "refuse.orders-three",
        3,
        rdkafka::admin::TopicReplication::Fixed(1),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // And an output topic that accepts records of 100,000 bytes only.
    let small = rdkafka::admin::NewTopic::new(
        "refuse.small-windows",
        1,
        rdkafka::admin::TopicReplication::Fixed(1),
    )
    .set("max.message.bytes", "100000");
    let created = rt
        .block_on(admin.create_topics([&topic, &small], &rdkafka::admin::AdminOptions::new()))
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // Created by the controller; listed by the broker a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in ["refuse.orders-three", "refuse.small-windows"] {
        while admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .map_or(true, |m| m.topics()[0].partitions().is_empty())
        {
            assert!(
                Instant::now() < deadline,
                "the broker never listed the topic"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let refused = |env: (&str, &str), config: &std::path::Path| {
        let out = gmv()
            .args(["run", "--config"])
            .arg(config)
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "gmv run should refuse to start with {env:?}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(("GMV_TOPICS__ORDERS", "refuse.orders-three"), &config);
    assert!(
        err.contains("not co-partitioned") && err.contains("`refuse.orders-three` has 3"),
        "{err}"
    );
    let err = refused(("GMV_TOPICS__PAYMENTS", "no-such-topic"), &config);
    assert!(
        err.contains("no-such-topic") && err.contains("does not exist"),
        "{err}"
    );
    let err = refused(("GMV_TOPICS__DEAD_LETTERS", "no-such-output"), &config);
    assert!(
        err.contains("`no-such-output` does not exist") && err.contains("gmv topics"),
        "{err}"
    );
    let err = refused(("GMV_TOPICS__GMV_WINDOWS", "refuse.small-windows"), &config);
    assert!(
        err.contains("`refuse.small-windows` accepts 100000") && err.contains("max_record_bytes"),
        "{err}"
    );
    let err = refused(("GMV_TIME__JOIN_TIMEOUT_MS", "120000"), &config);
    assert!(err.contains("time.join_timeout_ms"), "{err}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[kafka]\nbrokerz = \"x\"\n").unwrap();
    let err = refused(("RUST_LOG", "warn"), &bad);
    assert!(err.contains("brokerz"), "an unknown key is named: {err}");
}

/// SIGTERM: the instance commits, leaves the group and exits 0.
fn stop_cleanly(mut job: Proc, id: &str) {
    Command::new("kill")
        .args(["-TERM", &job.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        job.0.wait().unwrap().success(),
        "instance {id} did not stop cleanly"
    );
}

/// Instances of the job in one group, by slot, with their metrics ports.
struct Instances<'a> {
    stage: &'a Stage,
    ids: Vec<&'static str>,
    jobs: Vec<Option<Proc>>,
    ports: Vec<u16>,
}

impl<'a> Instances<'a> {
    fn new(stage: &'a Stage, ids: &[&'static str]) -> Self {
        Instances {
            stage,
            ids: ids.to_vec(),
            jobs: ids.iter().map(|_| None).collect(),
            ports: ids.iter().map(|_| free_port()).collect(),
        }
    }

    fn start(&mut self, i: usize) {
        assert!(
            self.jobs[i].is_none(),
            "instance {} runs already",
            self.ids[i]
        );
        self.ports[i] = free_port();
        self.jobs[i] = Some(start_instance(
            &self.stage.config,
            self.ids[i],
            Some(self.ports[i]),
        ));
    }

    fn running(&self) -> Vec<usize> {
        (0..self.ids.len())
            .filter(|i| self.jobs[*i].is_some())
            .collect()
    }

    /// Asserts that instance `i` is still running: it rode out what happened by itself.
    fn assert_alive(&mut self, i: usize, after: &str) {
        let job = self.jobs[i].as_mut().expect("the instance was started");
        assert!(
            job.0.try_wait().unwrap().is_none(),
            "instance {} exited {after}",
            self.ids[i]
        );
    }

    /// SIGKILL: no flush, no commit, no leave.
    fn kill(&mut self, i: usize) {
        let mut j = self.jobs[i].take().expect("the instance runs");
        j.0.kill().unwrap();
        j.0.wait().unwrap();
    }

    fn stop(&mut self, i: usize) {
        stop_cleanly(self.jobs[i].take().expect("the instance runs"), self.ids[i]);
    }

    fn pid(&self, i: usize) -> String {
        self.jobs[i]
            .as_ref()
            .expect("the instance runs")
            .0
            .id()
            .to_string()
    }

    /// Waits until the running instances own every task between them (their
    /// `gmv_tasks`, steady for 3 s): after the last rebalance, no input or
    /// repartition partition is left without an owner.
    fn wait_until_every_task_is_owned(&self) {
        let metadata = reader(self.stage)
            .fetch_metadata(
                Some(&self.stage.cfg.topics.repartition),
                Duration::from_secs(10),
            )
            .expect("metadata of the repartition topic");
        let tasks = (PARTITIONS as usize + metadata.topics()[0].partitions().len()) as f64;
        let (deadline, mut steady, mut owned) = (Instant::now() + Duration::from_secs(90), 0, 0.0);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            owned = self
                .running()
                .into_iter()
                .filter_map(|i| try_http_get(self.ports[i], "/metrics"))
                .map(|m| metric_sum(&m, "gmv_tasks"))
                .sum();
            steady = if owned == tasks { steady + 1 } else { 0 };
            if steady == 10 {
                return;
            }
        }
        panic!("the running instances own {owned} of {tasks} tasks after 90 s");
    }

    /// What the running instances dropped or saw late: where a difference comes from.
    fn counters(&self) -> String {
        self.running()
            .into_iter()
            .flat_map(|i| {
                try_http_get(self.ports[i], "/metrics")
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        [
                            "gmv_late_partials_total",
                            "gmv_dead_letters_total",
                            "gmv_rebalances_total",
                        ]
                        .iter()
                        .any(|m| l.starts_with(m))
                    })
                    .map(|l| format!("{}: {l}", self.ids[i]))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

/// A seed from E2E_CHAOS_SEED or the clock, printed so a failure can be replayed.
fn chaos_rng(test: &str) -> (u64, rand_chacha::ChaCha8Rng) {
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
fn traffic_in_background(
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
        p.flush(Duration::from_secs(60)).unwrap();
    });
    (want, writer)
}

/// The final outputs equal `want` for a read_committed reader (whose every
/// record `drain` checks against the one before: no figure going back, no
/// update after a final window, revisions growing by one), with exactly one
/// record per milestone. Returns what it read.
fn assert_exact(stage: &Stage, instances: &Instances, want: &Expected, what: &str) -> Outputs {
    let mut out = Outputs::default();
    if let Err(diff) = try_wait_for(&reader(stage), &mut out, want) {
        let stored: i64 = input_counts(stage).values().sum();
        panic!(
            "{what}: outputs did not reach the expected state in time.\n{diff}\n input records in the topics: {stored}\n counters of the running instances since their last start:\n  {}",
            instances.counters()
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

/// Crashes, restarts and rebalances: three instance slots share the work in one
/// consumer group while 500,000 records flow in. Instances are killed with
/// SIGKILL at random moments ten times and restarted, a third instance is added
/// while traffic flows (a rebalance in the middle of transactions) and later
/// one is stopped. A read_committed reader sees exactly the independent
/// totals, each figure only growing, nothing after a final window, and each
/// milestone once. Replay a failure with E2E_CHAOS_SEED=<the printed seed>.
#[test]
fn instances_killed_added_and_removed_still_end_exact() {
    use rand::Rng;
    let (seed, mut rng) = chaos_rng("chaos");
    let stage = Stage::new("chaos");
    // 8,000 records/s: about a minute of traffic, so the kills land mid-stream.
    let (want, writer) = traffic_in_background(&stage, seed, CHAOS_RECORDS, 8_000);
    let mut cluster = Instances::new(&stage, &["a", "b", "c"]);
    cluster.start(0);
    cluster.start(1);
    for event in 1..=12 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(2_000..6_000)));
        match event {
            4 => {
                println!("adding instance c");
                cluster.start(2);
                continue;
            }
            9 => {
                // Removed for good: SIGTERM, it commits and leaves the group.
                println!("removing instance c");
                cluster.stop(2);
                continue;
            }
            _ => {}
        }
        let running = cluster.running();
        let i = running[rng.gen_range(0..running.len())];
        cluster.kill(i);
        println!(
            "kill -9 of instance {} (event {event}), restarting it",
            cluster.ids[i]
        );
        cluster.start(i);
    }
    writer.join().unwrap();
    cluster.wait_until_every_task_is_owned();
    assert_exact(
        &stage,
        &cluster,
        &want,
        &format!("after 10 kills, an added and a removed instance (seed {seed})"),
    );
}

/// Whether a transaction is open in any partition the job writes: a
/// read_committed reader's end (the last stable offset) is then behind the
/// high watermark. Returns such a partition and its high watermark.
fn open_transaction(stage: &Stage) -> Option<(String, i32, i64)> {
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

fn signal(pid: &str, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success());
}

/// `kill -9` of an instance while its transaction is open, never restarted:
/// the broker aborts that transaction after the producer's
/// `transaction.timeout.ms` (10 s), and until then every read_committed reader
/// of the partitions it wrote waits, including the restore of its tasks by the
/// instance that takes them over. Then readers move on, the aborted records
/// stay invisible, and the results are exact.
#[test]
fn an_instance_killed_with_its_transaction_open_is_aborted_and_readers_move_on() {
    use rand::Rng;
    let (seed, mut rng) = chaos_rng("killed mid-transaction");
    let stage = Stage::new("midtxn");
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let mut cluster = Instances::new(&stage, &["a", "b"]);
    cluster.start(0);
    cluster.wait_until_every_task_is_owned();
    // The transaction is open only while a commit sends and commits: stop the
    // instance at random moments until one catches it open, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let open = loop {
        assert!(
            Instant::now() < deadline,
            "in 60 s of tries no SIGSTOP caught the instance with a transaction open"
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        let pid = cluster.pid(0);
        signal(&pid, "-STOP");
        if let Some(open) = open_transaction(&stage) {
            break open;
        }
        signal(&pid, "-CONT");
    };
    println!("kill -9 of instance a with a transaction open in {open:?}");
    cluster.kill(0);
    // Another instance (its own transactional.id, which cannot abort a's) takes over.
    cluster.start(1);
    writer.join().unwrap();
    cluster.wait_until_every_task_is_owned();
    assert_exact(&stage, &cluster, &want, "after a kill mid-transaction");
    // The broker aborted it: that partition's last stable offset passed where its
    // end was at the kill (the new owner's own transactions may be open beyond).
    let (topic, partition, end_at_kill) = open;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let stable = c
        .fetch_watermarks(&topic, partition, Duration::from_secs(10))
        .unwrap()
        .1;
    assert!(
        stable >= end_at_kill,
        "{topic} [{partition}]: the last stable offset {stable} is still before the dead transaction's end {end_at_kill}"
    );
}

/// A zombie: instance z is paused (SIGSTOP) while traffic flows, a second
/// process starts with the same `--instance-id`, so the same
/// `transactional.id`, and takes the work over; then z is resumed. z's
/// producer is fenced: it exits, saying so, and nothing it wrote after the
/// fence is seen by a read_committed reader, whose results are exact.
#[test]
fn a_paused_instance_replaced_by_one_with_its_id_is_fenced_and_counts_nothing() {
    let (seed, _) = chaos_rng("zombie");
    let stage = Stage::new("zombie");
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let zombie_log = stage.dir.join("zombie.log");
    let (zombie_port, heir_port) = (free_port(), free_port());
    let mut zombie = Proc(
        gmv()
            .args(["run", "--instance-id", "z", "--config"])
            .arg(&stage.config)
            .args(["--metrics-listen", &format!("127.0.0.1:{zombie_port}")])
            .stderr(std::fs::File::create(&zombie_log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(8));
    let pid = zombie.0.id().to_string();
    signal(&pid, "-STOP");
    println!("instance z paused; starting its replacement with the same id");
    let heir = start_instance(&stage.config, "z", Some(heir_port));
    // The replacement owns every task once z's session has expired.
    let mut cluster = Instances::new(&stage, &["z"]);
    cluster.jobs[0] = Some(heir);
    cluster.ports[0] = heir_port;
    cluster.wait_until_every_task_is_owned();
    std::thread::sleep(Duration::from_secs(3));
    println!("resuming the paused instance");
    signal(&pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = zombie.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced instance still runs a minute after it was resumed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&zombie_log).unwrap();
    assert!(!status.success(), "the fenced instance exited 0");
    assert!(
        said.contains("fenced"),
        "the fenced instance did not say it was fenced:\n{}",
        &said[said.len().saturating_sub(3000)..]
    );
    writer.join().unwrap();
    assert_exact(&stage, &cluster, &want, "after a zombie was fenced");
}

/// Runs one instance on a broker of its own with traffic flowing, does
/// `fault` to the broker, and asserts that the results are exact and that the
/// instance rode the fault out by itself (it still runs).
fn broker_fault(name: &str, what: &str, fault: impl FnOnce(&Kafka)) {
    let (seed, _) = chaos_rng(what);
    let stage = Stage::own_broker(name);
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let mut cluster = Instances::new(&stage, &["a"]);
    cluster.start(0);
    cluster.wait_until_every_task_is_owned();
    std::thread::sleep(Duration::from_secs(3));
    fault(stage.own.as_ref().expect("a broker of its own"));
    writer.join().unwrap();
    assert_exact(&stage, &cluster, &want, &format!("after {what}"));
    cluster.assert_alive(0, &format!("after {what}"));
}

/// The broker stopped (cleanly) while the job runs with traffic flowing, and
/// started again some seconds later: the job rides it out, and the results
/// are exact for a read_committed reader.
#[test]
fn the_broker_stopped_and_restarted_between_commits_changes_no_result() {
    broker_fault("brokerrestart", "the broker restarted", |broker| {
        println!("stopping the broker");
        broker.stop();
        std::thread::sleep(Duration::from_secs(5));
        println!("starting the broker again");
        broker.restart();
    });
}

/// The broker paused (SIGSTOP) for 30 s with traffic flowing: longer than the
/// job's group session (6 s here) and its transaction timeout (10 s). The job
/// rides it out by itself, without a restart, and the results are exact.
#[test]
fn the_broker_paused_for_30_s_changes_no_result_and_the_job_keeps_running() {
    broker_fault("brokerpause", "the broker paused for 30 s", |broker| {
        println!("pausing the broker for 30 s");
        broker.pause();
        std::thread::sleep(Duration::from_secs(30));
        broker.resume();
        println!("broker resumed");
    });
}

/// The group session lost: the job itself paused (SIGSTOP) for longer than
/// its session timeout, with traffic flowing, so the group moves on without
/// it and the broker ends its open transaction. Resumed, it rejoins, restores
/// its tasks and goes on, as Kafka Streams does with a migrated task, instead
/// of exiting; the results are exact.
#[test]
fn an_instance_that_lost_its_session_rejoins_and_the_results_stay_exact() {
    let (seed, _) = chaos_rng("session lost");
    let stage = Stage::new("sessionlost");
    let (want, writer) = traffic_in_background(&stage, seed, 150_000, 5_000);
    let mut cluster = Instances::new(&stage, &["a"]);
    cluster.start(0);
    cluster.wait_until_every_task_is_owned();
    std::thread::sleep(Duration::from_secs(3));
    let pid = cluster.pid(0);
    println!("pausing the instance for 15 s (session timeout 6 s, transaction timeout 10 s)");
    signal(&pid, "-STOP");
    std::thread::sleep(Duration::from_secs(15));
    signal(&pid, "-CONT");
    writer.join().unwrap();
    assert_exact(
        &stage,
        &cluster,
        &want,
        "after the instance lost its session",
    );
    cluster.assert_alive(0, "after it lost its session");
}

/// Input partition 0 quiet for far longer than idle_timeout (3 s here) while
/// the others flow, then back: the others' windows close without it, it holds
/// nothing back while quiet, nothing it brings when back is late, and the
/// results are exact. (Records are written to partitions 1 to 3 by a hash of
/// their key, the same in every topic, so co-partitioning holds; partition 0
/// gets the records of the last third of the traffic only.)
#[test]
fn a_quiet_partition_neither_holds_back_nor_closes_the_windows_of_the_others() {
    let stage = Stage::new("quiet");
    let records: Vec<_> = Traffic::new(test_traffic(21)).take(90_000).collect();
    let back_at = records.len() * 2 / 3;
    let partition_of = |key: &str, i: usize| -> Option<i32> {
        let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let p = (h % PARTITIONS as u64) as i32;
        (p != 0 || i >= back_at).then_some(p)
    };
    let sent: Vec<(i32, &gmv::gen::traffic::GeneratedRecord)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((partition_of(r.key.as_deref()?, i)?, r)))
        .collect();
    let good: Vec<(String, Value)> = sent
        .iter()
        .filter(|(_, r)| !matches!(r.kind, RecordKind::Bad(_)))
        .map(|(_, r)| {
            (
                r.topic.label().to_string(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect();
    let want = reference(&good);
    let mut cluster = Instances::new(&stage, &["a"]);
    cluster.start(0);
    cluster.wait_until_every_task_is_owned();
    let p = stage.producer();
    let started = Instant::now();
    for (i, (partition, r)) in sent.iter().enumerate() {
        let mut record = rdkafka::producer::BaseRecord::to(stage.input(r.topic))
            .key(r.key.as_deref().unwrap())
            .payload(&r.value[..])
            .partition(*partition);
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
        // 6,000 records/s: the quiet stretch lasts about 10 s of wall time.
        if let Some(ahead) =
            Duration::from_micros(i as u64 * 1_000_000 / 6_000).checked_sub(started.elapsed())
        {
            std::thread::sleep(ahead);
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    assert_exact(&stage, &cluster, &want, "with a quiet partition");
    let metrics = http_get(cluster.ports[0], "/metrics");
    assert_eq!(
        metric_sum(&metrics, "gmv_late_partials_total"),
        0.0,
        "no partial sum reached a closed bucket"
    );
    cluster.assert_alive(0, "with a quiet partition");
}

/// A restore that cannot finish: a transaction left open on a changelog
/// partition holds its last stable offset back (for that producer's 15-minute
/// transaction timeout), and the restore waits for it. `/healthz` stays
/// healthy past its 30 s stall limit while the restore waits, and SIGTERM
/// stops the process promptly, exit 0.
#[test]
fn a_long_restore_stays_healthy_and_sigterm_stops_it_promptly() {
    use rdkafka::producer::{BaseRecord, ThreadedProducer};
    let stage = Stage::new("longrestore");
    let open: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &stage.brokers)
        .set("transactional.id", "e2e-longrestore-open")
        .set("transaction.timeout.ms", "900000")
        .create()
        .unwrap();
    open.init_transactions(Duration::from_secs(30)).unwrap();
    open.begin_transaction().unwrap();
    open.send(
        BaseRecord::to(&stage.cfg.topics.attribution_changelog)
            .partition(0)
            .key("left-open")
            .payload("x"),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    open.flush(Duration::from_secs(30)).unwrap();

    let job = start_job(&stage.config);
    wait_for_port(
        stage.metrics_port,
        Duration::from_secs(30),
        "the job's metrics server",
    );
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        let health = http_get(stage.metrics_port, "/healthz");
        assert!(
            health.starts_with("ok"),
            "/healthz during the restore: {health}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let metrics = http_get(stage.metrics_port, "/metrics");
    assert!(
        metric_sum(&metrics, "gmv_rebalances_total") >= 1.0,
        "the restore began"
    );
    assert_eq!(metric_sum(&metrics, "gmv_tasks"), 0.0, "and has not ended");
    let started = Instant::now();
    let mut job = job;
    signal(&job.0.id().to_string(), "-TERM");
    let status = loop {
        if let Some(status) = job.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGTERM during a restore did not stop the process within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "stopped during a restore: {status}");
    open.abort_transaction(Duration::from_secs(30)).unwrap();
}

/// Every instance's big screen shows the whole sale, not its share: two
/// instances split the work; once every result is final, each one's
/// `/api/summary` equals the `read_committed` `gmv-totals` records at the
/// same watermark (overall figures, and every top brand's GMV).
#[test]
fn every_instance_screen_shows_the_whole_sale_as_gmv_totals_says() {
    let (seed, _) = chaos_rng("screen");
    let stage = Stage::new("screen");
    let (want, writer) = traffic_in_background(&stage, seed, 60_000, 8_000);
    let mut cluster = Instances::new(&stage, &["a", "b"]);
    cluster.start(0);
    cluster.start(1);
    writer.join().unwrap();
    let out = assert_exact(&stage, &cluster, &want, "with two instances");
    let all = &out.totals["total|all"];
    for i in 0..2 {
        // The screen publishes its view at least once a second.
        let deadline = Instant::now() + Duration::from_secs(30);
        let view = loop {
            let body = http_get(cluster.ports[i], "/api/summary");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if v["watermark_ms"] == all["watermark_ms"] {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "instance {i}'s screen never reached watermark {}: {body}",
                all["watermark_ms"]
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        for f in ["gmv_fen", "refund_fen"] {
            assert_eq!(
                view[f].as_str(),
                Some(all[f].to_string().as_str()),
                "instance {i}: {f}"
            );
        }
        for f in [
            "paid_orders",
            "placed_orders",
            "shipped_orders",
            "delivered_orders",
        ] {
            assert_eq!(view[f], all[f], "instance {i}: {f}");
        }
        let brands = view["top_brands"].as_array().unwrap();
        assert!(brands.len() > 3, "instance {i}: {brands:?}");
        for b in brands.iter().filter(|b| b["others"] != true) {
            let key = format!("brand|{}", b["key"].as_str().unwrap());
            assert_eq!(
                b["gmv_fen"].as_str(),
                Some(out.totals[&key]["gmv_fen"].to_string().as_str()),
                "instance {i}: {key}"
            );
        }
        let best = out
            .totals
            .iter()
            .filter(|(k, _)| k.starts_with("brand|"))
            .map(|(_, v)| v["gmv_fen"].as_i64().unwrap())
            .max()
            .unwrap();
        assert_eq!(
            brands[0]["gmv_fen"].as_str(),
            Some(best.to_string().as_str())
        );
    }
}

/// A changelog topic's record limit lowered to 45,000 bytes while the job
/// runs (it accepted `kafka.max_record_bytes`, 1,000,000, at start): at
/// 20,000 records/s one commit's changes take more than that, so the broker
/// refuses them; the job cuts its records and batches smaller by itself
/// (`gmv_record_limit_bytes` halves until they fit), keeps running, and the
/// results stay exact.
#[test]
fn a_record_limit_lowered_at_runtime_makes_the_job_cut_its_records_smaller() {
    let (seed, _) = chaos_rng("record limit");
    let stage = Stage::new("recordlimit");
    let (want, writer) = traffic_in_background(&stage, seed, 200_000, 20_000);
    let mut cluster = Instances::new(&stage, &["a"]);
    cluster.start(0);
    cluster.wait_until_every_task_is_owned();
    std::thread::sleep(Duration::from_secs(2));
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &stage.brokers)
            .create()
            .unwrap();
    let topic = &stage.cfg.topics.attribution_changelog;
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic))
        .set("max.message.bytes", "45000")
        .set("cleanup.policy", "compact");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let altered = rt
        .block_on(admin.alter_configs([&alter], &rdkafka::admin::AdminOptions::new()))
        .unwrap();
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    println!("{topic}: max.message.bytes lowered to 45000");
    writer.join().unwrap();
    assert_exact(&stage, &cluster, &want, "after a record limit was lowered");
    let limit = metric_sum(
        &http_get(cluster.ports[0], "/metrics"),
        "gmv_record_limit_bytes",
    );
    assert!(
        limit <= 62_500.0,
        "the job did not cut its records enough (gmv_record_limit_bytes {limit})"
    );
    cluster.assert_alive(0, "after a record limit was lowered");
}
