//! `gmv demo`: an embedded Kafka-protocol broker (librdkafka's mock cluster),
//! the traffic generator and the job, with a live summary read back from the
//! output topics, as a dashboard consumer would.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;

use crate::app::Handles;
use crate::config::Config;
use crate::gen::traffic::TrafficConfig;
use crate::gen::writer::WriteOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this Kafka cluster instead of the embedded broker.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Input records per second written by the generator.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Partitions of each input topic, and of the repartition topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Address for the job's /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub metrics_listen: String,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1111)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut cfg = Config::default();
    cfg.kafka.group_id = "gmv-demo".into();
    cfg.metrics.listen = args.metrics_listen.clone();
    // Demo thresholds and lateness are smaller than production ones so windows close and
    // milestones fire within a minute or two.
    cfg.time.allowed_lateness_ms = 10_000;
    cfg.time.join_timeout_ms = 10_000;
    cfg.milestones.brand_fen = vec![100_000_000];
    cfg.milestones.channel_fen = vec![100_000_000];
    cfg.milestones.total_every_fen = 1_000_000_000;
    cfg.validate()
        .map_err(|p| anyhow::anyhow!("{}", p.join("; ")))?;

    let _cluster; // The embedded broker lives as long as the demo.
    let broker = match &args.brokers {
        Some(_) => crate::app::Broker::Kafka,
        None => crate::app::Broker::Embedded,
    };
    // The aggregation stage gets as many tasks as the attribution stage.
    let counts = crate::io::topics::Counts {
        input: Some(args.partitions),
        aggregation: Some(args.partitions),
    };
    match &args.brokers {
        Some(b) => {
            cfg.kafka.brokers = b.clone();
            for line in crate::io::topics::create_all(&cfg, counts, None)? {
                println!("{line}");
            }
        }
        None => {
            let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
            for def in crate::io::topics::definitions(&cfg) {
                let partitions = def.partitions_with(counts);
                cluster
                    .create_topic(&def.name, partitions, 1)
                    .with_context(|| format!("creating topic {}", def.name))?;
            }
            cfg.kafka.brokers = cluster.bootstrap_servers();
            _cluster = cluster;
        }
    }
    let handles = Handles::new();
    let flag = handles.shutdown.clone();
    crate::app::stop_on_signal(flag.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let screen = crate::screen::reader::start(&cfg, flag.clone(), None)?;
    let shared = handles.http_view(Some(screen.clone()));
    let addr = runtime.block_on(crate::telemetry::http::serve(
        cfg.metrics.listen.parse()?,
        shared,
    ))?;
    println!(
        "the big screen: http://{addr}/   metrics: http://{addr}/metrics   broker: {}   (Ctrl-C to stop)",
        cfg.kafka.brokers
    );

    let job = {
        let (cfg, handles) = (cfg.clone(), handles.clone());
        std::thread::Builder::new()
            .name("job".into())
            .spawn(move || crate::app::run(&cfg, &handles, broker))?
    };
    if args.brokers.is_none() {
        // The embedded broker keeps only the last 5 MB of each partition
        // (librdkafka's mock cluster). From 30,000 – 40,000 records/s here,
        // records written before the job read its partitions were gone by
        // then, and the consumer, behind the log's start again and again,
        // never read a record: so the traffic starts once the job owns its
        // tasks, and is read as it is written.
        wait_for_tasks(&handles, &job, &flag);
    }
    let generator = {
        let cfg = cfg.clone();
        let flag = flag.clone();
        // Event time runs about as fast as wall time: ~3 records per order.
        let traffic = TrafficConfig {
            seed: args.seed,
            orders_per_sec: args.rate as f64 / 3.0,
            follow_up_time: 0.05,
            // The sale starts now: the screen's watermark trails the wall clock by seconds.
            start_ms: crate::telemetry::http::now_ms(),
            ..TrafficConfig::default()
        };
        let opts = WriteOptions {
            rate: Some(args.rate),
            count: None,
            duration: None,
            progress: false,
        };
        std::thread::Builder::new()
            .name("generator".into())
            .spawn(move || crate::gen::writer::write(&cfg, traffic, &opts, &flag))?
    };

    let summary = show_summary(&screen, &args, &flag);
    flag.store(true, Ordering::Relaxed);
    let gen_result = generator
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))?;
    let job_result = job
        .join()
        .map_err(|_| anyhow::anyhow!("job thread panicked"))?;
    summary.and(gen_result.map(|_| ())).and(job_result)
}

