//! End to end through Apache Kafka (started by the bench), for each of several
//! commit intervals, in one run: the job's consumption rate against a consumer
//! that reads the same topics and does nothing; then, while traffic flows at a
//! steady rate into the running job, the latency from the produce of every
//! order to the first `read_committed` `gmv-totals` update that counts it, as
//! an HdrHistogram. Last, the job at the first interval once more without the
//! big screen's reader (`metrics.screen = false`), reading the same input:
//! what the reader costs the job.
//!
//! `cargo bench --bench end_to_end`. Environment: RECORDS (backlog read for
//! throughput, default 1,000,000), COMMIT_INTERVALS (ms, default
//! `100,250,1000`), LATENCY_RATE (events/s, default 100,000; 0 skips the
//! latency part, and the catch-ups then count an input partition idle after
//! 1 s instead of 10, so their watermark moves and windows close: see
//! `Run::config`), LATENCY_SECONDS (default 60), SCREEN (default 1; 0 runs the
//! jobs of every interval without the screen's reader), SCREEN_OFF_RUN
//! (default 1; 0 skips the run without the screen), WARMUP (default 3: at most
//! this many jobs, not counted, warm the broker's JIT, until it is quiet; 0
//! skips them), JOB_LOG (a path: the jobs' logs go to
//! `{path}.{index}-{interval}`), BASELINE_BIN (another build's `gmv`: each
//! interval then runs twice in a row, that build first in the 1st, 3rd, ...
//! pair and second in the others, so the two compare in one run on the same
//! broker and backlog).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gmv::config::Config;
use gmv::gen::traffic::{RecordKind, Traffic, TrafficConfig};
use rdkafka::message::Message;

#[path = "../tests/support/mod.rs"]
mod support;
use support::broker::{
    bench_config, bench_setup, create_topics, env_or, http_get, metric_sum, totals_tail,
    wait_for_port, Proc,
};

const PARTITIONS: i32 = 4;

/// A thread's `schedstat`: its time on a core and its time runnable but
/// waiting for one, in ns.
fn schedstat(path: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// CPU time, in ns, each thread of the process has used so far (its
/// [`schedstat`]), by thread id, with its name: the big screen's reader is
/// "screen".
fn threads_cpu_ns(pid: u32) -> std::collections::BTreeMap<u32, (String, u64)> {
    let mut by_tid = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_tid;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Some((ns, _)) = schedstat(&task.path().join("schedstat")) {
            by_tid.insert(tid, (comm.trim().to_string(), ns));
        }
    }
    by_tid
}

/// CPU time used between two [`threads_cpu_ns`] readings, by kind of thread:
/// the name with any trailing number dropped, so librdkafka's "rdk:broker1",
/// "rdk:broker2", ... add up as "rdk:broker". A thread started in between
/// counts from 0; one that ended in between is not counted.
fn cpu_by_thread_kind(
    first: &std::collections::BTreeMap<u32, (String, u64)>,
    last: &std::collections::BTreeMap<u32, (String, u64)>,
) -> std::collections::BTreeMap<String, u64> {
    let mut by_kind = std::collections::BTreeMap::new();
    for (tid, (name, ns)) in last {
        let before = first.get(tid).map_or(0, |(_, ns)| *ns);
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit());
        *by_kind.entry(kind.to_string()).or_insert(0) += ns.saturating_sub(before);
    }
    by_kind
}

/// What a process has used so far, in ns, from /proc (Linux).
#[derive(Clone, Copy)]
struct Cpu {
    /// Its main thread's (the job's loop) time on a core.
    thread: u64,
    /// Its main thread's time runnable but waiting for a core.
    thread_waited: u64,
    /// The whole process's, every thread that ever ran.
    process: u64,
}

