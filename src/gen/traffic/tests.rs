use std::collections::{HashMap, HashSet};

use super::bad::BAD_REASONS;
use super::*;
use crate::core::fx::{default_rates, FxTable};
use crate::decode::decode;
use crate::model::{DeliveryStatus, Device, Event, PaymentKind};

fn fx() -> FxTable {
    FxTable::new(&default_rates())
}

/// A slow order rate, so a couple hundred thousand records span tens of
/// minutes of event time and every follow-up (refund, shipped, delivered) shows up.
fn slow(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        orders_per_sec: 20.0,
        ..TrafficConfig::default()
    }
}

fn take(cfg: TrafficConfig, n: usize) -> Vec<GeneratedRecord> {
    Traffic::new(cfg).take(n).collect()
}

#[test]
fn same_seed_same_records_other_seed_other_records() {
    for cfg in [TrafficConfig::default(), slow(0)] {
        let a = take(
            TrafficConfig {
                seed: 7,
                ..cfg.clone()
            },
            20_000,
        );
        let b = take(
            TrafficConfig {
                seed: 7,
                ..cfg.clone()
            },
            20_000,
        );
        let c = take(
            TrafficConfig {
                seed: 8,
                ..cfg.clone()
            },
            20_000,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let differing = a.iter().zip(&c).filter(|(x, y)| x.value != y.value).count();
        assert!(differing > 19_000, "only {differing} records differ");
    }
}

#[test]
fn config_is_kept_and_defaults_match_the_brief() {
    let cfg = TrafficConfig::default();
    assert_eq!(cfg.start_ms, 1_794_326_400_000);
    assert_eq!(cfg.disorder_ms, 2_000);
    let t = Traffic::new(slow(3));
    assert_eq!(t.config(), &slow(3));
}

/// Good and duplicate records decode (keyed by their order id, with `ts_ms`
/// within the disorder bound of `emit_ms`); bad records fail for exactly
/// their reason; `emit_ms` never goes back.
#[test]
fn records_decode_as_labelled_in_emission_order_with_bounded_disorder() {
    let fx = fx();
    for cfg in [TrafficConfig::default(), slow(11)] {
        let disorder = cfg.disorder_ms;
        let mut reasons = HashSet::new();
        let mut last_emit = i64::MIN;
        let mut max_ts = i64::MIN;
        let mut max_back = 0;
        for r in Traffic::new(cfg).take(150_000) {
            assert!(r.emit_ms >= last_emit, "emit_ms went back");
            last_emit = r.emit_ms;
            let decoded = decode(r.topic, &r.value, &fx);
            if let RecordKind::Bad(reason) = r.kind {
                assert_ne!(reason, DeadReason::Late);
                let err = decoded.expect_err("a bad record must be rejected");
                assert_eq!(
                    err.reason,
                    reason,
                    "{err}: {}",
                    String::from_utf8_lossy(&r.value[..r.value.len().min(300)])
                );
                assert!(r.key.is_some());
                reasons.insert(reason);
                continue;
            }
            let e =
                decoded.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.value)));
            let (topic, order_id) = match &e {
                Event::Order(o) => (InputTopic::Orders, &o.order_id),
                Event::Payment(p) => (InputTopic::Payments, &p.order_id),
                Event::Delivery(d) => (InputTopic::Deliveries, &d.order_id),
            };
            assert_eq!(topic, r.topic);
            assert_eq!(r.key.as_deref(), Some(&**order_id));
            let ts = e.ts_ms();
            assert!(
                (r.emit_ms - disorder..=r.emit_ms).contains(&ts),
                "ts {ts} vs emit {}",
                r.emit_ms
            );
            if max_ts != i64::MIN {
                max_back = max_back.max(max_ts - ts);
            }
            max_ts = max_ts.max(ts);
        }
        assert_eq!(reasons.len(), BAD_REASONS.len(), "{reasons:?}");
        // Disordered, but never by more than the bound.
        assert!(max_back > 0 && max_back <= disorder, "{max_back}");
    }
}