/// Returns once the job owns attribution tasks, has ended, or is stopped.
fn wait_for_tasks(
    handles: &Handles,
    job: &std::thread::JoinHandle<anyhow::Result<()>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) && !job.is_finished() {
        if handles
            .metrics
            .lock()
            .expect("metrics lock")
            .attribution_tasks()
            > 0
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints the big screen's view (`screen/`, read back from the output topics) once a second.
fn show_summary(
    screen: &crate::screen::reader::Feed,
    args: &DemoArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && args
            .seconds
            .is_none_or(|s| started.elapsed() < Duration::from_secs(s))
    {
        std::thread::sleep(Duration::from_secs(1));
        let view: serde_json::Value = serde_json::from_str(&screen.borrow())?;
        print_screen(&view, started.elapsed(), tty);
    }
    Ok(())
}

/// A money field of the view (a string of fen), or a count.
fn num(v: &serde_json::Value, field: &str) -> i128 {
    match &v[field] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        n => n.as_i64().unwrap_or(0) as i128,
    }
}

/// Formats fen as `¥1,234,567.89` without floats.
pub fn cny(fen: i128) -> String {
    let yuan = (fen / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in yuan.chars().enumerate() {
        if i > 0 && (yuan.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("¥{grouped}.{:02}", fen % 100)
}

fn print_screen(view: &serde_json::Value, elapsed: Duration, tty: bool) {
    let top = |list: &str| {
        view[list]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .take(5)
                    .map(|r| {
                        format!(
                            "{} {}",
                            r["key"].as_str().unwrap_or("?"),
                            cny(num(r, "gmv_fen"))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("  |  ")
            })
            .unwrap_or_default()
    };
    let mut s = String::new();
    if tty {
        s.push_str("\x1b[2J\x1b[H");
    }
    s.push_str(&format!(
        "[{:>4}s] GMV {}   refunds {}   paid {}   placed {}   orders/s {}   shipped {}   delivered {}   watermark {}\n",
        elapsed.as_secs(),
        cny(num(view, "gmv_fen")),
        cny(num(view, "refund_fen")),
        num(view, "paid_orders"),
        num(view, "placed_orders"),
        num(view, "orders_per_sec"),
        num(view, "shipped_orders"),
        num(view, "delivered_orders"),
        event_time(num(view, "watermark_ms")),
    ));
    let milestones = view["milestones"].as_array().cloned().unwrap_or_default();
    if tty {
        s.push_str(&format!(
            "  top brands:    {}\n  top channels:  {}\n  countries:     {}\n",
            top("top_brands"),
            top("top_channels"),
            top("countries")
        ));
        s.push_str("  latest milestones:\n");
        for m in milestones.iter().take(5) {
            s.push_str(&format!(
                "    {} {} reached {} (event time {})\n",
                m["dim"].as_str().unwrap_or("?"),
                m["key"].as_str().unwrap_or("?"),
                cny(num(m, "threshold_fen")),
                event_time(num(m, "crossed_at_ms"))
            ));
        }
    } else if let Some(m) = milestones.first() {
        s.push_str(&format!(
            "  latest milestone: {} {}\n",
            m["dim"].as_str().unwrap_or("?"),
            m["key"].as_str().unwrap_or("?")
        ));
    }
    print!("{s}");
}

/// An event time (ms since the epoch) as UTC, to the second; "none yet" before
/// the job has one (a watermark waits for every input partition).
fn event_time(ms: i128) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        _ => "none yet".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cny_groups_thousands_exactly() {
        assert_eq!(super::cny(0), "¥0.00");
        assert_eq!(super::cny(5), "¥0.05");
        assert_eq!(super::cny(123_456_789), "¥1,234,567.89");
        assert_eq!(super::cny(100_000), "¥1,000.00");
    }

    #[test]
    fn event_times_read_as_utc() {
        assert_eq!(super::event_time(1_762_790_401_772), "2025-11-10T16:00:01Z");
        assert_eq!(super::event_time(0), "none yet");
        assert_eq!(super::event_time(i64::MIN as i128), "none yet");
    }
}
