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

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use gmv::gen::traffic::{RecordKind, Traffic};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::ClientConfig;
use serde_json::{json, Value};

mod support;
use support::broker::{free_port, http_get, metric_sum, wait_for_port, Proc};

// The shared harness, the job's processes and the independent reference computation, in tests/e2e/.
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/instances.rs"]
mod instances;
#[path = "e2e/reference.rs"]
mod reference;
// Faults of the broker and of the job's process, in tests/e2e/faults.rs.
#[path = "e2e/faults.rs"]
mod faults;
use harness::*;
use instances::*;
use reference::reference;

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
    gmv::gen::writer::finish(&producer).unwrap();
    let want = reference(&good);
    assert!(
        !want.milestones.is_empty(),
        "the data set should cross some milestones"
    );

    let mut job = start_job(&config);
    let out_reader = reader(&stage);
    let mut out = Outputs::default();
    wait_for(&out_reader, &mut out, &want, "first run");

    // Offsets follow results: once everything is final and acknowledged, the
    // job's committed offset of every input partition is its record count.
    let counts = input_counts(&stage);
    assert_eq!(
        counts.values().sum::<i64>() as usize,
        RECORDS + bad_cases.len()
    );
    wait_until_committed(&stage, "first run");
    // Every bad-input reason reached dead-letters, as many times as written, with its
    // coordinates. Waited for only now: the bad records come last in their partitions,
    // after the figures above can already be final, and their dead letters commit in the
    // same transaction as the offsets just checked.
    wait_for_dead_letters(&out_reader, &mut out, &bad_by_reason);

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
    gmv::gen::writer::finish(&producer).unwrap();
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
    gmv::gen::writer::finish(&producer).unwrap();
    let want = reference(&good);

    let mut job = start_job(&stage.config);
    let out_reader = reader(&stage);
    let mut out = Outputs::default();
    wait_for(&out_reader, &mut out, &want, "hostile input");
    wait_for_dead_letters(&out_reader, &mut out, &bad_by_reason);
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
    let admin = admin(&brokers);
    let topic = rdkafka::admin::NewTopic::new(
        "refuse.orders-three",
        3,
        rdkafka::admin::TopicReplication::Fixed(1),
    );
    // And an output topic that accepts records of 100,000 bytes only.
    let small = rdkafka::admin::NewTopic::new(
        "refuse.small-windows",
        1,
        rdkafka::admin::TopicReplication::Fixed(1),
    )
    .set("max.message.bytes", "100000");
    let created = block_on(admin.create_topics([&topic, &small], &AdminOptions::new())).unwrap();
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
    let heir = start_instance(&stage.config, "z", Some(heir_port), None);
    // The replacement owns every task once z's session has expired.
    let mut cluster = Instances::new(&stage, &["z"]);
    cluster.jobs[0] = Some(heir);
    cluster.ports[0] = heir_port;
    cluster.wait_until_every_task_is_owned();
    std::thread::sleep(Duration::from_secs(3));
    println!("resuming the paused instance");
    signal(&pid, "-CONT");
    let status = wait_for_exit(&mut zombie, Duration::from_secs(60), || {
        "the fenced instance still runs a minute after it was resumed".into()
    });
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
    let mut cluster = Instances::one_running(&stage);
    std::thread::sleep(Duration::from_secs(2));
    let topic = &stage.cfg.topics.attribution_changelog;
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic))
        .set("max.message.bytes", "45000")
        .set("cleanup.policy", "compact");
    let altered =
        block_on(admin(&stage.brokers).alter_configs([&alter], &AdminOptions::new())).unwrap();
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
