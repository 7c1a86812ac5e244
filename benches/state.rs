//! Memory per open order, and the engine's rate as the state grows.
//!
//! For each size (default 1 M, 10 M and 50 M open orders; `SIZES=a,b,…`), a
//! fresh process (this binary again) feeds generated traffic through the
//! production path (`LocalJob`: stage one, commit, repartition, stage two)
//! until that many orders are held, sized up front as `state.expected_orders`
//! sizes it, then reports:
//! - the bytes the order stores and de-duplication sets hold
//!   (`StateSize::order_bytes`: their slabs and tables as allocated), per open
//!   order, with the payment and delivery ids held (the process's resident
//!   memory would count the generator's own queues too);
//! - the engine's rate over the whole run, and over its last tenth (the state
//!   at its largest), with the generation of the records not timed;
//! - the longest time one chunk of 10,000 records took: an index table that
//!   grows puts every entry in anew at once, which stalls the loop that
//!   long (a sweep walks the entries a step per tick instead);
//! - the process's memory in transparent huge pages, most of it the state's
//!   tables (`gmv::alloc::Alloc`).
//!
//! `cargo bench --bench state`; `RESERVE=0` leaves the state unsized, as a job
//! without `state.expected_orders` runs; `CHURN_MB=3000` has the allocator
//! hold 3,000 MB freed before the state grows, as after a catch-up.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gmv::core::{Ahead, EngineConfig, LocalJob};
use gmv::gen::traffic::{Traffic, TrafficConfig};
use gmv::model::Source;

const PARTITIONS: i32 = 4;
const CHUNK: usize = 10_000;

fn main() {
    gmv::alloc::keep_freed_memory();
    if let Ok(n) = std::env::var("GMV_STATE_BENCH_CHILD") {
        child(n.parse().expect("a number of orders"));
        return;
    }
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "1000000,10000000,50000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIZES: numbers separated by commas")
        })
        .collect();
    println!("| open orders | payment and delivery ids | bytes per open order | events/s, whole run | events/s, last tenth | slowest 10,000 records, ms | huge pages, MB |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .env("GMV_STATE_BENCH_CHILD", n.to_string())
            .output()
            .expect("run the bench's child");
        assert!(
            out.status.success(),
            "child for {n} orders failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn child(orders: usize) {
    // 50,000 orders a second of event time: the largest size spans 1,000 s,
    // inside `order_ttl` and `dedup_ttl`, so a sweep (every 15 min of event
    // time) walks every entry but removes none, and far more than the
    // payments' delays, so most orders held have their payment.
    let traffic = TrafficConfig {
        seed: 11,
        orders_per_sec: 50_000.0,
        surge: 1.0,
        ..TrafficConfig::default()
    };
    let mut gen = Traffic::new(traffic);
    let mut chunk = Vec::with_capacity(CHUNK);
    chunk.extend(gen.by_ref().take(CHUNK));
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    if let Some(mb) = std::env::var("CHURN_MB").ok().and_then(|s| s.parse().ok()) {
        churn(mb);
    }
    let mut job = LocalJob::new(EngineConfig::default(), &partitions, 1, chunk[0].emit_ms);
    // 2% over: the orders fall unevenly on partitions, and an index table
    // that fills its room doubles it.
    let per_task = (orders + orders / 50).div_ceil(PARTITIONS as usize);
    if std::env::var("RESERVE").as_deref() != Ok("0") {
        assert!(
            job.engine_mut().reserve_orders(per_task),
            "memory for {orders} orders"
        );
        // The reserved room is faulted in on threads of their own, on this
        // pinned core too: let them finish (at 50 M, 1.2 s was too short: the
        // first chunk took 2.5-3.1 s beside them).
        std::thread::sleep(Duration::from_millis(200 + orders as u64 / 10_000));
    }
    let mut out = Vec::with_capacity(1 << 16);
    let mut offsets = [0i64; 3];
    let (mut events, mut busy) = (0u64, Duration::ZERO);
    let (mut tail_events, mut tail_busy) = (0u64, Duration::ZERO);
    let mut slowest = Duration::ZERO;
    loop {
        let held = job.engine().state_size().orders;
        if held >= orders {
            break;
        }
        let tail = held >= orders - orders / 10;
        let t = Instant::now();
        for (i, r) in chunk.iter().enumerate() {
            // As the loop does (`io::lanes`): the key and value of the record
            // BYTES_AHEAD on asked for, then hints for the records PREFETCH_AHEAD
            // and ENTRY_AHEAD on (here of any partition and topic, so one each).
            if let Some(r) = chunk.get(i + gmv::io::lanes::BYTES_AHEAD) {
                let key = r.key.as_deref().map(str::as_bytes);
                gmv::io::lanes::prefetch_record(key, Some(&r.value));
            }
            if let Some(r) = chunk.get(i + gmv::io::lanes::PREFETCH_AHEAD) {
                let key = r.key.as_deref().map(str::as_bytes);
                job.engine()
                    .prefetch(partition_of(key), r.topic, Ahead::line(key));
            }
            if let Some(r) = chunk.get(i + gmv::io::lanes::ENTRY_AHEAD) {
                let key = r.key.as_deref().map(str::as_bytes);
                let ahead = Ahead::entry(key, &r.value);
                job.engine().prefetch(partition_of(key), r.topic, ahead);
            }
            let key = r.key.as_deref().map(str::as_bytes);
            let partition = partition_of(key);
            let o = &mut offsets[r.topic.index()];
            *o += 1;
            job.engine_mut().on_record(
                Source {
                    topic: r.topic,
                    partition,
                    offset: *o,
                },
                key,
                Some(&r.value),
                &mut out,
            );
        }
        job.on_tick(chunk[CHUNK - 1].emit_ms, &mut out);
        black_box(&out);
        out.clear();
        let spent = t.elapsed();
        busy += spent;
        slowest = slowest.max(spent);
        events += CHUNK as u64;
        if tail {
            tail_busy += spent;
            tail_events += CHUNK as u64;
        }
        chunk.clear();
        chunk.extend(gen.by_ref().take(CHUNK));
    }
    let size = job.engine().state_size();
    let per_order = size.order_bytes as f64 / size.orders as f64;
    println!(
        "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} |",
        size.orders,
        size.dedup_ids,
        per_order,
        events as f64 / busy.as_secs_f64(),
        tail_events as f64 / tail_busy.as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        huge_pages_mb().map_or("–".into(), |mb| mb.to_string()),
    );
}

/// Allocates and frees `mb` MB as a catch-up's fetches do (a 1 MB buffer and
/// 4,096 messages of 256 bytes a MB), each block written, so that the
/// allocator holds that much memory, faulted in, when the state grows.
fn churn(mb: usize) {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mb * 4097);
    for _ in 0..mb {
        held.push(vec![1; 1 << 20]);
        held.extend((0..4096).map(|_| vec![1; 256]));
    }
    black_box(&held);
}

/// The process's memory in transparent huge pages (`AnonHugePages`), in MB.
fn huge_pages_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix("AnonHugePages:"))?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024)
}

fn partition_of(key: Option<&[u8]>) -> i32 {
    key.map_or(0, |k| k.iter().map(|b| *b as i32).sum::<i32>()) % PARTITIONS
}
