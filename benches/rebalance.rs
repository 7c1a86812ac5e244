//! The pause a rebalance causes: one instance runs with traffic flowing at a
//! steady rate; a second instance is added, and later stopped, several times.
//! A `read_committed` reader of `gmv-totals` notes when each `total|all` update
//! arrives; the pause of an event is the longest gap between two updates in the
//! 30 s after it, against the longest gap in the 10 s before it (the steady state).
//!
//! `cargo bench --bench rebalance` (ROUNDS, default 5; RATE events/s, default 20,000).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gmv::config::Config;
use gmv::gen::traffic::{Traffic, TrafficConfig};
use rdkafka::message::Message;

#[path = "../tests/support/mod.rs"]
mod support;
use support::broker::{bench_setup, env_or, free_port, totals_tail, wait_for_port, Proc};

const PARTITIONS: i32 = 8;
/// How long after an event its pause is looked for, and the quiet time between events.
const SETTLE: Duration = Duration::from_secs(30);

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let rate = env_or("RATE", 20_000);
    let (_broker, brokers, dir, config) = bench_setup("rebalance", PARTITIONS);
    let job_cfg = Config::load(Some(&config), &Default::default()).unwrap();

    let start = |id: &str| {
        let port = free_port();
        let p = Proc(
            Command::new(env!("CARGO_BIN_EXE_gmv"))
                .args(["run", "--config"])
                .arg(&config)
                .args(["--instance-id", id])
                .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
                .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_for_port(
            port,
            Duration::from_secs(60),
            "an instance's metrics server",
        );
        p
    };
    let _a = start("a");

    // Traffic at a steady rate for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, brokers) = (stop.clone(), brokers.clone());
        std::thread::spawn(move || {
            let mut cfg = Config::default();
            cfg.kafka.brokers = brokers;
            let producer = gmv::gen::writer::producer(&cfg).unwrap();
            let stream = Traffic::new(TrafficConfig {
                seed: 11,
                orders_per_sec: 5_000.0,
                ..TrafficConfig::default()
            });
            let started = Instant::now();
            for (i, r) in stream.enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                gmv::gen::writer::send(&producer, r.topic.label(), r.key.as_deref(), &r.value)
                    .unwrap();
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        })
    };

    // When each `total|all` update became visible to a read_committed reader.
    let updates: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let reader = {
        let (stop, updates, brokers) = (stop.clone(), updates.clone(), brokers.clone());
        let topic = job_cfg.topics.gmv_totals.clone();
        std::thread::spawn(move || {
            let c = totals_tail(&brokers, &topic, "rebalance-reader");
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                    if m.key() == Some(b"total|all") {
                        updates.lock().unwrap().push(Instant::now());
                    }
                }
            }
        })
    };

    std::thread::sleep(SETTLE);
    let mut events = Vec::new();
    for _ in 0..rounds {
        let b = start("b");
        events.push(("added", Instant::now()));
        std::thread::sleep(SETTLE);
        // SIGTERM: b commits and leaves the group.
        Command::new("kill")
            .args(["-TERM", &b.0.id().to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        events.push(("stopped", Instant::now()));
        std::thread::sleep(SETTLE);
        drop(b);
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    reader.join().unwrap();

    let updates = updates.lock().unwrap();
    let longest_gap = |from: Instant, to: Instant| -> Duration {
        let inside: Vec<Instant> = updates
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= to)
            .collect();
        // From the event to the first update, between updates, and from the last one to the end.
        std::iter::once(from)
            .chain(inside)
            .chain(std::iter::once(to))
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    };
    println!(
        "{PARTITIONS} partitions, {rate} events/s, commit_interval {} ms, emit_interval {} ms, {} updates of total|all",
        job_cfg.kafka.commit_interval_ms,
        job_cfg.time.emit_interval_ms,
        updates.len()
    );
    println!("| event | longest gap before (10 s) ms | pause after (longest gap in 30 s) ms |");
    println!("|---|---|---|");
    for (what, at) in events {
        println!(
            "| instance {what} | {} | {} |",
            longest_gap(at - Duration::from_secs(10), at).as_millis(),
            longest_gap(at, at + SETTLE - Duration::from_secs(1)).as_millis()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
