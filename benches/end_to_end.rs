//! End to end through Apache Kafka (started by the bench): the job's consumption rate
//! against a consumer that reads the same topics and does nothing, in the same
//! run; then the latency from produce to the output update, as an
//! HdrHistogram, while traffic flows at a steady rate into the running job.
//!
//! `cargo bench --bench end_to_end` (RECORDS=n, LATENCY_RATE=r/s to change;
//! LATENCY_RATE=0 skips the latency part).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmv::config::Config;
use gmv::gen::traffic::{RecordKind, Traffic, TrafficConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

#[path = "../tests/support/mod.rs"]
mod support;
use support::broker::{
    bench_config, create_topics, http_get, metric_sum, wait_for_port, Kafka, Proc,
};

const PARTITIONS: i32 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// CPU time used so far by a process's main thread (the job's loop) and by
/// the whole process, in ns, from /proc (Linux); `None` elsewhere.
fn cpu_ns(pid: u32) -> Option<(u64, u64)> {
    let thread = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime, in clock ticks, follow the parenthesised command name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Ticks of USER_HZ, which Linux fixes at 100 for /proc.
    Some((
        thread.split_whitespace().next()?.parse().ok()?,
        ticks * 10_000_000,
    ))
}

fn main() {
    let n = env_or("RECORDS", 1_000_000) as usize;
    let latency_rate = env_or("LATENCY_RATE", 20_000);
    let broker = Kafka::start();
    let brokers = broker.bootstrap();
    let dir = std::env::temp_dir().join(format!("gmv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, metrics_port) = bench_config(&dir, &brokers, "gmv-bench");
    // Sized for the run as an operator sizes it for a sale (at most `n` orders);
    // GMV_STATE__EXPECTED_ORDERS=0 measures the maps growing instead.
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!("[state]\nexpected_orders = {n}\n"));
    std::fs::write(&config, toml).unwrap();
    let gmv = env!("CARGO_BIN_EXE_gmv");
    create_topics(&config, PARTITIONS);

    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    let producer = gmv::gen::writer::producer(&cfg).unwrap();
    let traffic = TrafficConfig {
        seed: 3,
        orders_per_sec: 5_000.0,
        ..TrafficConfig::default()
    };
    let mut stream = Traffic::new(traffic);
    let t = Instant::now();
    for r in stream.by_ref().take(n) {
        gmv::gen::writer::send(&producer, r.topic.label(), r.key.as_deref(), &r.value).unwrap();
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    println!("produced {n} records in {:.1} s", t.elapsed().as_secs_f64());

    // Baseline: a consumer with the job's own settings that reads the same topics and does nothing.
    let mut job_cfg = Config::load(Some(&config), &Default::default()).unwrap();
    // One queue for all partitions here, where the job's 8 MB limit (per partition in
    // its lanes) would apply to everything and starve it: give it the deep single
    // queue the job had before it read through lanes.
    job_cfg.kafka.consumer_properties.extend([
        (
            "queued.max.messages.kbytes".to_string(),
            "262144".to_string(),
        ),
        ("queued.min.messages".to_string(), "1000000".to_string()),
    ]);
    let c = gmv::io::consumer::create(&job_cfg, None).unwrap();
    gmv::io::consumer::assign_from_beginning(&c, &job_cfg.topics.inputs(), PARTITIONS).unwrap();
    let (mut read, mut started) = (0usize, None);
    while read < n {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            std::hint::black_box(m.payload());
            read += 1;
        }
    }
    let baseline = n as f64 / started.unwrap().elapsed().as_secs_f64();
    drop(c);

    // The job: from its first record read to its last, by its own metrics.
    let _job = Proc(
        Command::new(gmv)
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let events_read = || metric_sum(&http_get(metrics_port, "/metrics"), "gmv_events_read_total");
    let deadline = Instant::now() + Duration::from_secs(600);
    wait_for_port(
        metrics_port,
        Duration::from_secs(60),
        "the job's metrics server",
    );
    let pid = _job.0.id();
    let mut first = None;
    let mut cpu_first = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the job did not read the input within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
        let count = events_read();
        if count > 0.0 && first.is_none() {
            first = Some((Instant::now(), count));
            cpu_first = cpu_ns(pid);
        }
        if count as usize >= n {
            break;
        }
    }
    let cpu_last = cpu_ns(pid);
    let (t0, c0) = first.unwrap();
    let run_secs = t0.elapsed().as_secs_f64();
    let job_rate = (n as f64 - c0) / run_secs;
    let metrics = http_get(metrics_port, "/metrics");
    let (commits, in_commit) = (
        metric_sum(&metrics, "gmv_commit_duration_seconds_count"),
        metric_sum(&metrics, "gmv_commit_duration_seconds_sum"),
    );
    println!("do-nothing consumer: {baseline:>10.0} records/s");
    println!("gmv run:             {job_rate:>10.0} records/s (its events-read metric, refreshed every 250 ms)");
    println!("ratio job/baseline:  {:>10.2}", job_rate / baseline);
    println!(
        "commits:             {commits:>10.0} taking {in_commit:.1} s of the loop's time ({:.0}% of the {run_secs:.1} s run)",
        100.0 * in_commit / run_secs
    );
    if let (Some(a), Some(b)) = (cpu_first, cpu_last) {
        // Less noisy than the rate on a shared machine: the work the job does per event.
        let per = |x: u64, y: u64| (y - x) as f64 / (n as f64 - c0);
        println!(
            "CPU per event read:  {:>10.0} ns in the loop thread, {:.0} ns in the whole process",
            per(a.0, b.0),
            per(a.1, b.1)
        );
        // Below 100%: the loop waited (for input, or for a commit) the rest of the time.
        println!(
            "loop thread busy:    {:>10.0}% of the run",
            (b.0 - a.0) as f64 / 1e7 / run_secs
        );
    }

    if latency_rate == 0 {
        std::fs::remove_dir_all(&dir).ok();
        return;
    }
    // Latency: produce at a steady rate; each `total|all` update shows how many
    // orders it includes, so it is matched with the send time of that order.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "latency-reader")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset("gmv-totals", p, Offset::End)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let placed_before = metric_sum(
        &http_get(metrics_port, "/metrics"),
        "gmv_placed_orders_total",
    ) as u64;
    let latency_records = (latency_rate * 20) as usize;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Instant>>();
    let sender = std::thread::spawn(move || {
        let started = Instant::now();
        let mut order_sent = Vec::new();
        for (i, r) in stream.take(latency_records).enumerate() {
            gmv::gen::writer::send(&producer, r.topic.label(), r.key.as_deref(), &r.value).unwrap();
            if r.topic == gmv::model::InputTopic::Orders && r.kind == RecordKind::Good {
                order_sent.push(Instant::now());
            }
            let due = Duration::from_secs_f64(i as f64 / latency_rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        tx.send(order_sent).unwrap();
    });
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(latency_records as u64 / latency_rate + 10);
    while Instant::now() < until {
        let Some(Ok(m)) = reader.poll(Duration::from_millis(20)) else {
            continue;
        };
        if m.key() != Some(b"total|all") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        samples.push((Instant::now(), v["placed_orders"].as_u64().unwrap()));
    }
    sender.join().unwrap();
    let sent = rx.recv().unwrap();
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000, 3).unwrap();
    for (at, placed) in samples {
        let k = placed.saturating_sub(placed_before) as usize;
        if k == 0 || k > sent.len() {
            continue;
        }
        h.record(at.duration_since(sent[k - 1]).as_millis().max(1) as u64)
            .unwrap();
    }
    println!(
        "produce → gmv-totals update at {latency_rate} records/s ({} samples, commit_interval {} ms, emit_interval {} ms): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        h.len(),
        job_cfg.kafka.commit_interval_ms,
        job_cfg.time.emit_interval_ms,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    std::fs::remove_dir_all(&dir).ok();
}