#[test]
fn traffic_looks_like_singles_day() {
    let fx = fx();
    let n = 200_000;
    let recs = take(slow(42), n);
    let last_emit = recs.last().unwrap().emit_ms;

    let (mut dups, mut bad) = (0usize, 0usize);
    let mut good_values: HashSet<(InputTopic, &[u8])> = HashSet::new();
    let mut orders_seen: HashSet<String> = HashSet::new();
    let (mut orders, mut mobile, mut pc, mut live, mut cn) = (0usize, 0, 0, 0, 0);
    let mut brand_counts = vec![0usize; 2_000];
    let mut order_fen = Vec::new();
    let mut paid_fen: HashMap<String, i64> = HashMap::new();
    let (mut paid, mut orphans, mut early) = (0usize, 0usize, 0usize);
    let mut early_candidates: Vec<String> = Vec::new();
    let (mut refunds, mut shipped, mut delivered) = (0usize, 0usize, 0usize);

    for r in &recs {
        match r.kind {
            RecordKind::Bad(_) => {
                bad += 1;
                continue;
            }
            RecordKind::Duplicate => {
                dups += 1;
                assert!(
                    good_values.contains(&(r.topic, r.value.as_slice())),
                    "a duplicate must repeat an earlier good record"
                );
                continue;
            }
            RecordKind::Good => {
                assert!(good_values.insert((r.topic, r.value.as_slice())));
            }
        }
        match decode(r.topic, &r.value, &fx).unwrap() {
            Event::Order(o) => {
                orders += 1;
                mobile += (o.device == Device::Mobile) as usize;
                pc += (o.device == Device::Pc) as usize;
                live += o.channel_id.is_some() as usize;
                cn += (o.country == "CN") as usize;
                let b: usize = o.brand_id.strip_prefix("brand-").unwrap().parse().unwrap();
                brand_counts[b - 1] += 1;
                order_fen.push(fx.to_fen(&o.currency, o.amount_minor).unwrap());
                assert!(
                    orders_seen.insert(o.order_id.into_owned()),
                    "order id reused"
                );
            }
            Event::Payment(p) if p.kind == PaymentKind::Paid => {
                paid += 1;
                assert!(p.payment_id.starts_with("p-"));
                paid_fen.insert(p.order_id.to_string(), p.amount_fen);
                if !orders_seen.contains(&*p.order_id) && r.emit_ms + MAX_EARLY_MS < last_emit {
                    early_candidates.push(p.order_id.into_owned());
                }
            }
            Event::Payment(p) => {
                refunds += 1;
                assert!(p.payment_id.starts_with("r-"));
                assert!(
                    orders_seen.contains(&*p.order_id),
                    "refund before its order"
                );
                assert!(p.amount_fen <= paid_fen[&*p.order_id], "refund above paid");
            }
            Event::Delivery(d) => {
                assert!(d.delivery_id.starts_with("d-"));
                assert!(
                    orders_seen.contains(&*d.order_id),
                    "delivery before its order"
                );
                match d.status {
                    DeliveryStatus::Shipped => shipped += 1,
                    DeliveryStatus::Delivered => delivered += 1,
                }
            }
        }
    }
    for order_id in &early_candidates {
        if orders_seen.contains(order_id) {
            early += 1;
        } else {
            orphans += 1;
        }
    }
    let share = |x: usize, of: usize| x as f64 / of as f64;
    let within = |x: f64, lo: f64, hi: f64, what: &str| {
        assert!((lo..=hi).contains(&x), "{what} = {x}, expected {lo}..={hi}")
    };
    within(share(dups, n), 0.007, 0.013, "duplicate share");
    within(share(bad, n), 0.0005, 0.002, "bad share");
    within(share(mobile, orders), 0.90, 0.96, "mobile share");
    within(share(pc, orders), 0.03, 0.07, "pc share");
    within(share(live, orders), 0.32, 0.38, "livestream share");
    within(share(cn, orders), 0.77, 0.83, "CN share");
    within(share(early, paid), 0.01, 0.03, "early payment share");
    within(share(orphans, paid), 0.0001, 0.0015, "orphan share");
    assert!(refunds > 100 && shipped > 1_000 && delivered > 100);
    within(share(refunds, paid), 0.005, 0.04, "refund share");

    // Heavy tails: brand popularity and order value.
    let top = *brand_counts.iter().max().unwrap();
    assert_eq!(brand_counts[0], top, "brand-1 is the most popular");
    let mut sorted = brand_counts.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2].max(1);
    assert!(top > 50 * median, "top brand {top}, median {median}");
    order_fen.sort_unstable();
    let median_fen = order_fen[order_fen.len() / 2];
    within(median_fen as f64, 14_000.0, 28_000.0, "median order (fen)");
    let p999 = order_fen[order_fen.len() * 999 / 1000];
    assert!(
        p999 > 20 * median_fen,
        "p99.9 {p999} vs median {median_fen}"
    );
}

