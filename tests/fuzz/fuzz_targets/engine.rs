//! The engine (both stages, through the commit protocol and an in-memory
//! repartition) fed arbitrary records and ticks: never a panic or an
//! overflow, and once everything is closed the overall GMV equals the sum of
//! the paid payments it accepted.
//!
//! The input is lines; the first byte of each says what it is:
//! `o`, `p`, `d`: a record of orders, payments or deliveries, keyed by its
//! `order_id` when it has one (else no key); `O`, `P`, `D`: the same with the
//! line's next 8 bytes as key; `t`: the wall clock moves by 1 s per byte of
//! the line; `c`: a commit. Anything else is skipped.
#![no_main]

use gmv::core::engine::TOTAL_KEY;
use gmv::core::output::Dim;
use gmv::core::{EngineConfig, LocalJob};
use gmv::model::{InputTopic, Source};
use libfuzzer_sys::fuzz_target;

/// The generator's sale start: the fixtures' times are near it.
const START_MS: i64 = 1_794_326_400_000;

fuzz_target!(|data: &[u8]| {
    let mut now = START_MS;
    let mut job = LocalJob::new(EngineConfig::default(), &[0, 1], 2, now);
    let mut out = Vec::new();
    let mut offsets = [0i64; 3];
    for (n, line) in data.split(|b| *b == b'\n').enumerate() {
        let Some((&op, rest)) = line.split_first() else { continue };
        let topic = match op.to_ascii_lowercase() {
            b'o' => InputTopic::Orders,
            b'p' => InputTopic::Payments,
            b'd' => InputTopic::Deliveries,
            b't' => {
                now += 1_000 * line.len() as i64;
                job.on_tick(now, &mut out);
                continue;
            }
            b'c' => {
                job.commit(&mut out);
                continue;
            }
            _ => continue,
        };
        let (key, value): (Option<Vec<u8>>, &[u8]) = if op.is_ascii_uppercase() {
            let k = rest.len().min(8);
            (Some(rest[..k].to_vec()), &rest[k..])
        } else {
            let id = serde_json::from_slice::<serde_json::Value>(rest)
                .ok()
                .and_then(|v| v["order_id"].as_str().map(|s| s.as_bytes().to_vec()));
            (id, rest)
        };
        let o = &mut offsets[topic.index()];
        *o += 1;
        let source = Source {
            topic,
            partition: (n % 2) as i32,
            offset: *o,
        };
        job.engine_mut()
            .on_record(source, key.as_deref(), Some(value), &mut out);
        out.clear();
    }
    // After the sale: every partition idle, everything closes.
    for _ in 0..3 {
        now += 1_000_000;
        job.on_tick(now, &mut out);
        out.clear();
    }
    job.commit(&mut out);
    let stats = job.engine().stats();
    if stats.late_partials == 0 {
        let gmv = job
            .engine()
            .totals(Dim::Total, TOTAL_KEY)
            .map_or(0, |t| t.gmv_fen);
        assert_eq!(gmv, stats.paid_fen, "the overall GMV against the accepted payments");
    }
});
