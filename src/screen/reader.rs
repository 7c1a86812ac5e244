//! The screen's reader: its own thread and Kafka client, so the page and its
//! stream never make the processing loop wait (what the client costs the
//! process's CPU: docs/performance.md, section 00). It reads `gmv-totals`,
//! `gmv-windows` and `milestones` from the beginning with `read_committed` (the
//! compacted upsert topics are the current results), then follows them, and
//! publishes the view as JSON at most once per `emit_interval` and at least
//! once a second (the wall clock moves: lag, stall).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::view::{Screen, Source};
use crate::config::Config;
use crate::io::topics;
use crate::telemetry::http::now_ms;

/// The latest view as JSON, for `/api/summary` and `/events`.
pub type Feed = watch::Receiver<Arc<String>>;

/// Starts the reader; it runs until `stop` is set. Fails at once when the
/// output topics cannot be found. `heartbeat`: set at every turn when the
/// reader is the process's main work (`gmv screen`, for `/healthz`).
pub fn start(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    heartbeat: Option<Arc<AtomicI64>>,
) -> anyhow::Result<Feed> {
    let reader: BaseConsumer = crate::io::client_config(
        &cfg.kafka,
        &[
            // Its own group: it never joins the job's or commits.
            ("group.id", &format!("{}-screen", cfg.kafka.group_id)),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            // Few, large fetches: the view is published every emit interval at
            // most, and a fetch costs the brokers the same whatever it carries.
            ("fetch.wait.max.ms", "100"),
            ("fetch.min.bytes", "262144"),
        ],
        &cfg.kafka.consumer_properties,
    )
    .create()
    .context("creating the screen's reader")?;
    let t = &cfg.topics;
    let sources = [
        (&t.gmv_totals, Source::Totals),
        (&t.gmv_windows, Source::Windows),
        (&t.milestones, Source::Milestones),
    ];
    let mut tpl = TopicPartitionList::new();
    for (name, _) in &sources {
        for p in 0..topics::partition_count(&reader, name)? {
            tpl.add_partition_offset(name, p, Offset::Beginning)?;
        }
    }
    reader.assign(&tpl).context("assigning the output topics")?;
    let names: Vec<(String, Source)> = sources.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let every = Duration::from_millis(cfg.time.emit_interval_ms.max(1) as u64);
    let mut screen = Screen::default();
    let (tx, rx) = watch::channel(Arc::new(json(&mut screen)));
    std::thread::Builder::new()
        .name("screen".into())
        .spawn(move || {
            let (mut last, mut changed) = (Instant::now(), false);
            while !stop.load(Ordering::Relaxed) {
                if let Some(h) = &heartbeat {
                    h.store(now_ms(), Ordering::Relaxed);
                }
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                    let source = names.iter().find(|(n, _)| n == m.topic()).map(|(_, s)| *s);
                    if let (Some(source), Some(value)) = (source, m.payload()) {
                        if let Err(e) = screen.apply(source, m.key(), value, now_ms()) {
                            tracing::warn!("screen: {e}");
                        }
                        changed = true;
                    }
                }
                let due =
                    last.elapsed() >= every && changed || last.elapsed() >= Duration::from_secs(1);
                if due {
                    tx.send_replace(Arc::new(json(&mut screen)));
                    (last, changed) = (Instant::now(), false);
                }
            }
        })
        .context("starting the screen's reader")?;
    Ok(rx)
}

fn json(screen: &mut Screen) -> String {
    serde_json::to_string(&screen.view(now_ms())).expect("the view serializes")
}
