//! Core throughput without a broker: raw JSON bytes → outputs through the
//! engine, against two baselines over the same bytes in the same run: the
//! serde_json decoder the job used before (`gmv::decode::baseline`, decoding
//! into the same typed events), and the job's own decoder alone. All three
//! read the records in the order the loop's lanes would ([`lane_order`]).
//! Reports events/s on one core and the ratios.
//!
//! `cargo bench --bench core` (RECORDS=n to change the data set size;
//! ENGINE_ONLY=1 skips the baselines, for `perf record` on the engine alone;
//! CHANGELOG=1 has the engine make its changelog records too, as `gmv run`
//! does, though the bar's engine does not count them, and prints their
//! bytes per event read; COMMIT_RECORDS=n
//! commits every n records instead of every 100,000).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use gmv::core::fx::{default_rates, FxTable};
use gmv::core::{Ahead, EngineConfig, LocalJob};
use gmv::gen::traffic::{GeneratedRecord, Traffic, TrafficConfig};
use gmv::model::Source;

fn main() {
    gmv::alloc::keep_freed_memory();
    let n: usize = std::env::var("RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let traffic = TrafficConfig {
        seed: 7,
        orders_per_sec: 5_000.0,
        ..TrafficConfig::default()
    };
    let fx = FxTable::new(&default_rates());
    let generated: Vec<_> = Traffic::new(traffic).take(n).collect();
    // The wall clock of the loop's ticks: the records' emission times in the
    // order they were produced, so that it moves on as records are read.
    let clock: Vec<i64> = generated.iter().map(|r| r.emit_ms).collect();
    // Each record's partition: known from the lane in the loop, not computed
    // per record.
    let (records, partition_at) = lane_order(generated, &fx);
    // Where each lane's last record is: until then its partition is not idle.
    let mut lane_ends = std::collections::BTreeMap::new();
    for (i, (r, &p)) in records.iter().zip(&partition_at).enumerate() {
        lane_ends.insert((r.topic, p), i);
    }
    let bytes: usize = records.iter().map(|r| r.value.len()).sum();
    println!(
        "data set: {n} records, {:.1} MB (seed 7, generator defaults at 5,000 orders/s)",
        bytes as f64 / 1e6
    );
    let engine_only = std::env::var("ENGINE_ONLY").is_ok_and(|v| v == "1");
    let changelog = std::env::var("CHANGELOG").is_ok_and(|v| v == "1");
    // A tick is a commit (the partial sums handed to the aggregation stage)
    // and maybe an emission. The loop commits every `commit_interval` (100 ms
    // by default) and so ticks the engine then, not per poll batch: at the
    // 0.9 – 1.9 M events/s measured end to end and here, 90,000 – 190,000
    // records a commit. Counted in records, so that every run does the same
    // work. (Until the eighth session: 10,000, docs/performance.md.)
    let commit_records: usize = std::env::var("COMMIT_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);

    let bad = records
        .iter()
        .filter(|r| matches!(r.kind, gmv::gen::traffic::RecordKind::Bad(_)))
        .count() as u64;
    let mut serde_best = f64::MAX;
    let mut parse_best = f64::MAX;
    let mut engine_best = f64::MAX;
    let mut outputs = 0;
    let mut last_changelog_bytes = [0u64; 2];
    for round in 0..5 {
        if !engine_only {
            let t = Instant::now();
            let mut ok = 0usize;
            for r in &records {
                ok += gmv::decode::baseline::decode(r.topic, &r.value, &fx).is_ok() as usize;
            }
            black_box(ok);
            serde_best = serde_best.min(t.elapsed().as_secs_f64());

            let t = Instant::now();
            let mut ok = 0usize;
            for r in &records {
                ok += gmv::decode::decode(r.topic, &r.value, &fx).is_ok() as usize;
            }
            black_box(ok);
            parse_best = parse_best.min(t.elapsed().as_secs_f64());
        }

        let t = Instant::now();
        // The production path: stage one, commit protocol, repartition (in
        // memory), stage two.
        let partitions: Vec<i32> = (0..12).collect();
        let mut engine = LocalJob::new(EngineConfig::default(), &partitions, 1, records[0].emit_ms);
        if changelog {
            engine.track_changes();
        }
        let mut out = Vec::with_capacity(1 << 16);
        let mut offsets = [0i64; 3];
        for (i, r) in records.iter().enumerate() {
            // As the loop does (`io::lanes`): the key and value of the record
            // BYTES_AHEAD on asked for, then hints for the records PREFETCH_AHEAD
            // and ENTRY_AHEAD on (here across the end of a lane's run too).
            if let Some(r) = records.get(i + gmv::io::lanes::BYTES_AHEAD) {
                let key = r.key.as_deref().map(str::as_bytes);
                gmv::io::lanes::prefetch_record(key, Some(&r.value));
            }
            if let Some(r) = records.get(i + gmv::io::lanes::PREFETCH_AHEAD) {
                let ahead = Ahead::line(r.key.as_deref().map(str::as_bytes));
                engine.engine().prefetch(
                    partition_at[i + gmv::io::lanes::PREFETCH_AHEAD],
                    r.topic,
                    ahead,
                );
            }
            if let Some(r) = records.get(i + gmv::io::lanes::ENTRY_AHEAD) {
                let ahead = Ahead::entry(r.key.as_deref().map(str::as_bytes), &r.value);
                engine.engine().prefetch(
                    partition_at[i + gmv::io::lanes::ENTRY_AHEAD],
                    r.topic,
                    ahead,
                );
            }
            let partition = partition_at[i];
            let o = &mut offsets[r.topic.index()];
            *o += 1;
            engine.engine_mut().on_record(
                Source {
                    topic: r.topic,
                    partition,
                    offset: *o,
                },
                r.key.as_deref().map(str::as_bytes),
                Some(&r.value),
                &mut out,
            );
            if i % commit_records == 0 {
                // As the loop does: a partition with records still to read
                // is not idle, however long since it was last read.
                for (&part, &last) in &lane_ends {
                    if last > i {
                        engine.engine_mut().touch(part, clock[i]);
                    }
                }
                engine.on_tick(clock[i], &mut out);
                outputs += out.len();
                out.clear();
            }
        }
        engine.on_tick(i64::MAX / 2, &mut out);
        outputs += out.len();
        black_box(&out);
        engine_best = engine_best.min(t.elapsed().as_secs_f64());
        last_changelog_bytes = engine.changelog_bytes();
        // The engine measured processed the traffic, not rejected it: exactly
        // the generator's bad records are dead letters (checked outside the
        // time measured: it reads every record once more).
        let dead: u64 = engine.engine().stats().dead_letters.iter().sum();
        assert_eq!(
            dead, bad,
            "dead letters against the generator's bad records"
        );
        if engine_only {
            println!("round {round}: engine {engine_best:.3} s");
        } else {
            println!(
                "round {round}: serde_json {:.3} s, decode {:.3} s, engine {:.3} s",
                serde_best, parse_best, engine_best
            );
        }
    }
    let serde_rate = n as f64 / serde_best;
    let parse_rate = n as f64 / parse_best;
    let engine_rate = n as f64 / engine_best;
    println!("best of 5 rounds each:");
    println!(
        "engine (decode + process{}):         {:>12.0} events/s",
        if changelog { ", changelog" } else { "" },
        engine_rate
    );
    if !engine_only {
        println!(
            "baseline (serde_json decode only): {:>12.0} events/s",
            serde_rate
        );
        println!(
            "the job's decoder alone:           {:>12.0} events/s",
            parse_rate
        );
        println!(
            "ratio engine/serde_json baseline:  {:>12.2}",
            engine_rate / serde_rate
        );
        println!(
            "ratio decoder/serde_json baseline: {:>12.2}",
            parse_rate / serde_rate
        );
    }
    if changelog {
        // Of the last round, which committed as the others did.
        let [attribution, aggregation] = last_changelog_bytes;
        println!(
            "changelog, bytes an event read:    {:>12.1} attribution, {:.1} aggregation",
            attribution as f64 / n as f64,
            aggregation as f64 / n as f64
        );
    }
    println!("outputs produced (5 rounds): {outputs}");
}

/// The records in the order the loop's lanes read them (`io::lanes`): runs
/// of up to `LANE_BATCH` of one (topic, partition), the lane read least far
/// in event time next, every record fetched already (a catch-up). With each
/// record's partition. Until the eighteenth session the bench read them in
/// the generator's order, each record's lane at random; the loop never did
/// (docs/performance.md).
fn lane_order(generated: Vec<GeneratedRecord>, fx: &FxTable) -> (Vec<GeneratedRecord>, Vec<i32>) {
    // Each lane's partition, records, and the largest event time read from it.
    let mut lanes: Vec<(i32, VecDeque<GeneratedRecord>, i64)> = (0..3 * 12)
        .map(|l| (l % 12, VecDeque::new(), i64::MIN))
        .collect();
    for r in generated {
        let p = partition_of(&r);
        lanes[r.topic.index() * 12 + p as usize].1.push_back(r);
    }
    let (mut records, mut partitions) = (Vec::new(), Vec::new());
    while let Some((p, queue, read_to)) = lanes
        .iter_mut()
        .filter(|(_, queue, _)| !queue.is_empty())
        .min_by_key(|(_, _, read_to)| *read_to)
    {
        let take = queue.len().min(gmv::io::lanes::LANE_BATCH);
        for r in queue.drain(..take) {
            if let Ok(ev) = gmv::decode::decode(r.topic, &r.value, fx) {
                *read_to = (*read_to).max(ev.ts_ms());
            }
            records.push(r);
            partitions.push(*p);
        }
    }
    // Laid out anew in the order read, as librdkafka's fetch buffers hold a
    // partition's records side by side: left where the generator put them,
    // each record read was a miss for the baselines, which ask for nothing ahead.
    (records.to_vec(), partitions)
}

/// Spread evenly over 12 partitions, as Kafka's murmur2 partitioner spreads
/// keys (FNV-1a here: any good hash does). The sum of the key's length and
/// last byte used until the eighteenth session put two partitions' worth of
/// keys in ten and left two sparse; read in lanes, a sparse lane's batch
/// spans far more event time than the others' (docs/performance.md).
fn partition_of(r: &GeneratedRecord) -> i32 {
    let key = r.key.as_deref().unwrap_or_default().as_bytes();
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 12) as i32
}