#[test]
fn countries_cover_the_world_with_their_currencies() {
    let unique: HashSet<&str> = COUNTRIES.iter().copied().collect();
    assert_eq!(unique.len(), COUNTRIES.len());
    assert!(unique.len() >= 190);
    assert!(COUNTRIES
        .iter()
        .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())));

    let fx = fx();
    let mut seen: HashMap<String, String> = HashMap::new();
    for r in Traffic::new(TrafficConfig::default()).take(300_000) {
        if r.kind != RecordKind::Good || r.topic != InputTopic::Orders {
            continue;
        }
        if let Event::Order(o) = decode(r.topic, &r.value, &fx).unwrap() {
            seen.entry(o.country.into_owned())
                .or_insert_with(|| o.currency.into_owned());
        }
    }
    assert!(seen.len() >= 190, "only {} countries", seen.len());
    for (country, currency) in [
        ("CN", "CNY"),
        ("US", "USD"),
        ("DE", "EUR"),
        ("FR", "EUR"),
        ("HK", "HKD"),
        ("JP", "JPY"),
        ("KR", "KRW"),
        ("GB", "GBP"),
        ("AU", "AUD"),
        ("BR", "USD"),
    ] {
        assert_eq!(seen[country], currency, "{country}");
    }
}

#[test]
fn order_rate_follows_the_surge() {
    let cfg = TrafficConfig {
        orders_per_sec: 1_000.0,
        surge: 5.0,
        surge_decay_ms: 10_000,
        duplicate_share: 0.0,
        bad_share: 0.0,
        ..TrafficConfig::default()
    };
    let start = cfg.start_ms;
    let (mut first, mut later) = (0usize, 0usize);
    for r in Traffic::new(cfg) {
        if r.emit_ms >= start + 61_000 {
            break;
        }
        if r.topic == InputTopic::Orders {
            match r.emit_ms - start {
                0..=999 => first += 1,
                60_000..=60_999 => later += 1,
                _ => {}
            }
        }
    }
    // ~5000/s at midnight (slightly less over the first second), ~1000/s a minute later.
    assert!((4_500..=5_000).contains(&first), "first second: {first}");
    assert!((960..=1_060).contains(&later), "a minute later: {later}");
}

#[test]
fn generation_rate() {
    // Prints the rate; never asserts on timing.
    let n = if cfg!(debug_assertions) {
        50_000
    } else {
        5_000_000
    };
    let started = std::time::Instant::now();
    let bytes: usize = Traffic::new(TrafficConfig::default())
        .take(n)
        .map(|r| r.value.len())
        .sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "traffic: {n} records, {bytes} bytes in {secs:.3} s: {:.0} records/s, {:.1} MB/s",
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    assert!(bytes > 0);
}
