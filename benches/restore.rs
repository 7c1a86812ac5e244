//! Restore from the changelogs: the job builds a state of `KEYS` orders (one
//! changelog entry each), stops, and starts again; this measures how long the
//! restart takes to restore that state, against a baseline of a plain consumer
//! reading the same changelog partitions in the same run.
//!
//! `cargo bench --bench restore` (KEYS=n to change; default 1,000,000).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmv::config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

#[path = "../tests/support/mod.rs"]
mod support;
use support::broker::{
    bench_broker_root, bench_config, create_topics, http_get, metric_sum, wait_for_port, Kafka,
};

const PARTITIONS: i32 = 4;

fn main() {
    let keys: usize = std::env::var("KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let broker = Kafka::start_in(&bench_broker_root());
    let brokers = broker.bootstrap();
    let dir = std::env::temp_dir().join(format!("gmv-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, metrics_port) = bench_config(&dir, &brokers, "gmv-restore");
    create_topics(&config, PARTITIONS);

    // Orders only: each is one entry of attribution state.
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    let producer = gmv::gen::writer::producer(&cfg).unwrap();
    let t0 = 1_762_790_400_000i64;
    for i in 0..keys {
        let v = format!(
            r#"{{"order_id":"o{i:09}","user_id":"u{}","brand_id":"b{}","channel_id":null,"country":"CN","device":"mobile","currency":"CNY","amount_minor":100,"ts_ms":{}}}"#,
            i % 100_000,
            i % 500,
            t0 + (i as i64) / 100
        );
        gmv::gen::writer::send(&producer, "orders", Some(&format!("o{i:09}")), v.as_bytes())
            .unwrap();
    }
    gmv::gen::writer::finish(&producer).unwrap();
    println!("wrote {keys} orders");

    let gmv = env!("CARGO_BIN_EXE_gmv");
    let run = |log: &str| {
        Command::new(gmv)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut job = run("first.log");
    wait_for_port(metrics_port, Duration::from_secs(60), "the job's metrics");
    let orders = || {
        metric_sum(
            &http_get(metrics_port, "/metrics"),
            "gmv_state_entries{kind=\"orders\"}",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    while orders() < keys as f64 {
        assert!(Instant::now() < deadline, "the job did not build the state");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let a commit cover everything, then stop cleanly.
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    assert!(job.wait().unwrap().success());

    // Baseline: read the attribution changelog from the beginning with a plain consumer.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "restore-baseline")
        .set("fetch.wait.max.ms", "20")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("gmv-attribution-changelog", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let (started, mut last, mut records) = (Instant::now(), Instant::now(), 0u64);
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
            records += 1;
            last = Instant::now();
        }
    }
    let baseline = last.duration_since(started).as_secs_f64();
    drop(c);

    // The restart: time from process start until the state is back, and the restore itself (its log).
    let started = Instant::now();
    let mut job = run("second.log");
    wait_for_port(
        metrics_port,
        Duration::from_secs(60),
        "the restarted job's metrics",
    );
    while orders() < keys as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the restart did not restore the state"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_resume = started.elapsed().as_secs_f64();
    let read_again = metric_sum(&http_get(metrics_port, "/metrics"), "gmv_events_read_total");
    Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    job.wait().unwrap();
    let restore: f64 = BufReader::new(std::fs::File::open(dir.join("second.log")).unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("state restored"))
        .filter_map(|l| {
            l.split("seconds=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .next()
        .expect("the restarted job logs its restore");
    assert_eq!(
        read_again, 0.0,
        "the restart read input again instead of restoring"
    );
    println!("changelog records: {records}; state keys: {keys}");
    println!("baseline: plain read of the changelog   {baseline:8.2} s");
    println!(
        "restore (offsets, read to end, apply)  {restore:8.2} s   ratio {:.2}",
        restore / baseline
    );
    println!(
        "process start to state restored        {to_resume:8.2} s (includes joining the group)"
    );
    std::fs::remove_dir_all(&dir).ok();
}
