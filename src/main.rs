//! `gmv`: the command line. Parses flags, loads the config, and hands over to
//! the library (`app` for the job, `gen` for traffic, `demo` for the embedded demo).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gmv::app::Handles;
use gmv::config::{Config, Overrides};
use gmv::gen::traffic::TrafficConfig;
use gmv::gen::writer::WriteOptions;

#[derive(Parser)]
#[command(
    name = "gmv",
    version,
    about = "Exact, event-time Singles Day GMV analytics on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the job: read orders, payments, deliveries; write the output topics; serve /metrics.
    Run(Common),
    /// Create the input and output topics defined in topics/.
    Topics {
        #[command(flatten)]
        common: Common,
        /// Partitions of each input topic (the same for all three).
        #[arg(long)]
        partitions: Option<i32>,
        /// Partitions of the repartition topic, one aggregation task each
        /// (default: as `--partitions`, else topics/repartition.toml's).
        #[arg(long)]
        aggregation_partitions: Option<i32>,
        #[arg(long)]
        replication_factor: Option<i32>,
    },
    /// Write realistic Singles Day traffic to the input topics.
    Generate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Records per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration_secs: Option<u64>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// One command, no services: an embedded broker, the generator, the job and a live summary.
    Demo(gmv::demo::DemoArgs),
    /// The big screen alone: reads the job's output topics and serves the page
    /// (`/`, `/events`, `/api/summary`) at metrics.listen; no job runs in it.
    Screen(Common),
}

#[derive(Args, Clone)]
struct Common {
    /// TOML config file (every key is optional; see docs/config.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Consumer group (overrides kafka.group_id).
    #[arg(long)]
    group_id: Option<String>,
    /// Address for /metrics and /healthz (overrides metrics.listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Stable name of this instance, unique among running ones (overrides kafka.instance_id);
    /// a restart with the same id fences the old process.
    #[arg(long)]
    instance_id: Option<String>,
}

impl Common {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load(
            self.config.as_deref(),
            &Overrides {
                brokers: self.brokers.clone(),
                group_id: self.group_id.clone(),
                metrics_listen: self.metrics_listen.clone(),
                instance_id: self.instance_id.clone(),
            },
        )
    }
}

#[derive(Args, Clone)]
struct TrafficArgs {
    /// Seed: the same seed writes the same records.
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Orders per second of event time before the midnight surge shape.
    #[arg(long)]
    orders_per_sec: Option<f64>,
    /// Share of records re-sent as duplicates.
    #[arg(long)]
    duplicate_share: Option<f64>,
    /// Share of bad records.
    #[arg(long)]
    bad_share: Option<f64>,
    /// Bound of the disorder, ms (keep it under the job's max_out_of_orderness).
    #[arg(long)]
    disorder_ms: Option<i64>,
}

impl TrafficArgs {
    fn config(&self) -> TrafficConfig {
        let mut t = TrafficConfig {
            seed: self.seed,
            ..TrafficConfig::default()
        };
        if let Some(v) = self.orders_per_sec {
            t.orders_per_sec = v;
        }
        if let Some(v) = self.duplicate_share {
            t.duplicate_share = v;
        }
        if let Some(v) = self.bad_share {
            t.bad_share = v;
        }
        if let Some(v) = self.disorder_ms {
            t.disorder_ms = v;
        }
        t
    }
}

fn main() {
    gmv::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(common) => {
            let cfg = common.load()?;
            run_job(&cfg)
        }
        Command::Topics {
            common,
            partitions,
            aggregation_partitions,
            replication_factor,
        } => {
            let cfg = common.load()?;
            let counts = gmv::io::topics::Counts {
                input: partitions,
                aggregation: aggregation_partitions.or(partitions),
            };
            for line in gmv::io::topics::create_all(&cfg, counts, replication_factor)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Generate {
            common,
            traffic,
            rate,
            count,
            duration_secs,
            quiet,
        } => {
            let cfg = common.load()?;
            let handles = Handles::new();
            gmv::app::stop_on_signal(handles.shutdown.clone())?;
            let opts = WriteOptions {
                rate,
                count,
                duration: duration_secs.map(Duration::from_secs),
                progress: !quiet,
            };
            let report = gmv::gen::writer::write(&cfg, traffic.config(), &opts, &handles.shutdown)?;
            println!(
                "wrote {} records ({} duplicates, {} bad), {} bytes",
                report.records, report.duplicates, report.bad, report.bytes
            );
            Ok(())
        }
        Command::Demo(args) => gmv::demo::run(args),
        Command::Screen(common) => {
            let cfg = common.load()?;
            let handles = Handles::new();
            gmv::app::stop_on_signal(handles.shutdown.clone())?;
            let screen = gmv::screen::reader::start(
                &cfg,
                handles.shutdown.clone(),
                Some(handles.heartbeat_ms.clone()),
            )?;
            let runtime = small_runtime()?;
            let addr = cfg.metrics.listen.parse().context("metrics.listen")?;
            let addr = runtime.block_on(gmv::telemetry::http::serve(
                addr,
                handles.http_view(Some(screen)),
            ))?;
            println!("the big screen: http://{addr}/");
            while !handles.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
    }
}

/// The HTTP server's runtime: one worker, apart from the loop.
fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `gmv run`: metrics server and signal handling on a small runtime, the loop on this thread.
fn run_job(cfg: &Config) -> anyhow::Result<()> {
    let handles = Handles::new();
    // From the start: the first calls to the broker are made before the loop.
    if cfg.metrics.exit_after_silent_ms > 0 {
        gmv::app::watchdog::start(
            handles.heartbeat_ms.clone(),
            handles.local_calls.clone(),
            handles.shutdown.clone(),
            cfg.metrics.exit_after_silent_ms,
        );
    }
    let runtime = small_runtime()?;
    let addr = cfg.metrics.listen.parse().context("metrics.listen")?;
    let screen = cfg
        .metrics
        .screen
        .then(|| gmv::screen::reader::start(cfg, handles.shutdown.clone(), None))
        .transpose()?;
    let addr = runtime.block_on(gmv::telemetry::http::serve(addr, handles.http_view(screen)))?;
    tracing::info!(%addr, "serving /metrics, /healthz and the big screen at /");
    gmv::app::stop_on_signal(handles.shutdown.clone())?;
    gmv::app::run(cfg, &handles, gmv::app::Broker::Kafka)
}