/// `None` where there is no /proc.
fn cpu_ns(pid: u32) -> Option<Cpu> {
    let (thread, thread_waited) = schedstat(format!("/proc/{pid}/task/{pid}/schedstat").as_ref())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime, in clock ticks, follow the parenthesised command name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Ticks of USER_HZ, which Linux fixes at 100 for /proc.
    Some(Cpu {
        thread,
        thread_waited,
        process: ticks * 10_000_000,
    })
}

/// `by_kind`'s CPU times divided by `events`, largest first: "rdk:broker 574, ...".
fn by_kind_line(by_kind: &std::collections::BTreeMap<String, u64>, events: f64) -> String {
    let mut kinds: Vec<(u64, &str)> = by_kind
        .iter()
        .filter(|(_, ns)| **ns > 0)
        .map(|(k, ns)| (*ns, k.as_str()))
        .collect();
    kinds.sort_unstable_by(|x, y| y.cmp(x));
    let shown: Vec<String> = kinds
        .iter()
        .map(|&(ns, kind)| format!("{kind} {:.0}", ns as f64 / events))
        .collect();
    shown.join(", ")
}

/// The share of a JVM's CPU its JIT compiler threads took between two
/// [`threads_cpu_ns`] readings; `None` if none was read (no `/proc`). Per
/// thread, not totals: HotSpot starts and stops compiler threads as its
/// queue grows and shrinks, and a total taken after one stopped was smaller
/// than the one before.
fn compiler_share(
    first: &std::collections::BTreeMap<u32, (String, u64)>,
    last: &std::collections::BTreeMap<u32, (String, u64)>,
) -> Option<f64> {
    let by_kind = cpu_by_thread_kind(first, last);
    let all: u64 = by_kind.values().sum();
    // HotSpot names them "C1 CompilerThread0", "C2 CompilerThread0", ...
    let compiler: u64 = by_kind
        .iter()
        .filter(|(kind, _)| kind.contains("CompilerThre"))
        .map(|(_, ns)| ns)
        .sum();
    (all > 0).then(|| compiler as f64 / all as f64)
}

fn main() {
    let n = env_or("RECORDS", 1_000_000) as usize;
    let latency_rate = env_or("LATENCY_RATE", 100_000);
    let latency_secs = env_or("LATENCY_SECONDS", 60);
    let intervals: Vec<i64> = std::env::var("COMMIT_INTERVALS")
        .unwrap_or_else(|_| "100,250,1000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("COMMIT_INTERVALS: ms, comma-separated")
        })
        .collect();
    let first_interval = intervals[0];
    let (broker, brokers, dir, config) = bench_setup("bench", PARTITIONS);
    let broker_pid = broker.pid();

    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    let producer = gmv::gen::writer::producer(&cfg).unwrap();
    let traffic = TrafficConfig {
        seed: 3,
        orders_per_sec: 5_000.0,
        ..TrafficConfig::default()
    };
    let mut stream = Some(Traffic::new(traffic));
    let t = Instant::now();
    for r in stream.as_mut().unwrap().by_ref().take(n) {
        gmv::gen::writer::send(&producer, r.topic.label(), r.key.as_deref(), &r.value).unwrap();
    }
    gmv::gen::writer::finish(&producer).unwrap();
    println!("produced {n} records in {:.1} s", t.elapsed().as_secs_f64());

    let run_named = |interval, name| Run {
        dir: &dir,
        brokers: &brokers,
        broker_pid,
        interval,
        name,
        expected_orders: n,
        short_idle: latency_rate == 0,
    };
    // The broker's JIT compiles its transactional produce and read_committed
    // fetch paths while it serves the first jobs (with C1 alone, see
    // `tests/support/broker.rs`: 17% of its CPU over the first 4 M-record job,
    // 7% over the second, 2026-12-06). Warm-up jobs, not counted, run until
    // the compiler took under 5% of the broker's CPU over one, at most WARMUP
    // of them; the do-nothing consumer reads after them, on the same broker.
    for round in 0..env_or("WARMUP", 3) {
        let run = run_named(first_interval, format!("warm-up-{round}"));
        let before = threads_cpu_ns(broker_pid);
        let (_job, _, rate) = catch_up(&run, env_or("SCREEN", 1) == 1, None, n);
        let compiling = compiler_share(&before, &threads_cpu_ns(broker_pid));
        println!(
            "warm-up job {round} (not in the table): {rate:>10.0} records/s; the broker's JIT compiler took {:.0}% of its CPU",
            100.0 * compiling.unwrap_or(f64::NAN)
        );
        if compiling.is_some_and(|c| c < 0.05) {
            break;
        }
    }

    // Baseline: a consumer with the job's own settings that reads the same
    // topics and does nothing, on the broker the warm-up left.
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
    let (mut read, mut started, mut broker_first) = (0usize, None, None);
    let me = std::process::id();
    let mut threads_first = Default::default();
    while read < n {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if started.is_none() {
                started = Some(Instant::now());
                broker_first = cpu_ns(broker_pid);
                threads_first = threads_cpu_ns(me);
            }
            std::hint::black_box(m.payload());
            read += 1;
        }
    }
    let baseline = n as f64 / started.unwrap().elapsed().as_secs_f64();
    let broker_cpu = broker_first.zip(cpu_ns(broker_pid));
    let by_kind = cpu_by_thread_kind(&threads_first, &threads_cpu_ns(me));
    drop(c);
    println!("do-nothing consumer: {baseline:>10.0} records/s");
    if let Some((a, b)) = broker_cpu {
        println!(
            "broker CPU per event read: {:>4.0} ns (serving the do-nothing consumer)",
            (b.process - a.process) as f64 / n as f64
        );
    }
    // The client's own cost of reading, to set beside the job's threads: the
    // polling thread (this one) and librdkafka's.
    println!(
        "do-nothing consumer's CPU per event read by thread (ns): {}",
        by_kind_line(&by_kind, n as f64)
    );

    let mut table = Vec::new();
    let mut in_topics = n;
    let baseline_bin = std::env::var("BASELINE_BIN").ok();
    let runs: Vec<(i64, Option<&str>)> = intervals
        .into_iter()
        .enumerate()
        .flat_map(|(k, i)| match &baseline_bin {
            // Each job runs on a broker faster than the one before (its JIT
            // still compiles, see the warm-up): pairs alternate which build
            // goes first, so neither gains by its place.
            Some(b) if k % 2 == 0 => vec![(i, Some(b.as_str())), (i, None)],
            Some(b) => vec![(i, None), (i, Some(b.as_str()))],
            None => vec![(i, None)],
        })
        .collect();
    for (index, (interval, bin)) in runs.into_iter().enumerate() {
        let label = match bin {
            Some(_) => format!("{interval} ms, baseline build"),
            None => format!("{interval} ms"),
        };
        let run = run_named(interval, format!("{index}-{interval}"));
        let (job, metrics_port, rate) = catch_up(&run, env_or("SCREEN", 1) == 1, bin, in_topics);
        println!(
            "commit_interval {label}: gmv run {rate:>10.0} records/s, ratio {:.2}",
            rate / baseline
        );
        let mut row = format!("| {label} | {rate:.0} | {:.2} |", rate / baseline);
        if latency_rate > 0 {
            let records = (latency_rate * latency_secs) as usize;
            let (h, back) = latency(
                &brokers,
                &run.totals_topic(),
                metrics_port,
                &producer,
                stream.take().unwrap(),
                latency_rate,
                records,
            );
            stream = Some(back);
            in_topics += records;
            println!(
                "commit_interval {label}: produce → read_committed gmv-totals update at {latency_rate} events/s for {latency_secs} s ({} orders sampled): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
            row.push_str(&format!(
                " {} | {} | {} | {} | {} |",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
        drop(job);
        table.push(row);
    }
    // The same job without the big screen's reader (metrics.screen = false),
    // on the same input: what the reader costs the job.
    if env_or("SCREEN_OFF_RUN", 1) == 1 {
        let run = run_named(first_interval, format!("no-screen-{first_interval}"));
        let (_job, _, rate) = catch_up(&run, false, None, in_topics);
        println!(
            "commit_interval {first_interval} ms, no screen: gmv run {rate:>10.0} records/s, ratio {:.2}",
            rate / baseline
        );
        table.push(format!(
            "| {first_interval} ms, no screen | {rate:.0} | {:.2} |",
            rate / baseline
        ));
    }
    println!();
    println!("do-nothing consumer: {baseline:.0} records/s; {n} records, {PARTITIONS} partitions; latency at {latency_rate} events/s for {latency_secs} s");
    println!("| commit_interval | gmv run records/s | ratio to do-nothing | orders sampled | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Starts `run`'s job (see [`start_job`]) and measures its catch-up on the
/// `in_topics` records there are; the job, still running, its metrics port
/// and its rate.
fn catch_up(run: &Run, screen: bool, bin: Option<&str>, in_topics: usize) -> (Proc, u16, f64) {
    let (config, metrics_port) = run.config();
    let job = start_job(&config, &run.name, screen, bin);
    let rate = throughput(&job, run.broker_pid, metrics_port, in_topics);
    (job, metrics_port, rate)
}

/// Starts `gmv run` with `config`; `screen`: whether it serves the big screen
/// (a reader of the output topics on its own thread); `bin`: another build's
/// `gmv` (default: this build's). `JOB_LOG=path` keeps its log in `path.{name}`.
fn start_job(config: &std::path::Path, name: &str, screen: bool, bin: Option<&str>) -> Proc {
    Proc(
        Command::new(bin.unwrap_or(env!("CARGO_BIN_EXE_gmv")))
            .args(["run", "--config"])
            .arg(config)
            .env("GMV_METRICS__SCREEN", screen.to_string())
            .stderr(match std::env::var("JOB_LOG") {
                Ok(path) => Stdio::from(std::fs::File::create(format!("{path}.{name}")).unwrap()),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .unwrap(),
    )
}

/// One job of the run: its own group, and its own output and internal topics.
struct Run<'a> {
    dir: &'a std::path::Path,
    brokers: &'a str,
    /// The broker's CPU per event is printed beside the job's.
    broker_pid: u32,
    interval: i64,
    /// Names its group and topics: the run's index and interval (an interval may repeat).
    name: String,
    expected_orders: usize,
    /// `time.idle_timeout_ms` 1 s instead of the default (see `config`).
    short_idle: bool,
}

impl Run<'_> {
    fn totals_topic(&self) -> String {
        format!("gmv-totals-{}", self.name)
    }

    fn config(&self) -> (std::path::PathBuf, u16) {
        let dir = self.dir.join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        let (config, port) = bench_config(&dir, self.brokers, &format!("gmv-bench-{}", self.name));
        let (i, n) = (self.interval, &self.name);
        let mut toml = std::fs::read_to_string(&config).unwrap();
        toml = toml.replace("[kafka]\n", &format!("[kafka]\ncommit_interval_ms = {i}\n"));
        // Sized for the run as an operator sizes it for a sale (at most this many
        // orders); GMV_STATE__EXPECTED_ORDERS=0 measures the maps growing instead.
        // The catch-up runs event time about 15 times faster than the wall
        // clock, and the first minutes of a sale have no valid delivery: with
        // the default 10 s of wall time before those partitions count as idle,
        // the watermark would stay put through the whole run and no window
        // close. 1 s is about the default in event time. Not when live traffic
        // follows (`LATENCY_RATE`): the pause before it would then count as the
        // end of the sale, flush every window, and make that traffic late.
        if self.short_idle {
            toml.push_str("[time]\nidle_timeout_ms = 1000\n");
        }
        toml.push_str(&format!(
            "[state]\nexpected_orders = {}\n[topics]\ngmv_windows = \"gmv-windows-{n}\"\ngmv_totals = \"{}\"\nmilestones = \"milestones-{n}\"\ndead_letters = \"dead-letters-{n}\"\nrepartition = \"gmv-repartition-{n}\"\nattribution_changelog = \"gmv-attribution-changelog-{n}\"\naggregation_changelog = \"gmv-aggregation-changelog-{n}\"\n",
            self.expected_orders,
            self.totals_topic()
        ));
        std::fs::write(&config, toml).unwrap();
        create_topics(&config, PARTITIONS);
        (config, port)
    }
}

/// The job's rate over the `n` records in the input topics, from its first
/// record read to its last, by its own metrics.
fn throughput(job: &Proc, broker_pid: u32, metrics_port: u16, n: usize) -> f64 {
    let events_read = || metric_sum(&http_get(metrics_port, "/metrics"), "gmv_events_read_total");
    let deadline = Instant::now() + Duration::from_secs(600);
    wait_for_port(
        metrics_port,
        Duration::from_secs(60),
        "the job's metrics server",
    );
    let pid = job.0.id();
    let mut first = None;
    let mut cpu_first = None;
    let mut broker_first = None;
    let mut threads_first = Default::default();
    loop {
        assert!(
            Instant::now() < deadline,
            "the job did not read the input within 10 minutes"
        );
        // The counter moves every 250 ms (`METRICS_EVERY`); reading it more often
        // costs the job a render of every metric each time, on the shared cores.
        std::thread::sleep(Duration::from_millis(50));
        let count = events_read();
        if count > 0.0 && first.is_none() {
            first = Some((Instant::now(), count));
            cpu_first = cpu_ns(pid);
            broker_first = cpu_ns(broker_pid);
            threads_first = threads_cpu_ns(pid);
        }
        if count as usize >= n {
            break;
        }
    }
    let cpu_last = cpu_ns(pid);
    let broker_last = cpu_ns(broker_pid);
    let threads_last = threads_cpu_ns(pid);
    let (t0, c0) = first.unwrap();
    let run_secs = t0.elapsed().as_secs_f64();
    let job_rate = (n as f64 - c0) / run_secs;
    let metrics = http_get(metrics_port, "/metrics");
    let (commits, in_commit) = (
        metric_sum(&metrics, "gmv_commit_duration_seconds_count"),
        metric_sum(&metrics, "gmv_commit_duration_seconds_sum"),
    );
    let waited = metric_sum(&metrics, "gmv_commit_wait_microseconds_total") / 1e6;
    println!(
        "commits:             {commits:>10.0} taking {in_commit:.1} s in the background ({:.0}% of the {run_secs:.1} s run); the loop waited {waited:.1} s for them ({:.0}%)",
        100.0 * in_commit / run_secs,
        100.0 * waited / run_secs
    );
    if let (Some(a), Some(b)) = (cpu_first, cpu_last) {
        // Less noisy than the rate on a shared machine: the work the job does per event.
        let per = |x: u64, y: u64| (y - x) as f64 / (n as f64 - c0);
        println!(
            "CPU per event read:  {:>10.0} ns in the loop thread, {:.0} ns in the whole process",
            per(a.thread, b.thread),
            per(a.process, b.process)
        );
        // The broker shares the 2 cores: what serving the job costs it.
        if let (Some(x), Some(y)) = (broker_first, broker_last) {
            println!(
                "broker CPU per event read: {:>4.0} ns",
                per(x.process, y.process)
            );
        }
        let by_kind = cpu_by_thread_kind(&threads_first, &threads_last);
        // The big screen's reader runs on its own thread: what it costs, beside the loop.
        if let Some(&ns) = by_kind.get("screen") {
            println!(
                "screen reader:       {:>10.1} ns per event read, {:.2}% of the process's CPU",
                per(0, ns),
                100.0 * ns as f64 / (b.process - a.process) as f64
            );
        }
        // Where the process's CPU goes beside the loop (librdkafka's threads, the
        // commits'); threads that ended during the run (each commit's) are the rest.
        let listed: u64 = by_kind.values().sum();
        println!(
            "CPU per event read by thread (ns): {}, threads that ended {:.0}",
            by_kind_line(&by_kind, n as f64 - c0),
            per(0, (b.process - a.process).saturating_sub(listed))
        );
        // Below 100%: the loop waited the rest of the time, for a core (the broker
        // and librdkafka's threads share the two) or for input.
        let share = |x: u64, y: u64| (y - x) as f64 / 1e7 / run_secs;
        println!(
            "loop thread busy:    {:>10.0}% of the run, runnable but waiting for a core {:.0}%",
            share(a.thread, b.thread),
            share(a.thread_waited, b.thread_waited)
        );
    }
    job_rate
}

/// Produces `records` at `rate` events/s and matches every order with the first
/// `read_committed` update of `total|all` whose `placed_orders` counts it: one
/// sample per order, in ms. Returns them and the traffic stream, to go on with.
fn latency(
    brokers: &str,
    totals_topic: &str,
    metrics_port: u16,
    producer: &gmv::gen::writer::InputProducer,
    stream: Traffic,
    rate: u64,
    records: usize,
) -> (hdrhistogram::Histogram<u64>, Traffic) {
    // The backlog counted (the metric refreshes every 250 ms).
    std::thread::sleep(Duration::from_secs(3));
    let before = http_get(metrics_port, "/metrics");
    let placed_before = metric_sum(&before, "gmv_placed_orders_total") as u64;
    let reader = totals_tail(brokers, totals_topic, "latency-reader");
    let (order_sent, updates, stream) = std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let mut stream = stream;
            let started = Instant::now();
            let mut order_sent = Vec::new();
            for (i, r) in stream.by_ref().take(records).enumerate() {
                gmv::gen::writer::send(producer, r.topic.label(), r.key.as_deref(), &r.value)
                    .unwrap();
                if r.topic == gmv::model::InputTopic::Orders && r.kind == RecordKind::Good {
                    order_sent.push(Instant::now());
                }
                // Paced per millisecond, not per record: a sleep per record is
                // 100,000 wake-ups a second, CPU taken from the job and the
                // broker on the same two cores.
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    if ahead >= Duration::from_millis(1) {
                        std::thread::sleep(ahead);
                    }
                }
            }
            gmv::gen::writer::finish(producer).unwrap();
            (order_sent, stream)
        });
        let mut updates: Vec<(Instant, u64)> = Vec::new();
        let until = Instant::now() + Duration::from_secs(records as u64 / rate + 15);
        while Instant::now() < until {
            let Some(Ok(m)) = reader.poll(Duration::from_millis(20)) else {
                continue;
            };
            if m.key() != Some(b"total|all") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            updates.push((Instant::now(), v["placed_orders"].as_u64().unwrap()));
        }
        let (sent, stream) = sender.join().unwrap();
        (sent, updates, stream)
    });
    let after = http_get(metrics_port, "/metrics");
    let delta = |name| metric_sum(&after, name) - metric_sum(&before, name);
    let commits = delta("gmv_commit_duration_seconds_count");
    println!(
        "commits while traffic flowed: {commits:.0}, {:.0} ms each on average",
        1000.0 * delta("gmv_commit_duration_seconds_sum") / commits.max(1.0)
    );
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000, 3).unwrap();
    let mut next = 0;
    for (at, placed) in updates {
        let counted = (placed.saturating_sub(placed_before) as usize).min(order_sent.len());
        while next < counted {
            h.record(at.duration_since(order_sent[next]).as_millis().max(1) as u64)
                .unwrap();
            next += 1;
        }
    }
    (h, stream)
}
